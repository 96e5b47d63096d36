"""Detectors: what an on-call engineer's alerting would have said during the run.

Three families, each reading only records and the windowed metrics:

* **Burn rate** (Google SRE workbook, "multiwindow, multi-burn-rate alerts"): for every SLA
  objective with an error budget, the share of bad events in a long and a short window, divided
  by the budget, must both exceed the burn rate (14.4 over 1 h and 5 min pages; 6 over 6 h and
  30 min files a ticket). The short window makes the alert stop soon after the burn stops.
* **Change point**: a one-sided CUSUM on latency percentiles and error rates of the fleet,
  regions, client regions, nodes and agent stages. The baseline is an EWMA mean and variance
  that learns only from windows that look normal, and the deviation is floored (a share of the
  baseline for latencies, an absolute share for error rates) so that a series that is flat by
  construction cannot alarm on noise.
* **Health**: the gateway's probes turning a replica unhealthy, and replicas that hold work but
  finish nothing (a hang a shallow probe cannot see). Replicas that go down together are
  reported once, as the largest failure domain they cover entirely.

Every alert fires on a rising edge — one alert per episode — and has a time, a target and a
severity. Detectors run only over windows where clients were sending (after the warm-up and
before the arrivals stop), because the drain at the end of a run is no signal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.observe.metrics import BAD_DIRECTION, window_end
from testbed.records.schema import latency_columns, string_values
from testbed.spec import ChangePointSpec, DetectorsSpec, Objective
from testbed.topology import Topology

CHANGE_SCOPES = ("fleet", "region", "client_region", "node", "stage")
CHANGE_METRICS = ("error_rate", "attempt_failure_rate", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p99")
ERROR_METRICS = ("error_rate", "attempt_failure_rate")


@dataclass(frozen=True)
class Alert:
    time: float
    detector: str
    severity: str
    target: str
    signal: str  # "scope|target|metric" of the series that fired, or "" for the health signals
    value: float
    threshold: float


@dataclass(frozen=True)
class Span:
    """The windows detectors look at: ends in (start, stop], spaced ``window`` apart."""

    window: float
    start: float
    stop: float

    def ends(self) -> np.ndarray:
        first = math.floor(self.start / self.window) + 1
        last = math.floor(self.stop / self.window + 1e-9)
        return np.arange(first, last + 1, dtype=float) * self.window


def detect(
    spec: DetectorsSpec,
    objectives: Iterable[Objective],
    requests: pd.DataFrame,
    metrics: pd.DataFrame,
    health: pd.DataFrame,
    topology: Topology,
    span: Span,
) -> list[Alert]:
    """Every detector's alerts, sorted by (time, detector, target): deterministic for a seed."""
    alerts: list[Alert] = []
    if spec.burn_rate.enabled:
        alerts += burn_rate_alerts(spec, list(objectives), requests, span)
    if spec.change_point.enabled:
        alerts += change_point_alerts(spec.change_point, metrics, span)
    if spec.health.enabled:
        alerts += health_alerts(health, topology, span)
        alerts += silent_replica_alerts(metrics, topology, span, spec.health.min_expected)
    return sorted(alerts, key=lambda a: (a.time, a.detector, a.target, a.signal))


# --------------------------------------------------------------------------- burn rate


