"""SLA verdicts: each objective checked against the request records of a window.

Definitions (the README copies them):

* Only requests that **arrived** in ``[window[0], window[1])`` count, restricted to the
  objective's class when it names one.
* **ttft, tpot, e2e** — the objective's percentile (linear interpolation) over requests that
  ended ``ok``. TPOT is time per output token after the first. No qualifying request: the
  observed value is NaN and the verdict fails (an SLA cannot be met by serving nothing).
* **availability** — share of requests that ended ``ok``.
* **error_rate** — share that ended ``failed`` or ``timeout``. Shedding is a deliberate refusal:
  it counts against availability but is not an error.
* **throughput** — ``ok`` requests per second of window; **token_throughput** — their output
  tokens per second.
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

from testbed.observe.records import latency_columns
from testbed.spec import LATENCY_METRICS, Objective

UNITS = {
    "ttft": "s",
    "tpot": "s",
    "e2e": "s",
    "availability": "share",
    "error_rate": "share",
    "goodput": "share",
    "throughput": "req/s",
    "token_throughput": "tok/s",
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


def evaluate(objectives: Sequence[Objective], requests: pd.DataFrame, window: tuple[float, float]) -> list[Verdict]:
    """A verdict for each objective over the requests that arrived within ``window``."""
    start, end = window
    in_window = requests[(requests["arrival"] >= start) & (requests["arrival"] < end)]
    return [_verdict(objective, in_window, end - start) for objective in objectives]


def _verdict(objective: Objective, requests: pd.DataFrame, span: float) -> Verdict:
    if objective.request_class is not None:
        requests = requests[requests["request_class"] == objective.request_class]
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
        return float(ok.mean()), total
    if metric == "error_rate":
        return float(status.isin(("failed", "timeout")).mean()), total
    assert metric == "goodput" and objective.ttft is not None and objective.tpot is not None
    latency = latency_columns(requests)
    within = (latency["ttft"] <= objective.ttft) & ~(latency["tpot"] > objective.tpot)  # NaN tpot: one token
    return float((ok & within.to_numpy()).mean()), total


def verdicts_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """Verdicts as a table, e.g. for campaigns and the explorer."""
    columns = list(Verdict.__dataclass_fields__)
    return pd.DataFrame([v.as_dict() for v in verdicts], columns=columns)
