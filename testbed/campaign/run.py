"""One cell x seed: run the scenario, judge the steady-state hypothesis, and return one row.

A row is plain JSON (it goes straight into the journal) and is computed only from the run's
records, so the same task gives the same row in any process, on any executor. A run that raises
becomes an ``errored`` row carrying its traceback: one bad cell must not stop a campaign.
"""

from __future__ import annotations

import math
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from testbed.campaign.spec import SteadyState
from testbed.records.result import Result
from testbed.records.schema import latency_columns
from testbed.report import write_run
from testbed.sla import evaluate
from testbed.spec import Objective, Scenario

@dataclass(frozen=True)
class RunTask:
    """Everything one run needs, picklable so a worker process or a Ray task can take it."""

    campaign: str
    cell: str
    label: str
    params: dict[str, str]
    seed: int
    digest: str
    scenario: Scenario
    plane: str
    steady_state: SteadyState
    records_dir: str | None = None

    @property
    def key(self) -> str:
        return run_key(self.cell, self.seed)


def run_key(cell: str, seed: int) -> str:
    """The journal key of a run: its cell and seed."""
    return f"{cell}/{seed}"


def run_task(task: RunTask) -> dict[str, Any]:
    """Run one task and return its row; never raises for a failing run."""
    started = time.perf_counter()
    try:
        row = {**task_row(task), **judge(_execute(task), task.steady_state), "status": "ok", "error": None}
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded, not raised
        row = errored_row(task, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
    row["wall_s"] = round(time.perf_counter() - started, 3)
    return row


def task_row(task: RunTask) -> dict[str, Any]:
    """The fields of a row that identify the run."""
    return {
        "campaign": task.campaign,
        "key": task.key,
        "cell": task.cell,
        "label": task.label,
        "params": task.params,
        "seed": task.seed,
        "digest": task.digest,
        "plane": task.plane,
    }


def errored_row(task: RunTask, message: str) -> dict[str, Any]:
    """The row of a run that raised, or whose worker died before it could report."""
    verdicts = dict.fromkeys(("passed", "sla_passed", "steady_before", "steady_after", "requests", "wall_s"))
    return {**task_row(task), **verdicts, "metrics": {}, "failed_objectives": [], "status": "errored", "error": message}


def _execute(task: RunTask) -> Result:
    out_dir = Path(task.records_dir) / f"{task.cell}-s{task.seed}" if task.records_dir else None
    if task.plane == "live":
        try:
            from testbed.live.replay import run_live
        except ImportError as exc:
            raise RuntimeError(f"the live plane is not available: testbed.live.replay.run_live cannot be imported ({exc})") from None
        # each live run brings its stack up and tears it down (the rollback); its records go to a fresh directory
        result = run_live(task.scenario, seed=task.seed, out_dir=out_dir or Path(tempfile.mkdtemp(prefix=f"testbed-{task.cell}-")))
    else:
        from testbed.sim import simulate

        result = simulate(task.scenario, seed=task.seed)
    if out_dir is not None and task.plane != "live":
        write_run(result, out_dir)
    return result


def judge(result: Result, hypothesis: SteadyState) -> dict[str, Any]:
    """Verdicts of one run: its SLA, the steady state before the first fault and after recovery."""
    scenario = result.scenario
    objectives = [o.model_copy(update={"window": "all"}) for o in (hypothesis.objectives or scenario.sla)]
    before, after = steady_windows(result, hypothesis)
    steady_before = _holds(objectives, result, before, hypothesis) if hypothesis.before else None
    steady_after = _holds(objectives, result, after, hypothesis) if hypothesis.after else None
    sla_passed = result.passed
    passed = sla_passed and steady_before is not False and steady_after is not False
    return {
        "passed": passed,
        "sla_passed": sla_passed,
        "steady_before": steady_before,
        "steady_after": steady_after,
        "failed_objectives": [v.objective for v in result.sla if not v.passed],
        "requests": int(((result.requests["arrival"] >= scenario.warmup) & (result.requests["arrival"] < scenario.duration)).sum()),
        "metrics": metrics(result),
    }


def steady_windows(result: Result, hypothesis: SteadyState) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Arrivals before the first fault, and after the last repair plus ``settle``.

    Faults that start after ``duration`` (a failure process runs through the drain) do not count.
    The 'after' window does not exist when a fault is never repaired.
    """
    scenario = result.scenario
    start, end = scenario.warmup, scenario.duration
    faults = result.faults
    if faults.empty:
        return (start, end), None
    inside = faults[faults["start"] < end]
    if inside.empty:
        return (start, end), None
    first = float(inside["start"].min())
    last = float(inside["end"].max())
    before = (start, first)
    after = (last + hypothesis.settle, end) if math.isfinite(last) else None
    return before, after


def _holds(objectives: list[Objective], result: Result, window: tuple[float, float] | None, hypothesis: SteadyState) -> bool | None:
    """True/False for a window long enough to judge; None (not judged) otherwise.

    Requests that were in flight while a fault was active are left out: one that arrived a
    second before an outage and died in it says nothing about the steady state before it.
    """
    if window is None or window[1] - window[0] < hypothesis.min_window:
        return None
    requests = result.requests
    if "fault_overlap" in requests:
        requests = requests[~requests["fault_overlap"].to_numpy(dtype=bool)]
    return all(v.passed for v in evaluate(objectives, requests, window))


def metrics(result: Result) -> dict[str, float]:
    """Headline figures over the SLA window, and each objective's observed value."""
    scenario = result.scenario
    requests = result.requests
    arrival = requests["arrival"]
    window = requests[(arrival >= scenario.warmup) & (arrival < scenario.duration)]
    status = window["status"]
    ok = (status == "ok").to_numpy()
    latency = latency_columns(window[ok])
    total = len(window)
    out = {
        "availability": float(ok.mean()) if total else math.nan,
        "error_rate": float(status.isin(("failed", "timeout")).mean()) if total else math.nan,
        "shed_rate": float((status == "shed").mean()) if total else math.nan,
        "ttft_p50": _percentile(latency["ttft"], 50),
        "ttft_p99": _percentile(latency["ttft"], 99),
        "tpot_p99": _percentile(latency["tpot"], 99),
        "e2e_p99": _percentile(latency["e2e"], 99),
    }
    for verdict in result.sla:
        out[f"sla: {verdict.objective}"] = verdict.observed
    return out


def _percentile(values: pd.Series, q: float) -> float:
    values = values.dropna().to_numpy()
    return float(np.percentile(values, q)) if len(values) else math.nan
