"""A W&B Report of a sweep's runs, built with W&B's maintained Reports API (`wandb-workspaces`).

Each cell is a W&B run named by its cell, grouped by its sweep id (harness/trackers/wandb_run.py), so one
run set per sweep selects them. Online, `publish` saves the report and returns its URL; offline (runs
logged with mode=offline), `offline_instructions` says how to upload the runs and build it then.
`build` takes the API module as an argument: tests hand it a stub (there is no W&B server here).
"""

from __future__ import annotations

import shlex
from typing import Any

from harness.report.claims import ClaimCheck
from harness.report.page import claims_table


def sweeps(rows: list[dict[str, Any]]) -> list[str]:
    """The sweep ids of the rows, in first-seen order."""
    return list(dict.fromkeys(str(r["sweep_id"]) for r in rows if r.get("sweep_id")))


def offline_runs(rows: list[dict[str, Any]]) -> list[str]:
    """The run folders of cells W&B logged offline (still to upload), in table order."""
    return list(dict.fromkeys(str(r["tracker.run_dir"]) for r in rows
                              if r.get("tracker.mode") == "offline" and r.get("tracker.run_dir")))  # fmt: skip


def _markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in table]
    return "\n".join([lines[0], "|" + "---|" * len(table[0]), *lines[1:]])


def build(wr: Any, entity: str | None, project: str, rows: list[dict[str, Any]], checks: list[ClaimCheck],
          title: str) -> Any:  # fmt: skip
    """The report object (not saved): the claims table, then per sweep a panel grid over its runs with
    the throughput-vs-per-user-speed scatter, throughput and latency bars and, when speculation ran,
    acceptance vs k."""
    blocks: list[Any] = [wr.H1(title), wr.P("Every cell of the sweep is one run; intervals are in the "
                                             "ci95.* summary values. Built by `infermatrix report --wandb`.")]  # fmt: skip
    if checks:
        blocks += [wr.H2("Claims"), wr.MarkdownBlock(text=_markdown_table(claims_table(checks)))]
    speculation = any(r.get("spec.acceptance_rate") is not None for r in rows)
    for sweep in sweeps(rows):
        panels = [
            wr.ScatterPlot(title="output tok/s vs mean TPOT (per-user speed = 1000 / TPOT)",
                           x=wr.SummaryMetric("tpot_ms.mean"), y=wr.SummaryMetric("output_throughput_tok_s")),
            wr.BarPlot(title="output tok/s", metrics=[wr.SummaryMetric("output_throughput_tok_s")]),
            wr.BarPlot(title="mean TTFT, TPOT, E2E (ms)",
                       metrics=[wr.SummaryMetric(m) for m in ("ttft_ms.mean", "tpot_ms.mean", "e2el_ms.mean")]),
        ]  # fmt: skip
        if speculation:
            panels.append(wr.ScatterPlot(title="acceptance vs draft length", x=wr.Config("technique.spec_k"),
                                         y=wr.SummaryMetric("engine_stats.speculation.acceptance_rate")))  # fmt: skip
        runset = wr.Runset(entity=entity or "", project=project, name=f"sweep {sweep}", filters=f"Group = '{sweep}'")
        blocks += [wr.H2(f"Sweep {sweep}"), wr.PanelGrid(runsets=[runset], panels=panels)]
    return wr.Report(project=project, entity=entity or "", title=title, blocks=blocks)


def publish(report: Any) -> str:
    """Save the report to the W&B server; its URL."""
    report.save()
    return str(report.url)


def offline_instructions(rows: list[dict[str, Any]], argv: list[str]) -> str:
    """How to upload offline runs and rebuild the report once online."""
    runs = offline_runs(rows)
    upload = ("wandb sync " + " ".join(shlex.quote(r) for r in runs)) if runs else "(no offline runs in these tables)"
    return ("W&B is offline: no report was built. To build it, log in (`wandb login`, or set WANDB_API_KEY), "
            f"upload the {len(runs)} offline run(s):\n  {upload}\nthen run again:\n  infermatrix report "
            + " ".join(shlex.quote(a) for a in argv))  # fmt: skip
