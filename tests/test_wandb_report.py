"""The W&B Report of a sweep: built with the Reports API (a stub here: no W&B server), or, offline, the
commands that upload the runs and build it later."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.report import wandb_report
from harness.report.claims import check_all, declared_experiments
from harness.report.cli import main
from harness.report.rows import load_tables
from tests.report_rows import result, write_table


class Block(SimpleNamespace):
    """What a Reports-API constructor was called with."""


def stub_api() -> SimpleNamespace:
    """The part of wandb_workspaces.reports.v2 the builder uses; each class records its arguments."""

    def kind(name):
        def make(*args, **kwargs):
            return Block(kind=name, args=args, **kwargs)

        return make

    names = ("Report", "H1", "H2", "P", "MarkdownBlock", "PanelGrid", "Runset", "ScatterPlot", "BarPlot",
             "SummaryMetric", "Config")  # fmt: skip
    return SimpleNamespace(**{n: kind(n) for n in names})


@pytest.fixture
def rows(tmp_path):
    offline = {"tracker": {"tracker": "wandb", "mode": "offline", "run_dir": "/runs/offline-run-1"}}
    table = write_table(tmp_path / "results.jsonl", [
        result("kv_cache", {"kv_cache": "none"}, 1.0, 900.0, extra=offline),
        result("kv_cache", {"kv_cache": "paged"}, 30.0, 30.0,
               extra={"tracker": {"tracker": "wandb", "mode": "offline", "run_dir": "/runs/offline-run-2"}}),
    ])  # fmt: skip
    return load_tables([table])


def test_the_report_has_the_claims_and_one_panel_grid_per_sweep_over_its_runs(rows):
    checks = check_all(rows, declared_experiments())
    report = wandb_report.build(stub_api(), "team", "infermatrix", rows, checks, "KV cache")

    assert (report.kind, report.project, report.entity, report.title) == ("Report", "infermatrix", "team", "KV cache")
    claims = [b for b in report.blocks if b.kind == "MarkdownBlock"]
    assert len(claims) == 1 and "kv-1: KV cache (paged)" in claims[0].text and "| holds |" in claims[0].text
    [grid] = [b for b in report.blocks if b.kind == "PanelGrid"]
    [runset] = grid.runsets
    assert runset.filters == "Group = 'sweep-kv_cache'" and runset.project == "infermatrix"
    scatter = grid.panels[0]
    assert (scatter.x.args, scatter.y.args) == (("tpot_ms.mean",), ("output_throughput_tok_s",))
    assert not any(p.title == "acceptance vs draft length" for p in grid.panels)  # no speculation in these runs


def test_the_builder_fits_the_real_reports_api(rows):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    report = wandb_report.build(wr, "team", "infermatrix", rows, check_all(rows, declared_experiments()), "KV cache")
    assert isinstance(report, wr.Report)
    [grid] = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    from wandb_workspaces import expr

    selected = expr.expr_to_filters(grid.runsets[0].filters)  # the API's own parser: runs of this sweep's group
    assert (selected.key.section, selected.key.name, selected.value) == ("run", "group", "sweep-kv_cache")


def test_offline_it_prints_how_to_upload_the_runs_and_rebuild(rows, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    table = str(tmp_path / "results.jsonl")
    assert main([table, "--wandb"]) == 0
    out = capsys.readouterr().out
    assert "wandb sync /runs/offline-run-1 /runs/offline-run-2" in out
    assert f"infermatrix report {table} --wandb" in out
