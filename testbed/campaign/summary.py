"""From run rows to what a campaign concludes: verdicts per cell, intervals across seeds, and
paired comparisons between cells that differ in one parameter.

Cells share seeds, and a seed fixes the arrivals and the fault schedule (named random streams),
so two cells run on one seed see the same requests and the same faults: common random numbers.
Comparing them seed by seed (a paired test on the differences) removes the seed-to-seed noise
that an unpaired comparison of two means would have to average away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from testbed.campaign.matrix import Cell, differs_in_one, short_key
from testbed.campaign.metrics import metric_names
from testbed.campaign.spec import Campaign


RUN_COLUMNS = ("campaign", "key", "cell", "label", "seed", "status", "passed", "sla_passed", "steady_before",
               "steady_after", "requests", "failed_objectives", "digest", "plane", "wall_s", "error")


def results_frame(rows: Sequence[dict[str, Any]], campaign: Campaign) -> pd.DataFrame:
    """One flat row per run, in matrix order then seed order: parameters and metrics as columns.

    Columns come in a fixed order (run fields, matrix keys, metrics as the scenario names them),
    so rows read back from the journal give the same table as rows fresh from the executor.
    """
    order = {cell.id: i for i, cell in enumerate(campaign.cells)}
    metrics = metric_names(next(iter(campaign.scenarios.values())))
    flat = []
    for row in sorted(rows, key=lambda r: (order.get(r["cell"], len(order)), r["seed"])):
        record = {k: row.get(k) for k in RUN_COLUMNS}
        record["failed_objectives"] = "; ".join(row.get("failed_objectives") or [])
        record.update({k: row["params"].get(k) for k in campaign.spec.matrix})
        values = row.get("metrics") or {}
        record.update({m: values.get(m, math.nan) for m in metrics})
        flat.append(record)
    frame = pd.DataFrame(flat, columns=[*RUN_COLUMNS, *campaign.spec.matrix, *metrics])
    for column in ("passed", "sla_passed", "steady_before", "steady_after"):
        frame[column] = frame[column].astype("boolean")
    frame["requests"] = frame["requests"].astype("Int64")
    return frame


def metric_columns(frame: pd.DataFrame, campaign: Campaign) -> list[str]:
    """The metrics to summarise: the campaign's ``compare`` list, or every metric a run reports."""
    if campaign.spec.compare is not None:
        return list(campaign.spec.compare)
    return metric_names(next(iter(campaign.scenarios.values())))


def interval(values: np.ndarray, confidence: float, method: str) -> tuple[float, float]:
    """Confidence interval of the mean: Student t, or a seeded percentile bootstrap. NaN below two values."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return math.nan, math.nan
    mean = float(values.mean())
    if np.ptp(values) == 0:
        return mean, mean
    if method == "bootstrap":
        res = stats.bootstrap(
            (values,), np.mean, confidence_level=confidence, n_resamples=2000, method="percentile", random_state=np.random.default_rng(0)
        )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean - half, mean + half


def cell_table(frame: pd.DataFrame, campaign: Campaign) -> pd.DataFrame:
    """Per cell: runs, errored, passed, pass rate (Clopper-Pearson interval) and the cell's verdict.

    A cell passes when every seed passed; it fails when any seed failed; otherwise (no failure
    but errored runs) it is ``error``.
    """
    out = []
    confidence = campaign.spec.confidence
    for cell in campaign.cells:
        runs = frame[frame["cell"] == cell.id] if len(frame) else frame
        ok = runs[runs["status"] == "ok"] if len(runs) else runs
        errored = len(runs) - len(ok)
        passed = int(ok["passed"].sum()) if len(ok) else 0
        failed = len(ok) - passed
        low, high = (math.nan, math.nan)
        if len(ok):
            ci = stats.binomtest(passed, len(ok)).proportion_ci(confidence_level=confidence)
            low, high = float(ci.low), float(ci.high)
        verdict = "fail" if failed else "error" if errored or not len(runs) else "pass"
        out.append({
            "cell": cell.id, "label": cell.label, **cell.params, "runs": len(runs), "errored": errored,
            "passed": passed, "failed": failed, "pass_rate": passed / len(ok) if len(ok) else math.nan,
            "pass_ci_low": low, "pass_ci_high": high, "verdict": verdict,
        })
    return pd.DataFrame(out)


def metric_table(frame: pd.DataFrame, campaign: Campaign) -> pd.DataFrame:
    """Per cell and metric: runs, mean, standard deviation and the interval across seeds."""
    out = []
    spec = campaign.spec
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    for cell in campaign.cells:
        runs = ok[ok["cell"] == cell.id] if len(ok) else ok
        for metric in metric_columns(frame, campaign):
            values = runs[metric].to_numpy(dtype=float) if len(runs) else np.array([])
            finite = values[np.isfinite(values)]
            low, high = interval(finite, spec.confidence, spec.ci)
            out.append({
                "cell": cell.id, "label": cell.label, "metric": metric, "n": len(finite),
                "mean": float(finite.mean()) if len(finite) else math.nan,
                "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                "ci_low": low, "ci_high": high,
            })
    return pd.DataFrame(out)


def comparisons(frame: pd.DataFrame, campaign: Campaign) -> pd.DataFrame:
    """Paired comparisons between cells that differ in exactly one parameter, on their common seeds.

    For each metric: the mean of ``b - a`` over seeds where both ran, its interval, and the
    p-value of a paired t-test. When the difference is the same on every seed the t-test is
    undefined; the p-value is then 1 if that difference is zero and 0 otherwise.
    """
    out = []
    spec = campaign.spec
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    metrics = metric_columns(frame, campaign)
    for a, b in _pairs(campaign.cells):
        key = differs_in_one(a, b)
        left = ok[ok["cell"] == a.id].set_index("seed") if len(ok) else None
        right = ok[ok["cell"] == b.id].set_index("seed") if len(ok) else None
        seeds = sorted(set(left.index) & set(right.index)) if left is not None and right is not None else []
        context = ", ".join(f"{short_key(k)}={v}" for k, v in a.params.items() if k != key) or "-"
        for metric in metrics:
            x = left.loc[seeds, metric].to_numpy(dtype=float) if seeds else np.array([])
            y = right.loc[seeds, metric].to_numpy(dtype=float) if seeds else np.array([])
            both = np.isfinite(x) & np.isfinite(y)
            x, y = x[both], y[both]
            diff = y - x
            low, high = interval(diff, spec.confidence, spec.ci)
            out.append({
                "parameter": key, "a": a.params[key], "b": b.params[key], "context": context,
                "cell_a": a.id, "cell_b": b.id, "metric": metric, "n": len(diff),
                "mean_a": float(x.mean()) if len(x) else math.nan, "mean_b": float(y.mean()) if len(y) else math.nan,
                "mean_diff": float(diff.mean()) if len(diff) else math.nan, "ci_low": low, "ci_high": high,
                "p_value": _paired_p(x, y),
            })
    return pd.DataFrame(out)


def _pairs(cells: Sequence[Cell]) -> list[tuple[Cell, Cell]]:
    """Cells differing in one parameter, ``a`` before ``b`` in the matrix's order of values."""
    return [(a, b) for a, b in combinations(cells, 2) if differs_in_one(a, b) is not None]


def _paired_p(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return math.nan
    diff = y - x
    if np.ptp(diff) == 0:
        return 1.0 if diff[0] == 0 else 0.0
    return float(stats.ttest_rel(y, x).pvalue)
