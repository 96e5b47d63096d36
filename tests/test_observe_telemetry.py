"""Telemetry from records: windowed metrics, the Prometheus exposition and OpenTelemetry traces."""

from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

os.environ.setdefault("OMP_NUM_THREADS", "1")

from testbed.observe.metrics import Placement, window_metrics  # noqa: E402
from testbed.observe.prometheus import exposition, parse_histogram_count  # noqa: E402
from testbed.observe.sampling import TraceSampler, in_share as sampled  # noqa: E402
from testbed.observe.traces import emit_spans, traced_requests  # noqa: E402
from testbed.records.schema import empty_requests  # noqa: E402
from testbed.report import write_run  # noqa: E402
from testbed.sim import simulate  # noqa: E402
from testbed.spec import Scenario  # noqa: E402

NODE = "p/r/a/k/node-0"


def _requests(rows: list[dict]) -> pd.DataFrame:
    base = empty_requests()
    frame = pd.DataFrame([{**{c: None for c in base.columns}, **row} for row in rows])
    defaults = {"session_id": -1, "turn": -1, "stage": "", "request_class": "default", "priority": 0, "client_region": "p/r",
                "prompt_tokens": 10, "output_tokens": 11, "retries": 0, "hedged": False, "failed_over": False,
                "fallback": False, "degraded": False, "fault_overlap": False, "region": "p/r", "cached_tokens": 0}
    for column, value in defaults.items():
        frame[column] = frame[column].fillna(value) if column in frame else value
    return frame.astype({c: t for c, t in zip(base.columns, base.dtypes) if c not in ("status", "region", "client_region", "stage", "request_class")})


def test_window_metrics_count_requests_when_they_end_and_take_percentiles_of_ok_ones():
    requests = _requests(
        [
            {"request_id": 0, "arrival": 1.0, "first_token": 1.2, "finish": 2.0, "status": "ok", "replica": 0},
            {"request_id": 1, "arrival": 2.0, "first_token": 2.6, "finish": 4.0, "status": "ok", "replica": 1},
            {"request_id": 2, "arrival": 9.0, "first_token": np.nan, "finish": 12.0, "status": "timeout", "replica": -1, "retries": 1},
            {"request_id": 3, "arrival": 11.0, "first_token": 11.1, "finish": 13.0, "status": "ok", "replica": 0},
        ]
    )
    placement = Placement(region=["p/r", "p/r"], node=[NODE, NODE])
    metrics = window_metrics(requests, pd.DataFrame(), pd.DataFrame(), placement, window=10.0)
    value = metrics.set_index(["time", "scope", "target", "metric"])["value"]
    assert value[(10.0, "fleet", "fleet", "request_rate")] == pytest.approx(0.2)
    assert value[(10.0, "fleet", "fleet", "error_rate")] == 0.0
    assert value[(20.0, "fleet", "fleet", "error_rate")] == 0.5  # the timeout counts when it ended, at 12 s
    assert value[(20.0, "client_region", "p/r", "retry_share")] == 0.5
    assert value[(10.0, "fleet", "fleet", "ttft_p50")] == pytest.approx(np.median([0.2, 0.6]))
    assert value[(10.0, "node", NODE, "e2e_p99")] == pytest.approx(np.quantile([1.0, 2.0], 0.99))
    assert value[(10.0, "fleet", "fleet", "tpot_p50")] == pytest.approx(np.median([0.08, 0.14]))
    assert (20.0, "node", NODE, "error_rate") not in value.index  # failed requests name no replica


@lru_cache(maxsize=None)
def errors_run():
    """A small run where a region answers 30% of attempts with a 503 for a minute: retries."""
    region = {"name": "r", "zones": [{"name": "a", "racks": [{"name": "k", "nodes": 1, "device": "H100", "devices_per_node": 4}]}]}
    data = {
        "name": "telemetry",
        "topology": {"name": "t", "providers": [{"name": "p", "regions": [region]}]},
        "workload": {"arrival": {"kind": "poisson", "rate": "30/s"}, "prompt_tokens": {"kind": "fixed", "value": 128},
                     "output_tokens": {"kind": "uniform", "low": 8, "high": 32}},
        "serving": {"retries": {"max_attempts": 2}},
        "faults": [{"kind": "error_injection", "target": "p/r", "rate": 0.3, "status": 503, "at": "30s", "duration": "60s"}],
        "duration": "2min",
        "seed": 4,
        "observability": {"trace_sample": 0.05},
    }
    return simulate(Scenario.model_validate(data))


