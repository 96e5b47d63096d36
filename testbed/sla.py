"""SLA verdicts: each objective checked against the request records of a window.

Definitions (the README copies them):

* Only requests that **arrived** in ``[window[0], window[1])`` count, restricted to the
  objective's class when it names one, and to the objective's ``window``: ``all`` (default),
  ``during_faults`` (arrived while any fault was active) or ``after_faults`` (arrived after the
  last fault was repaired).
* **ttft, tpot, e2e** — the objective's percentile (linear interpolation) over requests that
  ended ``ok``. TPOT is time per output token after the first. No qualifying request: the
  observed value is NaN and the verdict fails (an SLA cannot be met by serving nothing).
* **availability** — share of requests that ended ``ok``, out of those that did not end
  ``client_error`` (a request no replica could serve, such as a prompt beyond the context, is
  the client's error: it counts neither for nor against the serving stack).
* **error_rate** — share that ended ``failed`` or ``timeout``. Shedding is a deliberate refusal:
  it counts against availability but is not an error.
* **throughput** — ``ok`` requests per second of window; **token_throughput** — their output
  tokens per second.
* **turn_latency** — agent turns: the percentile of a turn's latency (its first call's arrival
  to its last call's answer) over turns whose calls all ended ``ok``; **turn_availability** —
  the share of turns whose calls all ended ``ok`` (a skipped optional stage is no failure).
  A turn counts in a window when its calls arrived in it.
* **goodput** — share of all requests that ended ``ok`` *and* met both the objective's TTFT and
  TPOT limits: DistServe's SLO attainment.

Each verdict carries its margin in the metric's unit: ``limit - observed`` for a maximum,
``observed - limit`` for a minimum, so a negative margin is a violation of that size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from testbed.records.schema import latency_columns, turn_table
from testbed.spec import LATENCY_METRICS, TURN_METRICS, Objective

UNITS = {
    "ttft": "s",
    "tpot": "s",
    "e2e": "s",
    "availability": "share",
    "error_rate": "share",
    "goodput": "share",
    "throughput": "req/s",
    "token_throughput": "tok/s",
    "turn_latency": "s",
    "turn_availability": "share",
    "degraded_share": "share",
}


@dataclass(frozen=True)
class Verdict:
    """One objective's outcome."""

    objective: str
    metric: str
    request_class: str | None
    bound: str
    limit: float
    observed: float
    passed: bool
    margin: float
    unit: str
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    objectives: Sequence[Objective],
    requests: pd.DataFrame,
    window: tuple[float, float],
    faults: pd.DataFrame | None = None,
) -> list[Verdict]:
    """A verdict for each objective over the requests that arrived within ``window``."""
    start, end = window
    requests = judged_columns(requests)
    in_window = requests[(requests["arrival"] >= start) & (requests["arrival"] < end)]
    windows = fault_windows(faults)
    verdicts = []
    for objective in objectives:
        selected, span = _restrict(in_window, objective.window, windows, (start, end))
        verdicts.append(_verdict(objective, selected, span))
    return verdicts


# The columns a verdict reads; the rest of the records need not be copied with every selection.
JUDGED = ("session_id", "turn", "stage", "request_class", "arrival", "first_token", "finish", "output_tokens", "status", "degraded")


def judged_columns(requests: pd.DataFrame) -> pd.DataFrame:
    """``requests`` with only the columns a verdict reads (those it has)."""
    return requests[[c for c in JUDGED if c in requests.columns]]


def fault_windows(faults: pd.DataFrame | None) -> list[tuple[float, float]]:
    """The union of fault intervals as sorted, disjoint (start, end) pairs."""
    if faults is None or faults.empty:
        return []
    merged: list[tuple[float, float]] = []
    for start, end in sorted(zip(faults["start"].tolist(), faults["end"].tolist())):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _restrict(
    requests: pd.DataFrame, which: str, windows: list[tuple[float, float]], span: tuple[float, float]
) -> tuple[pd.DataFrame, float]:
    """Requests (and window length) for ``all``, ``during_faults`` or ``after_faults``."""
    start, end = span
    if which == "all":
        return requests, end - start
    arrival = requests["arrival"].to_numpy()
    if which == "after_faults":
        after = max((e for _, e in windows), default=start)
        return requests[arrival >= after], max(0.0, end - max(after, start))
    during = np.zeros(len(arrival), dtype=bool)
    length = 0.0
    for w_start, w_end in windows:
        during |= (arrival >= w_start) & (arrival < w_end)
        length += max(0.0, min(w_end, end) - max(w_start, start))
    return requests[during], length


