"""The numpy fast paths of observation agree bit for bit with the plain pandas computation.

Observation runs after every simulation and explorer click, so the metrics table and the
root-cause anomalies are computed with integer codes and numpy instead of a pandas groupby per
scope and a frame slice per alert. Alerts, rankings and scorecards must not change for it: here
the fast paths are held to straightforward pandas references, written as the definitions read,
on real simulated runs (one with fallbacks and retries, one with agent stages).
"""

from __future__ import annotations

import os
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from testbed.observe.metrics import (  # noqa: E402
    BAD_DIRECTION,
    LATENCY_METRICS,
    Placement,
    window_end,
    window_metrics,
)
from testbed.observe.pipeline import observe  # noqa: E402
from testbed.records.schema import latency_columns  # noqa: E402
from testbed.observe.rootcause import (  # noqa: E402
    ABSOLUTE_FLOOR,
    CLIENT_EVIDENCE,
    COMPONENT_SCOPES,
    EVIDENCE,
    MAX_ANOMALY,
    SIGNAL_METRICS,
)
from testbed.sim import simulate  # noqa: E402
from testbed.spec import Scenario  # noqa: E402
from testbed.topology import Topology  # noqa: E402

FAULTS = Path(__file__).resolve().parents[1] / "faults"
SCENARIOS = ("provider-outage-fallback.yaml", "agent-adaptation-agent.yaml")


@cache
def _run(name: str):
    return simulate(Scenario.from_yaml(FAULTS / name))


def _grouped(base: pd.DataFrame, keys: dict[str, np.ndarray], reduce) -> pd.DataFrame:
    """One pandas groupby per scope over (window end, target), reduced to long rows."""
    parts = []
    for scope, key in keys.items():
        frame = base.assign(target=key)
        frame = frame[frame["target"] != ""]
        wide = reduce(frame, scope)
        long = wide.stack(future_stack=True).dropna().reset_index()
        long.columns = ["time", "target", "metric", "value"]
        parts.append(long.assign(scope=scope))
    return pd.concat(parts, ignore_index=True)


def _reference_metrics(result, placement: Placement, window: float) -> pd.DataFrame:
    requests, attempts, ts = result.requests, result.attempts, result.timeseries
    ended = requests[~requests["finish"].isna()]
    status = ended["status"].astype(str).to_numpy()
    lat = latency_columns(ended)
    node, region = np.array(placement.node + [""], dtype=object), np.array(placement.region + [""], dtype=object)
    base = pd.DataFrame({"time": window_end(ended["finish"].to_numpy(), window), "error": np.isin(status, ("failed", "timeout")),
                         "shed": status == "shed", "ok": status == "ok", "retried": ended["retries"].to_numpy() > 0,
                         "failed_over": ended["failed_over"].to_numpy(), **{c: lat[c].to_numpy() for c in ("ttft", "tpot", "e2e")}})
    keys = {"fleet": np.full(len(ended), "fleet", dtype=object), "client_region": ended["client_region"].astype(str).to_numpy(),
            "region": region[ended["replica"].to_numpy()], "node": node[ended["replica"].to_numpy()]}
    if (ended["stage"].astype(str) != "").any():
        keys["stage"] = ended["stage"].astype(str).to_numpy()

    def summarise(frame: pd.DataFrame, scope: str) -> pd.DataFrame:
        groups = frame.groupby(["time", "target"], sort=True)
        n = groups["ok"].size()
        metrics = {"request_rate": n / window, "throughput": groups["ok"].sum() / window}
        if scope not in ("region", "node"):
            metrics |= {"error_rate": groups["error"].sum() / n, "shed_rate": groups["shed"].sum() / n,
                        "retry_share": groups["retried"].sum() / n, "failed_over_share": groups["failed_over"].sum() / n,
                        "requests": n.astype(float)}
        ok = frame[frame["ok"]].groupby(["time", "target"], sort=True)
        for name, percentiles in LATENCY_METRICS.items():
            for p in percentiles:
                metrics[f"{name}_p{p}"] = ok[name].quantile(p / 100)
        return pd.DataFrame(metrics)

    parts = [_grouped(base, keys, summarise)]
    if not attempts.empty:
        ok_ids = set(requests.loc[requests["status"] == "ok", "request_id"].tolist())
        outcome = attempts["outcome"].astype(str)
        failed = outcome.isin(["failed", "unavailable"]) | ((outcome == "cancelled") & ~attempts["request_id"].isin(ok_ids))
        served = requests.loc[requests["status"] == "ok", ["finish", "replica"]].rename(columns={"finish": "end"})
        both = pd.concat([attempts.loc[failed, ["end", "replica"]].assign(failed=1), served.assign(failed=0)], ignore_index=True)
        both = both[both["replica"] >= 0]
        replica = both["replica"].to_numpy()
        keys = {"node": node[replica], "region": region[replica], "fleet": np.full(len(both), "fleet", dtype=object)}
        frame = pd.DataFrame({"time": window_end(both["end"].to_numpy(), window), "failed": both["failed"].to_numpy()})
        parts.append(_grouped(frame, keys, lambda f, _: f.groupby(["time", "target"], sort=True)["failed"].agg(
            attempt_failure_rate="mean")))
    replica = ts["replica"].to_numpy()
    base = pd.DataFrame({"time": np.ceil(ts["time"].to_numpy() / window - 1e-9) * window,
                         **{c: ts[c].to_numpy(dtype=float) for c in ("queue_depth", "running", "utilisation", "completed")}})
    keys = {"replica": replica.astype(str), "node": node[replica], "region": region[replica], "fleet": np.full(len(ts), "fleet", dtype=object)}
    parts.append(_grouped(base, keys, lambda f, _: f.groupby(["time", "target"], sort=True).agg(
        queue_depth=("queue_depth", "mean"), running=("running", "mean"), utilisation=("utilisation", "mean"),
        completed=("completed", "sum"))))
    table = pd.concat(parts, ignore_index=True).sort_values(["scope", "target", "metric", "time"], kind="stable")
    return table[["time", "scope", "target", "metric", "value"]].reset_index(drop=True)