def test_run_metrics_agree_with_the_records():
    result = errors_run()
    metrics, window = result.observation.metrics, result.observation.window
    fleet = metrics[(metrics["scope"] == "fleet") & (metrics["metric"] == "request_rate")]
    assert fleet["value"].sum() * window == pytest.approx(len(result.requests))
    completed = metrics[(metrics["scope"] == "region") & (metrics["metric"] == "completed")]["value"].sum()
    assert completed == result.timeseries["completed"].sum()
    failures = metrics[(metrics["scope"] == "fleet") & (metrics["metric"] == "attempt_failure_rate")].set_index("time")["value"]
    assert failures.loc[40.0:90.0].min() > 0.15 and failures.loc[:30.0].max() == 0.0  # 30% of attempts fail during the fault


def test_prometheus_exposition_uses_vllm_names_and_counts_every_served_request():
    result = errors_run()
    text = exposition(result).decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds", "vllm:num_requests_waiting",
            "vllm:num_requests_running", "vllm:request_success", "vllm:generation_tokens", "testbed:alerts"} <= names
    served = int((result.requests["status"] == "ok").sum())
    assert parse_histogram_count(text, "vllm:e2e_request_latency_seconds").sum() == served
    assert 'vllm:num_requests_waiting{model_name="llama-3-8b",region="p/r",replica="p/r/a/k/node-0/replica-0"}' in text


def test_traces_export_the_sample_and_every_retried_request_as_nested_spans():
    result = errors_run()
    exporter = InMemorySpanExporter()
    exported = emit_spans(result, exporter)
    spans = exporter.get_finished_spans()
    retried = result.requests[result.requests["retries"] > 0]
    assert len(retried) > 20
    expected = traced_requests(result, TraceSampler("sampled", 0.05, result.seed))
    assert exported == len(expected) and set(retried["request_id"]) <= set(expected["request_id"])
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == exported
    assert all(s.name == "text_completion llama-3-8b" and s.attributes["gen_ai.operation.name"] == "text_completion" for s in roots)
    by_id = {s.context.span_id: s for s in spans}
    for span in spans:  # children lie within their parents, in the parent's trace
        if span.parent is not None:
            parent = by_id[span.parent.span_id]
            assert parent.context.trace_id == span.context.trace_id
            assert parent.start_time <= span.start_time <= span.end_time <= parent.end_time
    retried_id = int(retried["request_id"].iloc[0])
    root = next(s for s in roots if s.attributes["testbed.request_id"] == retried_id)
    attempts = [s for s in spans if s.context.trace_id == root.context.trace_id and s.name in ("attempt", "retry")]
    assert [s.name for s in attempts][:2] == ["attempt", "retry"]
    assert attempts[0].attributes["testbed.outcome"] == "failed"


def test_trace_sampling_is_deterministic_by_request_id():
    ids = np.arange(100_000)
    first, again = sampled(ids, 0.01, seed=7), sampled(ids, 0.01, seed=7)
    assert (first == again).all() and 800 < first.sum() < 1200
    assert not (sampled(ids, 0.01, seed=8) == first).all()


def test_run_outputs_include_alerts_metrics_prometheus_and_otlp_json_traces(tmp_path):
    result = errors_run()
    write_run(result, tmp_path)
    alerts = pd.read_parquet(tmp_path / "alerts.parquet")
    assert not alerts.empty and {"time", "detector", "severity", "target", "root_cause"} <= set(alerts.columns)
    assert not pd.read_parquet(tmp_path / "metrics.parquet").empty
    assert (tmp_path / "metrics.prom").read_text().count("vllm:time_to_first_token_seconds_bucket") > 0
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    trace = json.loads(lines[0])["resourceSpans"][0]
    assert {"key": "service.name", "value": {"stringValue": "testbed-gateway"}} in trace["resource"]["attributes"]
    span = trace["scopeSpans"][0]["spans"][0]
    assert len(span["traceId"]) == 32 and int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])
    summary = json.loads((tmp_path / "scorecard.json").read_text())
    assert summary["faults"] == 1 and summary["detected"] == 1
    assert "## Observability scorecard" in (tmp_path / "report.md").read_text()