def recovery_times(
    objectives: Sequence[Objective], requests: pd.DataFrame, faults: pd.DataFrame, window: float = 30.0
) -> list[float]:
    """For each fault, when the SLA held again: the end of the first ``window`` of arrivals,
    sliding by half a window from the fault's start, in which every latency and share objective
    passes (throughputs depend on the window's length, so they are left out). The fault's own
    start when the SLA never broke; NaN when it had not recovered by the end of the records.
    """
    checked = [o for o in objectives if o.metric not in ("throughput", "token_throughput")]
    requests = judged_columns(requests)
    last = float(requests["arrival"].max()) if len(requests) else 0.0
    arrival = requests["arrival"].to_numpy()
    recovered = []
    for fault_start in faults["start"].tolist():
        t, found = fault_start, math.nan
        while t + window <= last + window / 2:
            selected = requests[(arrival >= t) & (arrival < t + window)]
            if all(_verdict(o, selected, window).passed for o in checked):
                found = fault_start if t == fault_start else t + window
                break
            t += window / 2
        recovered.append(found)
    return recovered


def _verdict(objective: Objective, requests: pd.DataFrame, span: float) -> Verdict:
    if objective.request_class is not None:
        requests = requests[requests["request_class"] == objective.request_class]
    if objective.stage is not None:
        requests = requests[requests["stage"] == objective.stage]
    observed, samples = _observe(objective, requests, span)
    if objective.max is not None:
        bound, limit = "max", objective.max
        margin = limit - observed
    else:
        assert objective.min is not None  # the spec requires exactly one bound
        bound, limit = "min", objective.min
        margin = observed - limit
    passed = not math.isnan(observed) and margin >= 0
    return Verdict(
        objective=objective.label,
        metric=objective.metric,
        request_class=objective.request_class,
        bound=bound,
        limit=float(limit),
        observed=float(observed),
        passed=passed,
        margin=float(margin),
        unit=UNITS[objective.metric],
        samples=samples,
    )


def _observe(objective: Objective, requests: pd.DataFrame, span: float) -> tuple[float, int]:
    """The metric's observed value and how many requests it was computed on."""
    metric, total = objective.metric, len(requests)
    if metric in TURN_METRICS:
        return _observe_turns(objective, turn_table(requests))
    status = requests["status"]
    ok = (status == "ok").to_numpy()
    if metric in LATENCY_METRICS:
        values = latency_columns(requests[ok])[metric].dropna()
        if values.empty:
            return math.nan, 0
        assert objective.percentile is not None
        return float(np.percentile(values.to_numpy(), objective.percentile)), len(values)
    if metric == "throughput":
        return int(ok.sum()) / span, total
    if metric == "token_throughput":
        return float(requests["output_tokens"].to_numpy()[ok].sum()) / span, total
    if total == 0:
        return math.nan, 0
    if metric == "availability":
        served = (status != "client_error").to_numpy()
        return (float(ok.sum() / served.sum()) if served.any() else math.nan), int(served.sum())
    if metric == "error_rate":
        return float(status.isin(("failed", "timeout")).mean()), total
    if metric == "degraded_share":  # of the answers given, how many a degradation step changed
        answered = int(ok.sum())
        return (float(requests["degraded"].to_numpy()[ok].mean()) if answered else math.nan), answered
    assert metric == "goodput" and objective.ttft is not None and objective.tpot is not None
    latency = latency_columns(requests)
    within = (latency["ttft"] <= objective.ttft) & ~(latency["tpot"] > objective.tpot)  # NaN tpot: one token
    return float((ok & within.to_numpy()).mean()), total


def _observe_turns(objective: Objective, turns: pd.DataFrame) -> tuple[float, int]:
    """turn_latency: the percentile over turns whose calls all succeeded; turn_availability: their share."""
    if turns.empty:
        return math.nan, 0
    if objective.metric == "turn_availability":
        return float(turns["ok"].mean()), len(turns)
    assert objective.percentile is not None
    latency = turns.loc[turns["ok"], "latency"].to_numpy()
    if len(latency) == 0:
        return math.nan, 0
    return float(np.percentile(latency, objective.percentile)), len(latency)


def verdicts_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """Verdicts as a table, e.g. for campaigns and the explorer."""
    columns = list(Verdict.__dataclass_fields__)
    return pd.DataFrame([v.as_dict() for v in verdicts], columns=columns)
