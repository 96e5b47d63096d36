"""Prometheus exposition of a run, under the metric names vLLM uses.

Dashboards and alert rules written for vLLM (``vllm:time_to_first_token_seconds``,
``vllm:num_requests_waiting``...) apply to the testbed unchanged. Histograms are built with numpy
from the records (observing 300k values one call at a time would cost seconds) and handed to
``prometheus_client`` as metric families, which does the text format. Gauges are each replica's
last sample while clients were still sending; counters and histograms cover the whole run.
Metrics vLLM has no name for are prefixed ``testbed:``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from testbed.records.schema import latency_columns, string_labels
from testbed.topology import Topology

if TYPE_CHECKING:
    from testbed.records.result import Result

# vLLM's bucket boundaries (vllm/engine/metrics.py), so its dashboards' quantiles line up.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class RunCollector:
    """A prometheus_client collector over one run's records."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.model = model_name(result)

    def collect(self) -> Iterator[Metric]:
        requests = self.result.requests
        labels = ["model_name", "region"]
        served = requests.loc[(requests["status"] == "ok").to_numpy(), ["region", "arrival", "first_token", "finish", "prompt_tokens", "output_tokens"]]
        region = string_labels(served["region"])
        success = CounterMetricFamily("vllm:request_success", "Requests that finished ok.", labels=labels + ["finished_reason"])
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Prefill tokens processed.", labels=labels)
        generation = CounterMetricFamily("vllm:generation_tokens", "Generation tokens produced.", labels=labels)
        for name, group in served.groupby(region, sort=True, observed=True):
            success.add_metric([self.model, name, "length"], len(group))
            prompt.add_metric([self.model, name], float(group["prompt_tokens"].sum()))
            generation.add_metric([self.model, name], float(group["output_tokens"].sum()))
        yield from (success, prompt, generation)
        failures = CounterMetricFamily("testbed:request_failure", "Requests that did not end ok, by status.", labels=["model_name", "status"])
        for status in ("failed", "timeout", "shed", "client_error"):
            failures.add_metric([self.model, status], float((requests["status"] == status).sum()))
        yield failures
        latency = latency_columns(served)
        for name, column, buckets, text in (
            ("vllm:time_to_first_token_seconds", "ttft", TTFT_BUCKETS, "Time to first token."),
            ("vllm:time_per_output_token_seconds", "tpot", TPOT_BUCKETS, "Time per output token after the first."),
            ("vllm:e2e_request_latency_seconds", "e2e", E2E_BUCKETS, "End-to-end request latency."),
        ):
            family = HistogramMetricFamily(name, text, labels=labels)
            for region_name, values in latency[column].groupby(region, sort=True, observed=True):
                family.add_metric([self.model, region_name], *_histogram(values.dropna().to_numpy(), buckets))
            yield family
        yield from self._gauges()
        yield from self._alerts()

    def _gauges(self) -> Iterator[Metric]:
        ts = self.result.timeseries
        if ts.empty:
            return
        during = ts[ts["time"] <= self.result.scenario.duration]
        last = (during if not during.empty else ts).sort_values("time").groupby("replica").tail(1).sort_values("replica")
        names = [r.name for r in Topology.from_spec(self.result.scenario.topology).replicas]
        labels = ["model_name", "region", "replica"]
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests in the running batch.", labels=labels)
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting to be scheduled.", labels=labels)
        busy = GaugeMetricFamily("testbed:replica_utilisation", "Share of the last interval spent in iterations.", labels=labels)
        for row in last.itertuples(index=False):
            key = [self.model, str(row.region), names[int(row.replica)]]
            running.add_metric(key, float(row.running))
            waiting.add_metric(key, float(row.queue_depth))
            busy.add_metric(key, float(row.utilisation))
        yield from (running, waiting, busy)

    def _alerts(self) -> Iterator[Metric]:
        alerts = self.result.alerts
        family = CounterMetricFamily("testbed:alerts", "Alerts raised by the testbed's detectors.", labels=["detector", "severity"])
        if alerts is not None and not alerts.empty:
            for (detector, severity), group in alerts.groupby(["detector", "severity"], sort=True):
                family.add_metric([detector, severity], float(len(group)))
        yield family


def _histogram(values: np.ndarray, buckets: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts (with +Inf) and the sum, as prometheus_client wants them."""
    counts = np.searchsorted(np.sort(values), np.array(buckets), side="right")
    pairs = [(_le(b), float(c)) for b, c in zip(buckets, counts.tolist())] + [("+Inf", float(len(values)))]
    return pairs, float(values.sum())


def _le(bound: float) -> str:
    return repr(float(bound))


def model_name(result: Result) -> str:
    """The topology's model as a label value (a custom model shape has no catalog name)."""
    model = result.scenario.topology.model
    return model if isinstance(model, str) else getattr(model, "name", "custom")


def exposition(result: Result) -> bytes:
    """The run's metrics in the Prometheus text format (metrics.prom)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(result))
    return generate_latest(registry)


def parse_histogram_count(text: str, name: str) -> pd.Series:
    """Sum of ``<name>_count`` samples by region, for checks that read an exposition back."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_count":
                region = sample.labels.get("region", "")
                totals[region] = totals.get(region, 0.0) + sample.value
    return pd.Series(totals, dtype=float)