@pytest.mark.parametrize("name", SCENARIOS)
def test_metrics_table_is_bit_identical_to_a_pandas_groupby_per_scope(name):
    result = _run(name)
    placement = Placement.of(Topology.from_spec(result.scenario.topology))
    window = float(result.scenario.timeseries_interval)
    fast = window_metrics(result.requests, result.timeseries, result.attempts, placement, window)
    reference = _reference_metrics(result, placement, window)
    assert {"attempt_failure_rate", "utilisation", "ttft_p99"} <= set(fast["metric"])
    assert (name != "agent-adaptation-agent.yaml") or (fast["scope"] == "stage").any()
    assert fast["value"].to_numpy().tolist() == reference["value"].to_numpy().tolist()  # exact, not approximately
    pd.testing.assert_frame_equal(fast, reference, check_exact=True, check_dtype=False)


def _reference_anomalies(values: pd.DataFrame, window: float, time: float, lookback: int = 3, history: int = 10) -> pd.Series:
    after = values[(values.index > time - lookback * window) & (values.index <= time)]
    before = values[(values.index > time - (lookback + history) * window) & (values.index <= time - lookback * window)]
    if after.empty or before.empty:
        return pd.Series(dtype=float)
    metric = pd.Series([c.rsplit("|", 1)[1] for c in values.columns], index=values.columns)
    scope = pd.Series([c.split("|", 1)[0] for c in values.columns], index=values.columns)
    mean_before, std_before = before.mean(), before.std(ddof=0).fillna(0.0)
    floor = np.maximum(0.1 * mean_before.abs(), metric.map(ABSOLUTE_FLOOR).fillna(1e-3))
    after_mean = after.mean()
    completed = metric == "completed"
    after_mean[completed] = after_mean[completed].fillna(0.0)
    score = metric.map(BAD_DIRECTION).fillna(1.0) * (after_mean - mean_before) / np.maximum(std_before, floor)
    evidence = metric.map(EVIDENCE).fillna(CLIENT_EVIDENCE).where(scope != "client_region", CLIENT_EVIDENCE)
    return (score.clip(lower=0.0, upper=MAX_ANOMALY) * evidence).dropna()


def _pivoted(metrics: pd.DataFrame, stop: float) -> pd.DataFrame:
    """The signal matrix as a pandas pivot makes it (its memory layout sets pandas' summation order)."""
    rows = metrics[metrics["scope"].isin(list(COMPONENT_SCOPES)) & metrics["metric"].isin(SIGNAL_METRICS)]
    rows = rows[(rows["time"] > 0.0) & (rows["time"] <= stop)]
    signal = rows["scope"] + "|" + rows["target"].astype(str) + "|" + rows["metric"]
    values = rows.assign(signal=signal).pivot_table(index="time", columns="signal", values="value", aggfunc="first")
    return values.sort_index().reindex(columns=sorted(values.columns))


@pytest.mark.parametrize("name", SCENARIOS)
def test_root_cause_anomalies_are_bit_identical_to_the_frame_computation(name):
    result = _run(name)
    observation = observe(result)
    graph, values = observation.graph, _pivoted(observation.metrics, result.scenario.duration)
    assert np.array_equal(graph.values.to_numpy(), values.to_numpy(), equal_nan=True)
    checked = 0
    for time in values.index.tolist():
        fast, reference = graph.anomalies(time, 3, 10), _reference_anomalies(values, graph.window, time)
        assert fast.index.tolist() == reference.index.tolist()
        assert fast.to_numpy().tolist() == reference.to_numpy().tolist(), time
        checked += not reference.empty
    assert checked > 10
