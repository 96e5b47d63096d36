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


def test_fleet_over_time_shows_throughput_queues_utilisation_and_replicas_up_per_region(outage):
    fig = plots.fleet_over_time(outage.timeseries, outage.health, outage.faults)
    regions = sorted(outage.timeseries["region"].astype(str).unique())
    panels = {axis: [t for t in fig.data if t.yaxis == axis] for axis in ("y", "y2", "y3", "y4")}
    assert all(sorted(t.name for t in traces) == regions for traces in panels.values())
    ts = outage.timeseries
    fallback = ts[ts["region"] == "onprem/cpu-fallback"]
    at = float(fallback["time"].iloc[len(fallback) // 2])
    interval = at - float(np.max(ts["time"].unique()[ts["time"].unique() < at]))
    throughput = next(t for t in panels["y"] if t.name == "onprem/cpu-fallback")
    expected = fallback.loc[fallback["time"] == at, "completed"].sum() / interval
    assert throughput.y[list(throughput.x).index(at)] == pytest.approx(expected)
    queue = next(t for t in panels["y2"] if t.name == "aws/us-east-1")
    assert queue.y[list(queue.x).index(at)] == ts.loc[(ts["time"] == at) & (ts["region"] == "aws/us-east-1"), "queue_depth"].sum()
    # Replicas up, as the gateway's health checks saw them: all of aws/us-east-1's at first, none
    # within seconds of the outage (probes notice, one replica at a time), all again at the end.
    up = next(t for t in panels["y4"] if t.name == "aws/us-east-1")
    total = ts.loc[ts["region"] == "aws/us-east-1", "replica"].nunique()
    changes = outage.health[outage.health["region"].astype(str) == "aws/us-east-1"]
    assert up.y[0] == total and min(up.y) == 0 and up.y[-1] == total
    dark = up.x[list(up.y).index(0)]
    assert 180 < dark <= changes.loc[changes["change"] == "unhealthy", "time"].max() < 200
    assert sorted({(shape.x0, shape.x1) for shape in fig.layout.shapes}) == [(180.0, 420.0)]


def test_availability_over_time_has_a_line_per_client_region(outage):
    fig = plots.availability_over_time(outage.requests, outage.faults, target=0.98, bin_s=30)
    requests = outage.requests
    assert sorted(t.name for t in fig.data) == sorted(requests["client_region"].astype(str).unique())
    trace = fig.data[0]
    mine = requests[(requests["client_region"].astype(str) == trace.name) & (requests["arrival"] >= 180) & (requests["arrival"] < 210)]
    assert trace.y[list(trace.x).index(195.0)] == pytest.approx((mine["status"] == "ok").mean())


@pytest.mark.parametrize("name", ["multi-cloud", "fleet-1k"])
def test_link_rtt_labels_do_not_overlap(name):
    topology = Topology.from_spec(load_spec(ROOT / f"topologies/{name}.yaml", TopologySpec))
    labels = [(a.x, a.y) for a in plots.topology_graph(topology).layout.annotations if a.text.endswith(" ms")]
    assert len(labels) == len(topology.spec.links) >= 3
    xs = [t for trace in plots.topology_graph(topology).data for t in trace.x if t is not None]
    width = max(plots.LABEL_WIDTH, plots.LABEL_SHARE * (max(xs) - min(xs)))
    for i, (x1, y1) in enumerate(labels):
        for x2, y2 in labels[i + 1:]:
            assert abs(x1 - x2) >= width or abs(y1 - y2) >= plots.LANE_HEIGHT - 1e-9, (labels, width)


def test_html_report_has_contents_the_served_table_and_no_raw_frames(outage):
    page = html_report(outage)
    anchors = re.findall(r"<h2 id='([^']+)'>", page)
    toc = re.findall(r"<li><a href='#([^']+)'>", page)
    assert toc == anchors and len(anchors) >= 10
    for section in ("where-requests-were-served", "availability", "fleet-load-by-region", "observability-scorecard"):
        assert section in anchors
    served = page.split("id='where-requests-were-served'")[1].split("<h2")[0]
    ok = outage.requests[outage.requests["status"] == "ok"]
    fallback = ok[ok["region"] == "onprem/cpu-fallback"]
    assert f"<td class=\"\">onprem/cpu-fallback</td><td class=\"\">{len(fallback):,}</td>" in served
    for raw in ("root_causes", "fault_id", "time_to_detect", "false_alerts_per_hour", "fault_free_hours", "root_cause_rank"):
        assert raw not in page.split("<script")[0] and f"<th>{raw}</th>" not in page, raw
    assert "fleet by region over time" in page and "availability by client region over time" in page
