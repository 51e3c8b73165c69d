"""The comparison table of experiments/compare_cpu.sh: one line per cell (round, dtype, workload, engine) with
output tok/s, its 95% interval, the load average and threads, then own's ratio to each peer per round.

    .venv/bin/python experiments/compare_table.py reports/compare-cpu/store
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.record import flatten, read_rows  # noqa: E402

WORKLOADS = {"uniform": "offline", "shared_prefix": "shared_prefix", "fixed": "batch1"}


def cells(store: Path) -> list[dict]:
    rows = []
    for row in map(flatten, read_rows(store / "results.jsonl" if store.is_dir() else store)):
        found = re.search(r"round(\d+)", str(row.get("result_path", "")))
        result = json.loads(Path(row["result_path"]).read_text()) if Path(str(row.get("result_path"))).is_file() else {}
        rows.append({
            "round": int(found.group(1)) if found else 0, "dtype": (result.get("model") or {}).get("dtype", "?"),
            "workload": WORKLOADS.get(row.get("workload"), row.get("workload")), "engine": row.get("engine"),
            "status": row.get("status"), "reason": row.get("reason"), "tps": row.get("output_throughput_tok_s"),
            "low": row.get("ci95.output_throughput_tok_s.low"), "high": row.get("ci95.output_throughput_tok_s.high"),
            "n": row.get("ci95.output_throughput_tok_s.n"), "load": row.get("load_avg_1m"),
            "threads": (result.get("threads") or {}).get("torch_threads"), "finished": str(row.get("finished_at", ""))[11:19],
        })  # fmt: skip
    return rows


def main() -> None:
    rows = cells(Path(sys.argv[1]))
    print(f"{'round':>5} {'dtype':>8} {'workload':>13} {'engine':>6} {'out tok/s':>10} {'95% interval':>19} "
          f"{'n':>2} {'load1m':>6} {'thr':>3} {'finished':>8}")  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["dtype"], r["workload"], r["round"], r["finished"])):
        if r["status"] != "ok" or r["tps"] is None:
            print(f"{r['round']:>5} {r['dtype']:>8} {r['workload']:>13} {r['engine']:>6}  {r['status']}: {r['reason']}")
            continue
        interval = f"[{r['low']:.1f}, {r['high']:.1f}]" if r["low"] is not None else "-"
        print(f"{r['round']:>5} {r['dtype']:>8} {r['workload']:>13} {r['engine']:>6} {r['tps']:10.1f} {interval:>19} "
              f"{r['n'] or '-':>2} {r['load'] or 0:6.2f} {r['threads'] or '-':>3} {r['finished']:>8}")  # fmt: skip
    print("\nown / peer, output tok/s, per round (same round = interleaved neighbours):")
    by_key = {(r["round"], r["dtype"], r["workload"], r["engine"]): r["tps"] for r in rows if r["status"] == "ok"}
    for round_, dtype, workload in sorted({k[:3] for k in by_key}, key=lambda k: (k[1], k[2], k[0])):
        own = by_key.get((round_, dtype, workload, "own"))
        ratios = [f"own/{peer} {own / by_key[(round_, dtype, workload, peer)]:.2f}x" for peer in ("vllm", "hf")
                  if own and by_key.get((round_, dtype, workload, peer))]  # fmt: skip
        print(f"  round {round_} {dtype:>8} {workload:>13}: {', '.join(ratios) or 'incomplete'}")


if __name__ == "__main__":
    main()
