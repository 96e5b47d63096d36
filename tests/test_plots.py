"""Figures and the HTML report are checked against the records they are drawn from."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from testbed.records.schema import latency_columns
from testbed.report import plots
from testbed.report.html import html_report
from testbed.report.markdown import availability_by
from testbed.report.write import write_run
from testbed.sim import simulate
from testbed.sla import fault_windows
from testbed.spec import Scenario, TopologySpec, load_spec
from testbed.topology import Topology

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def outage():
    """Both clouds dark for four minutes; the CPU tier serves: a failing and a passing verdict."""
    return simulate(Scenario.from_yaml(ROOT / "faults/provider-outage-fallback.yaml"))


def test_cdf_passes_through_the_quantiles_of_successful_requests(outage):
    fig = plots.latency_cdf(outage.requests, "ttft")
    curve = fig.data[0]
    ok = outage.requests[outage.requests["status"] == "ok"]
    ttft = latency_columns(ok)["ttft"].to_numpy()
    assert np.all(np.diff(curve.x) >= 0) and np.all(np.diff(curve.y) > 0)
    assert curve.y[0] == 0 and curve.y[-1] == 1
    assert curve.x[-1] == pytest.approx(ttft.max())
    median = np.interp(0.5, curve.y, curve.x)
    assert median == pytest.approx(np.median(ttft), rel=1e-6)


def test_cdf_overlays_labelled_runs_and_rejects_unknown_metrics(outage):
    slower = outage.requests.assign(first_token=outage.requests["first_token"] + 1.0)
    fig = plots.latency_cdf({"A": outage.requests, "B": slower}, "ttft")
    assert [t.name for t in fig.data] == ["A · all", "B · all"]
    assert fig.data[1].x[0] == pytest.approx(fig.data[0].x[0] + 1.0)
    with pytest.raises(ValueError, match="unknown latency metric 'latency'"):
        plots.latency_cdf(outage.requests, "latency")


def test_percentiles_over_time_shade_the_fault_windows(outage):
    fig = plots.percentiles_over_time(outage.requests, outage.faults, "ttft", bin_s=10)
    shaded = sorted({(shape.x0, shape.x1) for shape in fig.layout.shapes})
    assert shaded == fault_windows(outage.faults) == [(180.0, 420.0)]
    availability = next(t for t in fig.data if t.name == "availability")
    requests = outage.requests
    in_bin = requests[(requests["arrival"] >= 190) & (requests["arrival"] < 200)]
    assert availability.y[list(availability.x).index(195.0)] == pytest.approx((in_bin["status"] == "ok").mean())
    p99 = next(t for t in fig.data if t.name == "p99 ttft")
    before, during = np.nanmax(p99.y[p99.x < 170]), np.nanmedian(p99.y[(p99.x > 200) & (p99.x < 400)])
    assert during > 10 * before  # the CPU tier is visibly slower while it serves


def test_fault_timeline_marks_detection_recovery_and_alerts(outage):
    alerts = pd.DataFrame({"time": [185.0, 190.0], "detector": ["burn_rate", "cusum"], "target": ["aws", "gcp"]})
    fig = plots.fault_timeline(outage.faults, alerts)
    bars = fig.data[0]
    assert list(bars.base) == outage.faults["start"].tolist()
    assert list(bars.base + bars.x) == outage.faults["end"].tolist()
    detected = next(t for t in fig.data if t.name == "detected by health checks")
    assert list(detected.x) == outage.faults["detected_at"].tolist()
    fired = next(t for t in fig.data if t.name == "alert fired")
    assert list(fired.x) == [185.0, 190.0] and list(fired.text) == ["burn_rate aws", "cusum gcp"]
    assert plots.fault_timeline(outage.faults.iloc[:0]).layout.title.text == "no faults in this run"


def test_availability_bars_equal_the_report_table(outage):
    fig = plots.availability_by_region(outage.requests, target=0.98)
    expected = availability_by(outage.requests, "client_region")
    assert dict(zip(fig.data[0].x, fig.data[0].y)) == pytest.approx({str(k): v for k, v in expected.items()})
    assert fig.layout.shapes[0].y0 == 0.98


@pytest.mark.parametrize("name, node_level", [("multi-cloud", True), ("fleet-1k", False)])
def test_topology_graph_draws_every_failure_domain(name, node_level):
    topology = Topology.from_spec(load_spec(ROOT / f"topologies/{name}.yaml", TopologySpec))
    fig = plots.topology_graph(topology)
    levels = {t.name: len(t.x) for t in fig.data if t.name}
    for level in ("provider", "region", "zone", "rack"):
        assert levels[level] == len(topology.failure_domains(level))
    assert ("node" in levels) is node_level
    assert str(len(topology.replicas)) in fig.layout.title.text


def test_html_report_is_self_contained_and_shows_the_verdicts(outage, tmp_path):
    page = html_report(outage)
    assert page.count("plotly.js v") == 1  # the library is inlined once
    assert not re.search(r"<script[^>]+src=", page)  # nothing to fetch: works offline
    assert page.count('class="js-plotly-plot"') + page.count("Plotly.newPlot") >= 6
    rows = re.findall(r'<tr class="(pass|fail)">(.*?)</tr>', page)
    assert [(cls, "FAIL" in row) for cls, row in rows] == [(v.passed and "pass" or "fail", not v.passed) for v in outage.sla]
    assert "p99 ttft (during faults)" in page and "FAIL" in page
    written = write_run(outage, tmp_path)
    assert tmp_path / "report.html" in written
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_without_plotly_the_run_still_writes_its_other_outputs(outage, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plotly" else real(name, *a))
    written = write_run(outage, tmp_path)
    assert not (tmp_path / "report.html").exists() and tmp_path / "report.html" not in written
    assert (tmp_path / "report.md").exists()
