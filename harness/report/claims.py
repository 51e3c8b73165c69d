"""The claims table: each claim an experiment declares (conf/experiment/<name>.yaml) checked against the
results rows of that experiment, with the measured value, its interval, the device and a verdict.

Verdict of one measurement against the claimed range [low, high]:
- holds: the value is in the range;
- does not hold: the value and its whole 95% interval are outside it;
- partly: the value is outside but the interval reaches into it (this machine cannot tell).
Over several measurements (several lengths or pairs): holds if all hold, does not hold if all do not,
partly otherwise. No measurement: "not measurable here" with the reason (a skipped or failed cell's, or
the claim's `not_here`), or "not measured yet" when the experiment has no rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from harness.experiment import Better, ClaimKind, ClaimSpec, ExperimentConfig
from harness.report.ratio import Figure, figure, ratio
from harness.report.rows import matches, text

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "conf" / "experiment"
UNTESTED = EXPERIMENTS_DIR.parent / "claims" / "untested.yaml"  # seed claims no experiment tests, with why
HOLDS, PARTLY, FAILS, NOT_HERE, NOT_YET = "holds", "partly", "does not hold", "not measurable here", "not measured yet"


@dataclass(slots=True)
class Measurement:
    figure: Figure
    cells: list[str]  # treatment first, then its baseline
    label: str  # what was compared, for the speedup plot
    verdict: str = ""


@dataclass(slots=True)
class ClaimCheck:
    experiment: str
    spec: ClaimSpec
    measurements: list[Measurement] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    verdict: str = NOT_YET
    reason: str = ""


def declared_experiments(folder: Path = EXPERIMENTS_DIR) -> dict[str, ExperimentConfig]:
    """Every experiment's declaration, by name, validated against the typed schema."""
    found = {}
    for path in sorted(folder.glob("*.yaml")):
        node = OmegaConf.load(path).get("experiment")
        if node is None:
            continue
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), node)
        found[str(merged.name)] = OmegaConf.to_object(merged)
    return found


def claimed_text(spec: ClaimSpec) -> str:
    unit = "x" if spec.kind is ClaimKind.ratio else ""
    if spec.kind is ClaimKind.gate:
        return "quality gate passes"
    if spec.low is not None and spec.high is not None:
        return f"{spec.low:g}-{spec.high:g}{unit}"
    if spec.low is not None:
        return f">= {spec.low:g}{unit}"
    return f"<= {spec.high:g}{unit}" if spec.high is not None else "(no number)"


def verdict_of(value: Figure, spec: ClaimSpec) -> str:
    low = -float("inf") if spec.low is None else spec.low
    high = float("inf") if spec.high is None else spec.high
    if low <= value.value <= high:
        return HOLDS
    lo = value.value if value.low is None else value.low
    hi = value.value if value.high is None else value.high
    return PARTLY if hi >= low and lo <= high else FAILS


def combine(verdicts: list[str]) -> str:
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return FAILS if all(v == FAILS for v in verdicts) else PARTLY


