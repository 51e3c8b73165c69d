"""The report's figures as SVG text, drawn the same way every time (fixed ids, no date, fixed order), so
rebuilding a report from the same results gives byte-identical files.

- pareto: output tok/s per device vs tok/s per user (1000 / mean TPOT), per engine, with each engine's
  Pareto front (no other cell of the engine is better on both axes), as InferenceX and vLLM's plot_pareto;
- speedups: each claim measurement's ratio with its 95% interval, over the claimed range (without claims:
  each cell's output tok/s over the first ok cell's);
- accuracy_memory_speed: memory (weights when recorded, else peak) vs output tok/s, coloured by accuracy;
- acceptance: speculation acceptance rate vs draft length k, one line per method.
Each returns None when the rows hold nothing to draw.
"""

from __future__ import annotations

import io
from typing import Any

from harness.report.claims import ClaimCheck
from harness.report.ratio import Figure, figure, ratio
from harness.report.rows import number, text

SVG_SETTINGS = {"svg.hashsalt": "infermatrix", "svg.fonttype": "none", "font.size": 9, "axes.grid": True,
                "grid.alpha": 0.3}  # fmt: skip
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _svg(fig: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_SETTINGS):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "infermatrix"})
    return buffer.getvalue()


def _figure(width: float, height: float) -> Any:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(SVG_SETTINGS):
        return Figure(figsize=(width, height), layout="constrained")


def _devices(row: dict[str, Any]) -> float:
    """Devices a cell ran on: GPUs when it names them (`hardware` "cuda: 8x ..."), else 1 (a CPU)."""
    label = str(row.get("hardware") or "")
    head = label.split(": ", 1)[-1].split("x ", 1)[0]
    return float(head) if label.startswith("cuda") and head.isdigit() else 1.0


def distinct_labels(cells: list[str]) -> list[str]:
    """Each cell name cut to what tells it apart from the others (parts every cell shares dropped)."""
    parts = [c.replace(",", "/").split("/") for c in cells]
    shared = set.intersection(*(set(p) for p in parts)) if len(parts) > 1 else set()
    return [",".join(x for x in p if x not in shared) for p in parts]


def _annotate(ax: Any, labels: dict[tuple[float, float], str]) -> None:
    """Name each point by what sets its cell apart, without letting the labels squeeze the axes."""
    ax.margins(x=0.1, y=0.1)
    points = sorted(labels)
    middle = (points[0][0] + points[-1][0]) / 2
    for point, text_ in zip(points, distinct_labels([labels[p] for p in points])):
        right = point[0] > middle  # labels of the right half point left, so none runs off the axes
        ax.annotate(text_, point, fontsize=7, xytext=(-4 if right else 4, 3), textcoords="offset points",
                    ha="right" if right else "left").set_in_layout(False)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on both), by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def pareto(rows: list[dict[str, Any]]) -> str | None:
    by_engine: dict[str, list[tuple[float, float]]] = {}
    labels: dict[tuple[float, float], str] = {}
    for row in rows:
        tpot, tput = number(row, "tpot_ms.mean"), number(row, "output_throughput_tok_s")
        if row.get("status") == "ok" and tpot and tput:
            point = (1000.0 / tpot, tput / _devices(row))
            by_engine.setdefault(str(row.get("engine")), []).append(point)
            labels.setdefault(point, str(row.get("cell")))
    if not by_engine:
        return None
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    for i, (engine, points) in enumerate(sorted(by_engine.items())):
        colour = COLOURS[i % len(COLOURS)]
        ax.scatter(*zip(*points), color=colour, s=18, alpha=0.6)
        front = pareto_front(points)
        ax.plot(*zip(*front), color=colour, marker="o", label=f"{engine} ({len(points)} cells)")
    _annotate(ax, labels)
    ax.set_xlabel("tok/s per user (1000 / mean TPOT ms)")
    ax.set_ylabel("output tok/s per device")
    ax.set_title("Throughput vs per-user speed (lines: Pareto front per engine)")
    ax.legend(loc="best")
    return _svg(fig)


Bar = tuple[str, Figure, str, tuple[float | None, float | None] | None]  # label, ratio, colour, claimed range


def claim_bars(checks: list[ClaimCheck]) -> list[Bar]:
    """Every measurement of a ratio claim, blue where the claim holds."""
    return [(m.label, m.figure, COLOURS[0] if m.verdict == "holds" else COLOURS[7], (c.spec.low, c.spec.high))
            for c in checks if c.spec.kind.value == "ratio" for m in c.measurements]  # fmt: skip


