"""The scorecard: alerts judged against the faults that were really injected.

An alert belongs to a fault when it fires while the fault is active or within ``grace`` after
it is repaired (recovery has symptoms too). Per fault: was it detected, by which detector first,
how long after it started, and where the first alert's root-cause ranking put the faulty
component. Over the run: precision (alerts that belong to some fault), recall (faults detected),
false alerts per hour of fault-free time, and root-cause top-1 / top-3 accuracy over detected
faults. Observability objectives of the scenario become verdicts in the SLA table.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from testbed.observe.rootcause import matches
from testbed.sla import Verdict
from testbed.spec import ObservabilityObjective

SCORECARD_COLUMNS = (
    "fault_id", "kind", "target", "start", "end", "detected", "detector", "detected_at", "time_to_detect", "root_cause_rank",
)


@dataclass(frozen=True)
class Summary:
    """Run-wide detection figures (NaN where undefined: no alerts, no faults)."""

    faults: int
    detected: int
    alerts: int
    false_alerts: int
    precision: float
    recall: float
    false_alerts_per_hour: float
    fault_free_hours: float
    top1: float
    top3: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# An alert stands for the evidence its detector had at its time: a health probe's answer at that
# instant, every other detector's over the window that ends then. A windowed alert stamped at the
# very instant a fault starts saw none of the fault (its window closed as the fault began): it
# belongs to the fault only strictly after the start, or the scorecard would report a chance
# pre-fault alert as a detection in 0 s. A probe at that instant did see the fault.
INSTANT_DETECTORS = frozenset({"health_check"})


def alert_faults(alerts: pd.DataFrame, faults: pd.DataFrame, grace: float) -> list[list[int]]:
    """For each alert, the fault_ids it belongs to (active, or repaired at most ``grace`` before)."""
    if faults.empty:
        return [[] for _ in range(len(alerts))]
    starts, ends, ids = faults["start"].to_numpy(), faults["end"].to_numpy() + grace, faults["fault_id"].to_numpy()
    owners = []
    for t, detector in zip(alerts["time"].tolist(), alerts["detector"].tolist()):
        begun = starts <= t if detector in INSTANT_DETECTORS else starts < t
        owners.append(ids[begun & (t <= ends)].tolist())
    return owners


def score(alerts: pd.DataFrame, faults: pd.DataFrame, grace: float, span: tuple[float, float]) -> tuple[pd.DataFrame, Summary]:
    """The per-fault scorecard and the summary; ``alerts`` needs time, detector and root_causes.

    ``span`` is the stretch the detectors watched; faults starting after it are left out.
    """
    # A fault that starts after clients stop sending (in the drain) has no traffic to show it.
    faults = faults[faults["start"] < span[1]]
    owners = alert_faults(alerts, faults, grace)
    rows = []
    for fault in faults.to_dict("records"):
        mine = [i for i, owned in enumerate(owners) if fault["fault_id"] in owned]
        row = {k: fault[k] for k in ("fault_id", "kind", "target", "start", "end")}
        if mine:
            first = alerts.iloc[mine[0]]
            row |= {
                "detected": True,
                "detector": first["detector"],
                "detected_at": float(first["time"]),
                "time_to_detect": float(first["time"] - fault["start"]),
                "root_cause_rank": _rank(json.loads(first["root_causes"]), fault["target"]),
            }
        else:
            row |= {"detected": False, "detector": "", "detected_at": math.nan, "time_to_detect": math.nan, "root_cause_rank": math.nan}
        rows.append(row)
    card = pd.DataFrame(rows, columns=list(SCORECARD_COLUMNS))
    card["detected"] = card["detected"].astype(bool)
    card["root_cause_rank"] = card["root_cause_rank"].astype(float)
    false_alerts = sum(1 for owned in owners if not owned)
    hours = _fault_free_seconds(faults, grace, span) / 3600
    detected = card[card["detected"]]
    ranks = detected["root_cause_rank"]
    summary = Summary(
        faults=len(card),
        detected=len(detected),
        alerts=len(alerts),
        false_alerts=false_alerts,
        precision=(len(alerts) - false_alerts) / len(alerts) if len(alerts) else math.nan,
        recall=len(detected) / len(card) if len(card) else math.nan,
        false_alerts_per_hour=false_alerts / hours if hours > 0 else (0.0 if false_alerts == 0 else math.nan),
        fault_free_hours=hours,
        top1=float((ranks <= 1).mean()) if len(ranks) else math.nan,
        top3=float((ranks <= 3).mean()) if len(ranks) else math.nan,
    )
    return card, summary


def _rank(ranking: list[str], target: str) -> float:
    """1-based position of the first component naming the fault's target (NaN if none does)."""
    endpoints = tuple(target.split("<->")) if "<->" in target else ()
    for position, component in enumerate(ranking, start=1):
        if matches(component, target, endpoints):
            return float(position)
    return math.nan


def _fault_free_seconds(faults: pd.DataFrame, grace: float, span: tuple[float, float]) -> float:
    start, stop = span
    covered = 0.0
    cursor = start
    for s, e in sorted(zip(faults["start"].tolist(), (faults["end"] + grace).tolist())) if not faults.empty else []:
        s, e = max(s, cursor), min(e, stop)
        if e > s:
            covered += e - s
            cursor = e
    return max(0.0, stop - start - covered)


def objective_verdicts(objectives: list[ObservabilityObjective], card: pd.DataFrame, summary: Summary) -> list[Verdict]:
    """One verdict per observability objective, in the units people state them in."""
    verdicts = []
    for objective in objectives:
        if objective.detect is not None:
            kinds = objective.detect.kinds
            mine = card[card["kind"].isin(kinds)]
            worst = math.inf if (~mine["detected"]).any() else float(mine["time_to_detect"].max()) if len(mine) else math.nan
            label = f"detect {'/'.join(kinds)}"
            verdicts.append(_verdict(label, "time_to_detect", "max", objective.detect.within, worst, "s", len(mine)))
        elif objective.false_alerts_per_day is not None:
            per_day = summary.false_alerts_per_hour * 24
            verdicts.append(_verdict("false alerts per day", "false_alerts_per_day", "max", objective.false_alerts_per_day, per_day, "/day", summary.alerts))
        else:
            for name, attribute in (("root_cause_top1", "top1"), ("root_cause_top3", "top3"), ("precision", "precision"), ("recall", "recall")):
                limit = getattr(objective, name)
                if limit is not None:
                    n = summary.detected if attribute.startswith("top") else summary.alerts if name == "precision" else summary.faults
                    verdicts.append(_verdict(name.replace("_", " "), name, "min", limit, getattr(summary, attribute), "share", n))
    return verdicts


def _verdict(label: str, metric: str, bound: str, limit: float, observed: float, unit: str, samples: int) -> Verdict:
    """No observation (NaN) fails, as an SLA cannot be met by observing nothing; a miss is +inf."""
    if isinstance(observed, float) and math.isnan(observed):
        return Verdict(label, metric, None, bound, float(limit), observed, False, math.nan, unit, int(samples))
    margin = limit - observed if bound == "max" else observed - limit
    return Verdict(label, metric, None, bound, float(limit), float(observed), bool(margin >= 0), float(margin), unit, int(samples))


def as_jsonable(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else (v.item() if isinstance(v, np.generic) else v)) for k, v in values.items()}
