"""Print the quantization sweep's table from a results store (experiments/quant_sweep_cpu.sh writes it).

One row per engine x quant (x gguf_type): weight MB on the device, peak RSS MB, batch-1 output tok/s and decode
tok/s (1000 / TPOT) with their 95% intervals, offline output tok/s with its interval, perplexity on the fixed
GSM8K text, MMLU and GSM8K accuracy with the delta to the same engine's quant=none cell, and the load average.
Skipped and failed cells are listed with their reasons.

    python experiments/quant_table.py QUALITY_STORE[,MORE_QUALITY_STORES] [SPEED_STORE]

The quality pass's short latency run gives weight bytes, perplexity and accuracy; the speed pass (run under the
benchmark lock) gives the timings and peak RSS. With one store, both come from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ci(row: dict, key: str, scale: float = 1.0, invert: bool = False) -> str:
    mean, low, high = (row.get(f"ci95.{key}.{p}") for p in ("mean", "low", "high"))
    if mean is None:
        return "-"
    if low is None or high is None:  # one repeat: no interval
        return f"{1000 / mean:.1f} [n=1]" if invert else f"{mean * scale:.1f} [n=1]"
    if invert:  # tok/s from a time in ms: the interval flips
        return f"{1000 / mean:.1f} [{1000 / high:.1f}, {1000 / low:.1f}]"
    return f"{mean * scale:.1f} [{low * scale:.1f}, {high * scale:.1f}]"


def key_of(row: dict, result: dict) -> tuple[str, str]:
    quant = str(row.get("technique.quant"))
    gguf = (result.get("config", {}).get("engine", {}) or {}).get("gguf_type")
    group = row.get("technique.quant_group_size")
    label = quant + (f" g{group}" if group else "") + (f" {gguf}" if gguf else "")
    return row["engine"], label


def read(store: str, cells: dict, skipped: list, prefix: str) -> None:
    path = Path(store) / "results.jsonl"
    for row in (json.loads(line) for line in open(path)) if path.is_file() else ():
        result = json.loads(Path(row["result_path"]).read_text()) if Path(row["result_path"]).is_file() else {}
        if row["status"] != "ok":
            skipped.append((row["cell"], row["status"], (row.get("reason") or "")[:200]))
            continue
        cells.setdefault(key_of(row, result), {})[prefix + row["scenario"]] = (row, result)


def main(quality_store: str, speed_store: str | None = None) -> None:
    cells: dict[tuple[str, str], dict] = {}
    skipped: list = []
    for store in quality_store.split(","):
        read(store, cells, skipped, "quality-" if speed_store else "")
    if speed_store:
        read(speed_store, cells, skipped, "")
    head = (f"{'engine':8} {'quant':18} {'weight MB':>9} {'peak MB':>7} {'b1 out tok/s [95% CI]':>22} "
            f"{'b1 decode tok/s [CI]':>22} {'offline tok/s [CI]':>22} {'ppl':>6} {'MMLU (d)':>14} {'GSM8K (d)':>14} load")  # fmt: skip
    print(head)
    print("-" * len(head))
    for (engine, label), by in cells.items():
        lat_row, _ = by.get("latency", ({}, {}))
        off_row, _ = by.get("throughput", ({}, {}))
        lat = by.get("quality-latency", by.get("latency", ({}, {})))[1]
        quant = lat.get("quantization") or {}
        weight = quant.get("weight_bytes")
        ppl = (lat.get("perplexity") or {}).get("perplexity")
        acc = lat.get("accuracy") or {}
        tasks, delta = acc.get("tasks") or {}, acc.get("delta") or acc.get("accuracy_delta") or {}

        def score(task: str, metric: str) -> str:
            value = ((tasks.get(task) or {}).get("metrics") or {}).get(metric)
            if value is None:
                return "-"
            d = delta.get(f"{task}/{metric}")
            return f"{value['value']:.2f} ({d:+.2f})" if d is not None else f"{value['value']:.2f} (base)"

        loads = "/".join(f"{r.get('load_avg_1m'):.1f}" for r in (lat_row, off_row) if r.get("load_avg_1m") is not None)
        print(f"{engine:8} {label:18} {weight / 1e6 if weight else float('nan'):9.1f} "
              f"{(lat_row.get('peak_memory_bytes') or 0) / 1e6:7.0f} {ci(lat_row, 'output_throughput_tok_s'):>22} "
              f"{ci(lat_row, 'tpot_ms.mean', invert=True):>22} {ci(off_row, 'output_throughput_tok_s'):>22} "
              f"{ppl if ppl is None else round(ppl, 3)!s:>6} {score('mmlu', 'acc,none'):>14} "
              f"{score('gsm8k', 'exact_match,flexible-extract'):>14} {loads}")  # fmt: skip
    if skipped:
        print("\nskipped / failed cells:")
        for cell, status, reason in skipped:
            print(f"  {status:8} {cell}: {reason}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
