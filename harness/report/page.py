"""The report page: the same sections rendered as Markdown (figures as SVG files beside it) and as one
self-contained HTML file (figures inline). No clock, no absolute paths: the same rows give the same bytes."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from harness.report import figures
from harness.report.claims import ClaimCheck, claimed_text
from harness.report.ratio import Figure
from harness.report.rows import interval, number, text
from harness.report.table import stability_notes

# Cell-table columns: (header, results column, format); a column shows only when some row has it.
CELL_COLUMNS = (("out tok/s", "output_throughput_tok_s", ".1f"), ("TTFT ms", "ttft_ms.mean", ".1f"),
                ("TPOT ms", "tpot_ms.mean", ".2f"), ("E2E ms", "e2el_ms.mean", ".0f"),
                ("peak MB", "peak_memory_bytes", "mb"), ("n", "ci95.output_throughput_tok_s.n", ".0f"),
                ("load", "load_avg_1m", ".1f"))  # fmt: skip
EXTRA_PREFIXES = ("cost.", "energy.", "quantization.", "perplexity", "spec.")


@dataclass(slots=True)
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (Markdown inline: `code` only)
    table: list[list[str]] | None = None  # header row first
    figure: tuple[str, str] | None = None  # (file stem, SVG text)


def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.1f}" if spec == "mb" else f"{value:{spec}}"


def figure_text(f: Figure, unit: str = "") -> str:
    digits = ".3g"
    shown = f"{f.value:{digits}}{unit}"
    if f.low is not None and f.high is not None:
        return f"{shown} [{f.low:{digits}}, {f.high:{digits}}]"
    return shown + ("" if f.exact else " (no interval: 1 repeat)")


def claims_table(checks: list[ClaimCheck]) -> list[list[str]]:
    table = [["claim", "source", "claimed", "measured [95% CI]", "device", "cells", "verdict"]]
    for c in checks:
        unit = "x" if c.spec.kind.value == "ratio" else ""
        if c.spec.kind.value == "gate" and c.measurements:
            measured = f"gate passed in {sum(m.figure.value == 1.0 for m in c.measurements)}/{len(c.measurements)}"
        else:
            measured = "; ".join(f"{figure_text(m.figure, unit)}" + (f" ({m.label.split('(')[-1].rstrip(')')})"
                                 if len(c.measurements) > 1 else "") for m in c.measurements)  # fmt: skip
        cells = len({cell for m in c.measurements for cell in m.cells})
        verdict = c.verdict + (f": {c.reason}" if c.reason else "")
        table.append([f"{c.spec.id}: {c.spec.claim} ({c.experiment})", c.spec.source, claimed_text(c.spec),
                      measured or "-", "; ".join(c.devices) or "-", str(cells), verdict])  # fmt: skip
    return table


def cells_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    extra = sorted({k for r in rows for k in r if k.startswith(EXTRA_PREFIXES) and number(r, k) is not None})
    columns = [c for c in CELL_COLUMNS if any(number(r, c[1]) is not None for r in rows)]
    table = [["cell", "status", *[h for h, _, _ in columns], *extra, "threads", "dtype", "device", "note"]]
    for r in rows:
        values = []
        for header, column, spec in columns:
            shown = fmt(number(r, column), spec)
            if (ci := interval(r, column)) is not None:
                shown += f" [{ci[0]:{spec}}, {ci[1]:{spec}}]"
            values.append(shown)
        note = "; ".join(stability_notes(r)) if r.get("status") == "ok" else str(r.get("reason") or "").strip().split("\n")[0]
        table.append([str(r.get("cell")), str(r.get("status")), *values, *[fmt(number(r, k), ".4g") for k in extra],
                      *[text(r[k]) if r.get(k) is not None else "-" for k in ("threads", "model_dtype")], str(r.get("hardware") or "-"), note])  # fmt: skip
    return table


def build(rows: list[dict[str, Any]], checks: list[ClaimCheck], title: str, command: str,
          sources: list[str], notes: list[str] = ()) -> list[Section]:  # fmt: skip
    """Every section of the report, in order; figures only where the rows have data for them."""
    sections = [Section(title, [*notes, f"Made by: `{command}`",
                                "From: " + ", ".join(f"`{s}`" for s in sources) + f" ({len(rows)} cells).",
                                "Numbers are read from the results tables as measured; intervals are 95% "
                                "Student-t over repeats (ratios: on the log scale, Welch degrees of freedom)."])]  # fmt: skip
    if checks:
        sections.append(Section("Claims", ["Verdict: holds = the measured value is in the claimed range; "
                                           "does not hold = it and its whole interval are outside; partly = "
                                           "outside but the interval reaches the range, or mixed over cells."],
                                table=claims_table(checks)))  # fmt: skip
    sections.append(Section("Cells", table=cells_table(rows)))
    drawn = [("pareto", "Throughput vs per-user speed", figures.pareto(rows)),
             ("speedups", "Speedups over baselines", figures.speedups(checks, rows)),
             ("accuracy_memory_speed", "Accuracy vs memory vs speed", figures.accuracy_memory_speed(rows)),
             ("acceptance", "Speculation acceptance vs k", figures.acceptance(rows))]  # fmt: skip
    for stem, name, svg in drawn:
        if svg is not None:
            sections.append(Section(name, figure=(stem, svg)))
    missing = [name for _, name, svg in drawn if svg is None]
    if missing:
        sections.append(Section("Figures without data", ["No rows to draw: " + ", ".join(missing) + "."]))
    return sections


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def markdown(sections: list[Section]) -> str:
    out = []
    for i, s in enumerate(sections):
        out.append(("# " if i == 0 else "## ") + s.title)
        out += ["", *[p + "\n" for p in s.text]]
        if s.table:
            out.append("| " + " | ".join(_md_cell(c) for c in s.table[0]) + " |")
            out.append("|" + "---|" * len(s.table[0]))
            out += ["| " + " | ".join(_md_cell(c) for c in line) + " |" for line in s.table[1:]]
            out.append("")
        if s.figure:
            out += [f"![{s.title}](figures/{s.figure[0]}.svg)", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    """Markdown's `code` spans as <code>, everything else escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
         "text-align:left;vertical-align:top}th{background:#f3f3f3}svg{max-width:100%;height:auto}")  # fmt: skip


def html_page(sections: list[Section]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(sections[0].title)}</title><style>{STYLE}</style></head><body>"]  # fmt: skip
    for i, s in enumerate(sections):
        out.append(f"<h{1 if i == 0 else 2}>{html.escape(s.title)}</h{1 if i == 0 else 2}>")
        out += [f"<p>{_inline(p)}</p>" for p in s.text]
        if s.table:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in s.table[0]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in s.table[1:]]
            out.append("</table>")
        if s.figure:
            svg = s.figure[1]
            out.append(svg[svg.index("<svg"):])  # inline: drop the XML prolog and doctype
    out.append("</body></html>")
    return "\n".join(out) + "\n"