def _pairs(spec: ClaimSpec, ok: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """(treatment row, its baseline row): equal on every pair_on column the selectors leave free."""
    chosen = set(spec.treatment) | set(spec.baseline)
    keys = [c for c in spec.pair_on if c not in chosen]
    found = []
    for row in (r for r in ok if matches(r, spec.treatment)):
        partners = [b for b in ok if matches(b, spec.baseline) and all(text(b.get(c)) == text(row.get(c)) for c in keys)]
        same_sweep = [b for b in partners if b.get("sweep_id") == row.get("sweep_id")]
        if partners:  # its own round's baseline (sweeps run A B A B as rounds), else the newest
            found.append((row, (same_sweep or partners)[-1]))
    return found


def _label(row: dict[str, Any], spec: ClaimSpec) -> str:
    """Treatment vs baseline in a few words, plus the lengths when the experiment varies them."""
    what = ",".join(f"{text(v)}" for v in spec.treatment.values())
    base = ",".join(f"{text(v)}" for v in spec.baseline.values())
    lengths = f" ({row.get('workload.input_len')} in / {row.get('workload.output_len')} out)"
    metric = METRIC_NAMES.get(spec.metric, spec.metric.rsplit(".", 1)[-1])
    return (f"{spec.id} {metric}: {what} vs {base}" if base else f"{spec.id} {metric}: {what}") + lengths


METRIC_NAMES = {"output_throughput_tok_s": "tok/s", "tpot_ms.mean": "TPOT", "ttft_ms.mean": "TTFT",
                "e2el_ms.mean": "E2E"}  # fmt: skip


def _measure(spec: ClaimSpec, ok: list[dict[str, Any]]) -> list[Measurement]:
    if spec.kind is ClaimKind.ratio:
        found = []
        for row, base in _pairs(spec, ok):
            top, bottom = figure(row, spec.metric), figure(base, spec.metric)
            if top is None or bottom is None:
                continue
            value = ratio(top, bottom) if spec.better is Better.higher else ratio(bottom, top)
            if value is not None:
                found.append(Measurement(value, [str(row.get("cell")), str(base.get("cell"))], _label(row, spec)))
        return found
    rows = [r for r in ok if matches(r, spec.treatment)]
    if spec.kind is ClaimKind.value:
        return [Measurement(f, [str(r.get("cell"))], _label(r, spec)) for r in rows if (f := figure(r, spec.metric))]
    if spec.kind is ClaimKind.gate:
        gated = [r for r in rows if r.get("accuracy.gate") in ("pass", "fail")]
        return [Measurement(Figure(1.0 if r["accuracy.gate"] == "pass" else 0.0), [str(r.get("cell"))], _label(r, spec))
                for r in gated]  # fmt: skip
    return _best(spec, rows)


def _best(spec: ClaimSpec, rows: list[dict[str, Any]]) -> list[Measurement]:
    """The `over` value whose cell has the best metric; its interval spans every value whose cell's
    interval overlaps the best one's (the values this machine cannot tell apart)."""
    scored = [(r, f) for r in rows if r.get(spec.over) is not None and (f := figure(r, spec.metric))]
    if not scored:
        return []
    sign = 1 if spec.better is Better.higher else -1
    best_row, best = max(scored, key=lambda rf: sign * rf[1].value)
    lo, hi = best.low if best.low is not None else best.value, best.high if best.high is not None else best.value
    ties = [float(r[spec.over]) for r, f in scored
            if (f.high if f.high is not None else f.value) >= lo and (f.low if f.low is not None else f.value) <= hi]  # fmt: skip
    value = float(best_row[spec.over])
    return [Measurement(Figure(value, min(ties), max(ties)), [str(r.get("cell")) for r, _ in scored], _label(best_row, spec))]


def check(experiment: str, spec: ClaimSpec, rows: list[dict[str, Any]]) -> ClaimCheck:
    """One claim against the rows of its experiment."""
    mine = [r for r in rows if r.get("experiment") == experiment]
    ok = [r for r in mine if r.get("status") == "ok"]
    result = ClaimCheck(experiment, spec)
    result.measurements = _measure(spec, ok)
    used = {c for m in result.measurements for c in m.cells}
    result.devices = sorted({str(r.get("hardware")) for r in ok if r.get("cell") in used and r.get("hardware")})
    if result.measurements:
        for m in result.measurements:
            m.verdict = HOLDS if spec.kind is ClaimKind.gate and m.figure.value == 1.0 else (
                FAILS if spec.kind is ClaimKind.gate else verdict_of(m.figure, spec))
        result.verdict = combine([m.verdict for m in result.measurements])
        return result
    stopped = [r for r in mine if r.get("status") in ("skipped", "failed") and matches(r, spec.treatment)]
    if stopped:
        first = str(stopped[0].get("reason") or "").strip().splitlines()
        result.verdict, result.reason = NOT_HERE, f"{stopped[0].get('status')}: {first[0] if first else '(no reason)'}"
    elif spec.not_here:
        result.verdict, result.reason = NOT_HERE, spec.not_here
    elif mine and spec.kind is ClaimKind.gate:
        result.verdict, result.reason = NOT_HERE, "no quality gate in these cells: run with eval=... and a baseline cell"
    elif mine:
        result.verdict, result.reason = NOT_HERE, f"no cells match {_selectors(spec)} with a value of {spec.metric}"
    else:
        result.reason = f"no results of experiment '{experiment}' given"
    return result


def _selectors(spec: ClaimSpec) -> str:
    return " vs ".join(", ".join(f"{k}={text(v)}" for k, v in s.items()) for s in (spec.treatment, spec.baseline) if s)


def untested(path: Path = UNTESTED) -> list[ClaimCheck]:
    """The seed claims no experiment tests, as "not measurable here" with the reason the file gives."""
    specs = [OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ClaimSpec(id="-", claim="-", kind=ClaimKind.value)), c))
             for c in OmegaConf.load(path).claims]  # fmt: skip
    return [ClaimCheck("no experiment", spec, verdict=NOT_HERE, reason=spec.not_here or "") for spec in specs]


def check_all(rows: list[dict[str, Any]], experiments: dict[str, ExperimentConfig], every: bool = False) -> list[ClaimCheck]:
    """The claims of every experiment found in the rows (of every declared experiment when `every`, and then
    the seed claims no experiment tests), in experiment-name order then declaration order."""
    present = {r.get("experiment") for r in rows}
    checks = [check(name, spec, rows) for name, exp in sorted(experiments.items())
              if every or name in present for spec in exp.claims]  # fmt: skip
    return checks + (untested() if every else [])