def sweep_bars(rows: list[dict[str, Any]]) -> list[Bar]:
    """Without claims: each ok cell's output tok/s over the first ok cell's (the printed table's baseline)."""
    ok = [(r, f) for r in rows if r.get("status") == "ok" and (f := figure(r, "output_throughput_tok_s"))]
    if len(ok) < 2:
        return []
    base_row, base = ok[0]
    name = str(base_row.get("cell")).rsplit("/", 1)[-1]
    return [(f"{str(r.get('cell')).rsplit('/', 1)[-1]} vs {name}", q, COLOURS[0], None)
            for r, f in ok[1:] if (q := ratio(f, base)) is not None]  # fmt: skip


def speedups(checks: list[ClaimCheck], rows: list[dict[str, Any]]) -> str | None:
    from matplotlib.ticker import FuncFormatter

    bars = claim_bars(checks) or sweep_bars(rows)
    if not bars:
        return None
    fig = _figure(8.5, 1.4 + 0.42 * len(bars))
    ax = fig.add_subplot()
    for y, (_, f, colour, claimed) in enumerate(bars):
        xerr = [[f.value - f.low], [f.high - f.value]] if f.low is not None and f.high is not None else None
        ax.barh(y, f.value, xerr=xerr, capsize=3, color=colour)
        if claimed and claimed != (None, None):  # the claimed range, as a band on this bar's row
            low, high = claimed
            ax.fill_betweenx([y - 0.45, y + 0.45], low if low is not None else 0.0,
                             high if high is not None else max(f.value, low or 0.0) * 1.5, color=COLOURS[1], alpha=0.25)  # fmt: skip
    ax.set_yticks(range(len(bars)), [label for label, *_ in bars])
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 2, not 2x10^0
    # minor labels at 2, 3 and 5 times a power of ten only: every minor tick labelled overlaps
    sparse = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "235" else "")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(sparse)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    if bars[0][3] is None:
        ax.set_xlabel("output tok/s over the first ok cell's (log scale)")
        ax.set_title("Whiskers: 95% CI of the ratio")
    else:
        ax.set_xlabel("speedup over the baseline (log scale)")
        ax.set_title("whiskers: 95% CI, orange band: the claimed range\nblue: the claim holds, grey: does not or partly",
                     loc="right")  # long bar labels push the axes right: a centred title would run off the page
    return _svg(fig)


def _accuracy(row: dict[str, Any]) -> tuple[str, float] | None:
    """The row's first accuracy figure (sorted by column name) or perplexity, with its name."""
    for column in sorted(row):
        if column.startswith("accuracy.") and column.count(".") == 2 and (v := number(row, column)) is not None:
            return column.removeprefix("accuracy."), v
    value = number(row, "perplexity")
    return ("perplexity", value) if value is not None else None


def accuracy_memory_speed(rows: list[dict[str, Any]]) -> str | None:
    points = []
    for row in rows:
        memory = number(row, "quantization.weight_bytes") or number(row, "peak_memory_bytes")
        tput = number(row, "output_throughput_tok_s")
        if row.get("status") == "ok" and memory and tput:
            points.append((memory / 1e6, tput, _accuracy(row), str(row.get("cell"))))
    if not points:
        return None
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    scored = [p for p in points if p[2] is not None]
    plain = [p for p in points if p[2] is None]
    if plain:
        ax.scatter([p[0] for p in plain], [p[1] for p in plain], color=COLOURS[7], label="no accuracy measured")
    if scored:
        dots = ax.scatter([p[0] for p in scored], [p[1] for p in scored], c=[p[2][1] for p in scored], cmap="viridis")
        fig.colorbar(dots, ax=ax, label=scored[0][2][0])
    _annotate(ax, {(memory, tput): cell for memory, tput, _, cell in points})
    ax.set_xlabel("memory MB (quantized weights where recorded, else peak process memory)")
    ax.set_ylabel("output tok/s")
    ax.set_title("Accuracy vs memory vs speed")
    if plain:
        ax.legend(loc="best")
    return _svg(fig)


def acceptance(rows: list[dict[str, Any]]) -> str | None:
    lines: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        k, rate = number(row, "technique.spec_k"), number(row, "spec.acceptance_rate")
        if row.get("status") == "ok" and k is not None and rate is not None:
            lines.setdefault(f"{row.get('engine')} {text(row.get('technique.spec'))}", []).append((k, rate))
    if not lines:
        return None
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(sorted(lines.items())):
        ax.plot(*zip(*sorted(points)), marker="o", color=COLOURS[i % len(COLOURS)], label=name)
    ax.set_xlabel("draft length k")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1)
    ax.set_title("Speculation: acceptance vs draft length")
    ax.legend(loc="best")
    return _svg(fig)
