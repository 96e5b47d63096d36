"""Campaigns end to end on a tiny two-replica scenario: journal, resume, crashing cells, executors, CLI."""

from __future__ import annotations

import re

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from testbed.campaign import load_campaign, run_campaign
from testbed.campaign.journal import read_journal
from testbed.campaign.matrix import PathError, cells, set_path
from testbed.campaign.summary import interval
from testbed.cli import app

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]

# Two L4 replicas of a 1.5B model, one node crashing for 10 s: without retries the requests in
# flight on it fail (availability < 99.9%), with three attempts they are retried elsewhere.
TINY = {
    "name": "tiny",
    "scenario": {
        "name": "tiny",
        "topology": {
            "name": "tiny",
            "model": "qwen2.5-1.5b",
            "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                {"name": "rack", "nodes": 2, "device": "L4", "devices_per_node": 1}]}]}]}],
        },
        "duration": "40s",
        "warmup": "5s",
        "drain": "20s",
        "workload": {
            "arrival": {"kind": "poisson", "rate": "20/s"},
            "prompt_tokens": {"kind": "fixed", "value": 128},
            "output_tokens": {"kind": "uniform", "low": 16, "high": 64},
        },
        "serving": {"batching": {"policy": "continuous"}},
        "sla": [{"metric": "availability", "min": "99.9%"}, {"metric": "ttft", "percentile": 99, "max": "2s"}],
    },
    "method": [{"kind": "node_crash", "target": "p/r/z/rack/node-0", "at": "15s", "duration": "10s"}],
    "steady_state": {"min_window": "5s"},
    "matrix": {"serving.retries.max_attempts": [1, 3]},
    "seeds": [1, 2],
}
# llama-3-70b validates as a scenario but its weights do not fit in an L4: the simulator raises.
CRASHING = {**TINY, "name": "crashing", "matrix": {**TINY["matrix"], "topology.model": ["qwen2.5-1.5b", "llama-3-70b"]}}