def _bad_events(objective: Objective, requests: pd.DataFrame, status: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(which requests are the objective's events, which of those were bad, error budget), or
    None if it has none; masks over all of ``requests`` (``status`` is its status column as text)."""
    events = np.ones(len(requests), dtype=bool)
    if objective.request_class is not None:
        events &= (requests["request_class"] == objective.request_class).to_numpy()
    if objective.stage is not None:
        events &= (requests["stage"] == objective.stage).to_numpy()
    if objective.metric == "availability":
        return events, status != "ok", 1.0 - float(objective.min)  # type: ignore[arg-type]
    if objective.metric == "error_rate" and objective.max is not None:
        return events, np.isin(status, ("failed", "timeout")), float(objective.max)
    if objective.metric in ("ttft", "tpot", "e2e") and objective.percentile is not None:
        latency = latency_columns(requests)[objective.metric].to_numpy()
        return events & (status == "ok"), latency > float(objective.max), 1.0 - objective.percentile / 100  # type: ignore[arg-type]
    return None


def burn_rate_alerts(spec: DetectorsSpec, objectives: list[Objective], requests: pd.DataFrame, span: Span) -> list[Alert]:
    """Multi-window multi-burn-rate alerts, one per objective and window pair per episode."""
    ends = span.ends()
    alerts = []
    seen: set[str] = set()
    status = string_values(requests["status"])
    finished = requests["finish"].to_numpy()
    # Requests in order of their end, once: an objective's events, taken in this order, are in
    # the order a stable sort of their own end times would give.
    by_finish = np.argsort(finished, kind="stable")
    for objective in objectives:
        events = _bad_events(objective, requests, status)
        if events is None or objective.label in seen:
            continue
        seen.add(objective.label)
        member, bad, budget = events
        if budget <= 0:
            continue
        order = by_finish[member[by_finish]]
        finish, bad_cum = finished[order], np.concatenate([[0], np.cumsum(bad[order])])

        def counts(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            a = np.searchsorted(finish, lo, side="right")
            b = np.searchsorted(finish, hi, side="right")
            return (b - a).astype(float), (bad_cum[b] - bad_cum[a]).astype(float)

        for pair in spec.burn_rate.windows:
            total_long, bad_long = counts(ends - pair.long, ends)
            total_short, bad_short = counts(ends - pair.short, ends)
            with np.errstate(invalid="ignore", divide="ignore"):
                burn_long = bad_long / total_long / budget
                burn_short = bad_short / total_short / budget
            firing = (burn_long >= pair.burn) & (burn_short >= pair.burn) & (total_short >= spec.burn_rate.min_requests)
            for i in _rising_edges(firing):
                alerts.append(
                    Alert(float(ends[i]), f"burn_rate_{_short(pair.long)}_{_short(pair.short)}", pair.severity,
                          objective.label, "", float(burn_short[i]), pair.burn)
                )
    return alerts


def _short(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _rising_edges(firing: np.ndarray) -> list[int]:
    previous = np.concatenate([[False], firing[:-1]])
    return np.flatnonzero(firing & ~previous).tolist()


# --------------------------------------------------------------------------- change point


def change_point_alerts(spec: ChangePointSpec, metrics: pd.DataFrame, span: Span) -> list[Alert]:
    """One-sided CUSUM per series; windows with too few requests are not observations.

    Series are cut from the table with integer codes and the request counts looked up in a
    (series x window) array, because pandas lookups per series cost more than the CUSUMs.
    """
    in_span = metrics[(metrics["time"] > span.start) & (metrics["time"] <= span.stop) & metrics["scope"].isin(CHANGE_SCOPES)]
    series_codes, series_names = pd.factorize(in_span["scope"] + "|" + in_span["target"].astype(str))
    metric_codes, metric_names = pd.factorize(in_span["metric"])
    time_codes, times = pd.factorize(in_span["time"])
    values = in_span["value"].to_numpy(dtype=float)
    requests = np.zeros((len(series_names), len(times)))
    rate = metric_codes == (metric_names.get_loc("request_rate") if "request_rate" in metric_names else -2)
    requests[series_codes[rate], time_codes[rate]] = values[rate] * span.window
    wanted = np.isin(metric_names.to_numpy(dtype=object), CHANGE_METRICS)[metric_codes]
    series_rank, metric_rank = _ranks(series_names), _ranks(metric_names)
    rows = np.flatnonzero(wanted)
    rows = rows[np.lexsort((rows, metric_rank[metric_codes[rows]], series_rank[series_codes[rows]]))]
    key = series_codes[rows] * len(metric_names) + metric_codes[rows]
    starts = np.flatnonzero(np.diff(key, prepend=-1)).tolist()
    times = times.to_numpy(dtype=float)
    alerts = []
    for lo, hi in zip(starts, starts[1:] + [len(rows)]):
        series, name = series_names[series_codes[rows[lo]]], metric_names[metric_codes[rows[lo]]]
        selected = rows[lo:hi]
        if name != "attempt_failure_rate":  # attempts have their own denominator, checked below
            # A p99 over a handful of requests is their maximum: it needs more of them than a median.
            needed = spec.min_requests * (5 if name.endswith("_p99") else 1)
            selected = selected[requests[series_codes[selected], time_codes[selected]] >= needed]
        signal = f"{series}|{name}"
        target = series.split("|", 1)[1]
        for time, value, level in _cusum(values[selected], times[time_codes[selected]], spec, name in ERROR_METRICS,
                                         BAD_DIRECTION.get(name, 1)):
            alerts.append(Alert(time, "cusum", "warning", target, signal, value, level))
    return _one_per_target(alerts)


def _ranks(names: pd.Index) -> np.ndarray:
    """Each name's position in sorted order."""
    ranks = np.empty(len(names), dtype=np.int64)
    ranks[np.argsort(names.to_numpy(dtype=object), kind="stable")] = np.arange(len(names))
    return ranks


def _one_per_target(alerts: list[Alert]) -> list[Alert]:
    """Series of one target that alarm in the same window are one alert: the largest relative move."""
    best: dict[tuple[float, str, str], Alert] = {}
    for alert in alerts:
        key = (alert.time, alert.signal.split("|")[0], alert.target)
        ratio = alert.value / max(abs(alert.threshold), 1e-9)
        held = best.get(key)
        if held is None or ratio > held.value / max(abs(held.threshold), 1e-9):
            best[key] = alert
    return list(best.values())


def _cusum(values: np.ndarray, times: np.ndarray, spec: ChangePointSpec, is_error: bool, direction: int):
    """Yield (time, value, baseline) at each alarm of an upward (bad-direction) CUSUM."""
    history: list[float] = []
    mean = var = 0.0
    s = 0.0
    firing = False
    for time, value in zip(times.tolist(), values.tolist()):
        if len(history) < spec.min_history:
            history.append(value)
            mean, var = float(np.mean(history)), float(np.var(history))
            continue
        floor = spec.error_floor if is_error else spec.relative_floor * abs(mean)
        sigma = max(math.sqrt(var), floor, 1e-12)
        z = direction * (value - mean) / sigma
        s = max(0.0, s + z - spec.drift)
        if s > spec.threshold and not firing:
            firing = True
            yield time, value, mean
        if s == 0.0:
            firing = False
            delta = value - mean
            mean += spec.alpha * delta
            var = (1 - spec.alpha) * (var + spec.alpha * delta * delta)


# --------------------------------------------------------------------------- health


def _covering(replicas: set[int], down: set[int], topology: Topology) -> list[str]:
    """The largest failure domains wholly within ``down`` that contain ``replicas`` (else the replica)."""
    targets = []
    for index in sorted(replicas):
        placement = topology.replicas[index]
        best = placement.name
        for domain in (placement.node, placement.rack, placement.zone, placement.region, placement.provider):
            if set(topology.domain_replicas(domain)) <= down:
                best = domain
            else:
                break
        targets.append(best)
    return sorted(set(targets))


def health_alerts(health: pd.DataFrame, topology: Topology, span: Span) -> list[Alert]:
    """Replicas the gateway's probes marked unhealthy, grouped per window into failure domains."""
    if health is None or health.empty:
        return []
    down: set[int] = set()
    alerts = []
    active: set[str] = set()
    frame = health.assign(window=window_end(health["time"].to_numpy(), span.window))
    for end, rows in frame.groupby("window", sort=True):
        new: dict[int, float] = {}  # replica -> when the gateway's belief flipped
        for replica, change, time in zip(rows["replica"].tolist(), rows["change"].tolist(), rows["time"].tolist()):
            if change == "unhealthy":
                down.add(replica)
                new[replica] = time
            else:
                down.discard(replica)
                new.pop(replica, None)
        active = {t for t in active if set(_replicas_of(t, topology)) <= down}
        if span.start < end <= span.stop:
            for target in _covering(set(new), down, topology):
                if target not in active:
                    # The probe result is known when it flips, not at the end of the window.
                    at = max(t for r, t in new.items() if r in set(_replicas_of(target, topology)))
                    alerts.append(Alert(float(at), "health_check", "ticket", target, "", float(len(new)), 0.0))
                    active.add(target)
    return alerts


def _replicas_of(target: str, topology: Topology) -> list[int]:
    if target in topology.graph:
        return topology.domain_replicas(target)
    return [r.index for r in topology.replicas if r.name == target]


def silent_replica_alerts(metrics: pd.DataFrame, topology: Topology, span: Span, min_expected: float) -> list[Alert]:
    """Replicas that usually finish ``min_expected`` requests a window and finished none."""
    completed = metrics[(metrics["scope"] == "replica") & (metrics["metric"] == "completed")]
    if completed.empty:
        return []
    table = completed.pivot(index="time", columns="target", values="value").sort_index()
    table.columns = table.columns.astype(int)
    table = table.reindex(columns=sorted(table.columns))
    usual = table.ewm(alpha=0.3).mean().shift(1)  # what each replica finished before this window
    silent = (table == 0) & (usual >= min_expected)
    usual_when_silent = usual.where(~silent).ffill()  # freeze the expectation during a silence
    silent = (table == 0) & (usual_when_silent >= min_expected)
    alerts = []
    down: set[int] = set()
    for end, row in silent.iterrows():
        now = set(row.index[row.to_numpy()].tolist())
        new = now - down
        down = now
        if new and span.start < end <= span.stop:
            for target in _covering(new, down, topology):
                alerts.append(Alert(float(end), "silent_replica", "page", target, "", float(len(new)), min_expected))
    return alerts


def alerts_frame(alerts: list[Alert]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": np.array([a.time for a in alerts], dtype=float),
            "detector": [a.detector for a in alerts],
            "severity": [a.severity for a in alerts],
            "target": [a.target for a in alerts],
            "signal": [a.signal for a in alerts],
            "value": np.array([a.value for a in alerts], dtype=float),
            "threshold": np.array([a.threshold for a in alerts], dtype=float),
        }
    )
