"""The tail both planes end with: records in, a complete :class:`~testbed.records.result.Result` out.

Whatever produced the records — simulated time or a real stack — what they mean is computed
here, once: the fault timeline with the time a health check first noticed each fault, which
requests overlapped a fault, the SLA verdicts, when the SLA held again after each fault, and what
the observability stack made of the run. A plane hands over its request rows (on its run clock,
``fault_overlap`` left to this module), fleet series, attempt rows and health-probe changes; it
never computes any of the above itself, so the two planes cannot come to mean different things
by the same records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from testbed.draw import Draw
from testbed.faults import Fault, faults_frame
from testbed.records.attempts import health_frame
from testbed.observe.pipeline import observe
from testbed.records.result import Records, Result
from testbed.sla import evaluate, fault_windows, recovery_times

HealthEvent = tuple[int, float, str]  # (replica, run time, "unhealthy" / "healthy")


def finish_run(
    draw: Draw,
    requests: pd.DataFrame,
    *,
    timeseries: pd.DataFrame,
    attempts: pd.DataFrame,
    health: Sequence[HealthEvent],
    stats: Mapping[str, Any],
) -> Result:
    """The run's :class:`Result`: faults frame, overlaps, verdicts, recoveries, observation.

    ``requests`` gains its ``fault_overlap`` column (appended, or overwritten if present).
    """
    scenario = draw.scenario
    faults = faults_frame(draw.schedule)
    faults["detected_at"] = [detected_at(fault, health) for fault in draw.schedule]
    finish = requests["finish"].fillna(requests["arrival"]).to_numpy()
    requests["fault_overlap"] = overlaps(requests["arrival"].to_numpy(), finish, fault_windows(faults))
    verdicts = evaluate(scenario.sla, requests, (scenario.warmup, scenario.duration), faults)
    if not faults.empty:
        faults["recovered_at"] = recovery_times(scenario.sla, requests, faults)
    records = Records(
        scenario, requests, timeseries, faults, attempts, health_frame(list(health), [r.region for r in draw.topology.replicas])
    )
    observation = observe(records) if scenario.observability.enabled else None
    return Result.of(records, draw.seed, verdicts, dict(stats), observation)


def detected_at(fault: Fault, health: Sequence[HealthEvent]) -> float:
    """When a health check first marked one of the fault's replicas unhealthy while it was active."""
    members = set(fault.replicas)
    times = [t for r, t, change in health if change == "unhealthy" and r in members and fault.start <= t <= fault.end]
    return min(times) if times else math.nan


def overlaps(start: np.ndarray, end: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
    """Whether each [start, end] interval overlaps any of the disjoint, sorted ``windows``."""
    if not windows:
        return np.zeros(len(start), dtype=bool)
    starts = np.array([w[0] for w in windows])
    ends = np.array([w[1] for w in windows])
    # The last window starting at or before each request's end must not have ended before its start.
    i = np.searchsorted(starts, end, side="right") - 1
    return (i >= 0) & (ends[np.clip(i, 0, None)] > start)