def write(tmp_path: Path, data: dict, name: str = "campaign.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Everything a run determines (wall time and tracebacks' paths aside)."""
    return frame.drop(columns=["wall_s", "error"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("baseline")
    return run_campaign(write(tmp, TINY), out_dir=tmp / "out")


def test_campaign_runs_every_cell_and_seed_and_writes_its_outputs(baseline) -> None:
    out = baseline.out_dir
    for name in ("journal.jsonl", "results.parquet", "cells.parquet", "metrics.parquet", "comparisons.parquet", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert len(read_journal(out / "journal.jsonl")) == 4
    cells_by_attempts = baseline.cells.set_index("serving.retries.max_attempts")
    assert cells_by_attempts.loc["1", "verdict"] == "fail"  # in-flight requests on the crashed node fail
    assert cells_by_attempts.loc["3", "verdict"] == "pass"  # retries hide the crash
    assert not baseline.passed
    # common random numbers: both cells see the same arrivals on each seed
    by_seed = baseline.results.groupby("seed")["requests"].nunique()
    assert (by_seed == 1).all()
    # the steady state is judged before the crash and after its repair
    assert baseline.results["steady_before"].all() and baseline.results["steady_after"].all()
    # the reused cell scenario reproduces the run
    cell_file = out / "cells" / f"{baseline.campaign.cells[0].id}.yaml"
    assert yaml.safe_load(cell_file.read_text())["serving"]["retries"]["max_attempts"] == 1


def test_paired_comparison_and_reports(baseline) -> None:
    table = baseline.comparisons
    row = table[(table["parameter"] == "serving.retries.max_attempts") & (table["metric"] == "availability")].iloc[0]
    results = baseline.results.set_index(["serving.retries.max_attempts", "seed"])["availability"]
    diffs = [results[("3", s)] - results[("1", s)] for s in (1, 2)]
    assert row["n"] == 2 and row["mean_diff"] == pytest.approx(np.mean(diffs)) and row["mean_diff"] > 0
    assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
    html = (baseline.out_dir / "report.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=\"http" not in html  # plotly.js is inline: works offline
    assert "heatmap" in html
    md = (baseline.out_dir / "report.md").read_text()
    assert "## Verdicts per cell" in md and "**FAIL**" in md and "## Paired comparisons" in md


def test_interrupted_campaign_resumes_without_redoing_finished_runs(tmp_path: Path, baseline) -> None:
    path = write(tmp_path, TINY)
    seen: list[str] = []

    def stop_after_two(row: dict) -> None:
        seen.append(row["key"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_campaign(path, out_dir=tmp_path / "out", on_row=stop_after_two)
    journal = tmp_path / "out" / "journal.jsonl"
    assert [r["key"] for r in read_journal(journal)] == seen
    with journal.open("a") as handle:
        handle.write('{"key": "torn')  # the process died mid-write
    redone: list[str] = []
    resumed = run_campaign(path, out_dir=tmp_path / "out", resume=True, workers=2, on_row=lambda r: redone.append(r["key"]))
    assert resumed.reused == 2 and set(redone).isdisjoint(seen) and len(redone) == 2
    pd.testing.assert_frame_equal(comparable(resumed.results), comparable(baseline.results))
    assert len(read_journal(journal)) == 4  # the torn line was cut, nothing glued to it


def test_crashing_cell_is_recorded_and_the_campaign_continues(tmp_path: Path) -> None:
    path = write(tmp_path, CRASHING)
    result = CliRunner().invoke(app, ["campaign", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "error" in result.output and "pass" in result.output
    rows = read_journal(tmp_path / "out" / "journal.jsonl")
    errored = [r for r in rows if r["status"] == "errored"]
    assert len(rows) == 8 and len(errored) == 4
    assert all(r["params"]["topology.model"] == "llama-3-70b" for r in errored)
    assert "Traceback" in errored[0]["error"] and "do not fit" in errored[0]["error"]
    assert all(r["status"] == "ok" for r in rows if r["params"]["topology.model"] == "qwen2.5-1.5b")


def test_ray_executor_gives_the_same_results_as_the_local_one(tmp_path: Path, baseline) -> None:
    pytest.importorskip("ray")
    on_ray = run_campaign(write(tmp_path, TINY), executor="ray", workers=2, out_dir=tmp_path / "out")
    pd.testing.assert_frame_equal(comparable(on_ray.results), comparable(baseline.results))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"matrix": {"serving.batchng.policy": ["micro"]}}, "matrix.serving.batchng.policy = micro gives an invalid scenario: serving.batchng: unknown field"),
        ({"matrix": {"serving.batching.policy": ["continuous", "fifo"]}}, "matrix.serving.batching.policy = fifo"),
        ({"matrix": {"topology.providers.q.regions.r.name": ["x"]}}, "matrix.topology.providers.q.regions.r.name = x: topology.providers has no item named 'q'"),
        ({"matrix": {"serving.retries.max_attempts": []}}, "matrix: serving.retries.max_attempts: expected at least one value"),
        ({"set": {"duration": "soon"}}, "set.duration gives an invalid scenario: duration"),
        ({"scenario": "missing.yaml"}, "missing.yaml: cannot read file"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"method": [{"kind": "node_crash", "target": "p/r/z/rack/node-9", "at": "1s"}]}, "method gives an invalid scenario"),
        ({"plane": "live", "set": {"duration": "1h"}}, "plane: live runs need small scenarios"),
        ({"compare": ["p42"]}, "compare: unknown metric 'p42'"),
    ],
)
def test_bad_campaign_files_exit_2_with_one_clear_message(tmp_path: Path, change: dict, expected: str) -> None:
    path = write(tmp_path, {**TINY, **change})
    result = CliRunner().invoke(app, ["campaign", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and str(path) in result.output or "missing.yaml" in expected
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_bad_options_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, TINY)
    for options in (["--executor", "slurm"], ["--workers", "0"]):
        result = CliRunner().invoke(app, ["campaign", str(path), *options])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_shipped_campaign_files_are_valid() -> None:
    files = sorted((ROOT / "faults" / "campaigns").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        campaign = load_campaign(path)
        assert campaign.runs >= 8 and len(campaign.scenarios) == len(campaign.cells)


def test_dotted_paths_select_list_items_by_name_kind_or_index() -> None:
    data = {"faults": [{"kind": "outage", "at": 1}, {"kind": "failure_process", "mtbf": 5}], "providers": [{"name": "aws", "n": 1}]}
    set_path(data, "faults.failure_process.mtbf", 7)
    set_path(data, "faults.0.at", 2)
    set_path(data, "providers.aws.n", 3)
    set_path(data, "serving.batching.policy", "micro")
    assert data["faults"] == [{"kind": "outage", "at": 2}, {"kind": "failure_process", "mtbf": 7}]
    assert data["providers"][0]["n"] == 3 and data["serving"] == {"batching": {"policy": "micro"}}
    with pytest.raises(PathError, match="index 5 is out of range"):
        set_path(data, "faults.5.at", 1)
    grid = cells({"a": [1, 2], "b": {"x": {"k": 1}, "y": {"k": 2}}})
    assert [c.params for c in grid] == [{"a": "1", "b": "x"}, {"a": "1", "b": "y"}, {"a": "2", "b": "x"}, {"a": "2", "b": "y"}]
    assert len({c.id for c in grid}) == 4 and cells({"b": {"x": {"k": 1}}, "a": [1]})[0].id == grid[0].id


def test_intervals_match_their_definitions() -> None:
    values = np.array([1.0, 2.0, 4.0, 7.0])
    low, high = interval(values, 0.95, "t")
    half = 3.182446305284263 * values.std(ddof=1) / 2  # t(0.975, 3) * s / sqrt(4)
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))
    b_low, b_high = interval(values, 0.95, "bootstrap")
    assert values.min() <= b_low < values.mean() < b_high <= values.max()
    assert all(math.isnan(v) for v in interval(np.array([1.0]), 0.95, "t"))
    assert interval(np.array([3.0, 3.0]), 0.95, "t") == (3.0, 3.0)


def test_journal_rows_are_json_lines_with_the_run_key(baseline) -> None:
    lines = (baseline.out_dir / "journal.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert {r["key"] for r in rows} == {f"{c.id}/{s}" for c in baseline.campaign.cells for s in (1, 2)}
    assert all(r["digest"] == baseline.campaign.digests[r["cell"]] for r in rows)


def test_reports_name_cells_by_their_settings_and_link_to_their_scenarios_and_runs(tmp_path: Path) -> None:
    from testbed.campaign.html import comparison_figures

    kept = run_campaign(write(tmp_path, {**TINY, "keep_records": True}), out_dir=tmp_path / "out")
    html = (kept.out_dir / "report.html").read_text()
    md = (kept.out_dir / "report.md").read_text()
    for cell in kept.campaign.cells:
        assert f"href='cells/{cell.id}.yaml'" in html and f"(cells/{cell.id}.yaml)" in md
        for seed in (1, 2):
            assert (kept.out_dir / "runs" / f"{cell.id}-s{seed}" / "report.html").exists()
            assert f"href='runs/{cell.id}-s{seed}/report.html'" in html and f"(runs/{cell.id}-s{seed}/report.md)" in md
        # metrics rows are named by settings; the hash is only the file name it links to
        assert f"| {cell.label} |" in md and f"<td>{cell.label}</td>" in html
    assert not re.search(r"<td>c[0-9a-f]{8,9}</td>", html) and not re.search(r"^\| c[0-9a-f]{8,9} \|", md, re.M)  # no bare hash as a name
    figures = {f.layout.title.text.split(":")[0]: f for f in comparison_figures(kept)}
    assert figures["availability"].layout.xaxis.title.text == "b - a (percentage points)"
    assert figures["ttft_p99"].layout.xaxis.title.text == "b - a (seconds)"
    for figure in figures.values():
        effects = np.abs(np.asarray(figure.data[0].x, dtype=float))
        assert list(effects) == sorted(effects, reverse=True) and figure.layout.yaxis.autorange == "reversed"
