"""Windowed telemetry: the metrics a monitoring system would have scraped, computed from records.

Everything here reads only a run's records — requests, fleet series, attempts — so a simulated
and a live run yield the same table. The table is long: one row per (window end, scope, target,
metric), where scope is ``fleet``, ``region`` (where requests were served), ``client_region``
(where they came from), ``node``, ``replica`` or ``stage`` (agent stages). Request metrics are
counted when a request *ends*, as a Prometheus counter or histogram would observe them, so an
error shows up when the client sees it, not when the request arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.observe.records import latency_columns
from testbed.topology import Topology

METRIC_COLUMNS = ("time", "scope", "target", "metric", "value")
LATENCY_METRICS = {"ttft": (50, 99), "tpot": (50, 99), "e2e": (99,)}
# Which way is bad, for detectors and root-cause scoring: +1 higher is worse, -1 lower is worse.
BAD_DIRECTION = {
    "error_rate": 1, "attempt_failure_rate": 1, "retry_share": 1, "failed_over_share": 1,
    "ttft_p50": 1, "ttft_p99": 1, "tpot_p50": 1, "tpot_p99": 1, "e2e_p99": 1,
    "queue_depth": 1, "utilisation": 1, "completed": -1,
}


@dataclass(frozen=True)
class Placement:
    """Where each replica is: its region and node paths (index = replica number)."""

    region: list[str]
    node: list[str]

    @classmethod
    def of(cls, topology: Topology) -> Placement:
        return cls([r.region for r in topology.replicas], [r.node for r in topology.replicas])


def window_metrics(
    requests: pd.DataFrame,
    timeseries: pd.DataFrame,
    attempts: pd.DataFrame,
    placement: Placement,
    window: float,
) -> pd.DataFrame:
    """The long metrics table of a run (metrics.parquet)."""
    parts = [_request_metrics(requests, placement, window)]
    if attempts is not None and not attempts.empty:
        parts.append(_attempt_metrics(requests, attempts, placement, window))
    if timeseries is not None and not timeseries.empty:
        parts.append(_fleet_metrics(timeseries, placement, window))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("time", "value") else "object") for c in METRIC_COLUMNS})
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.sort_values(["scope", "target", "metric", "time"], kind="stable").reset_index(drop=True)
    return frame[list(METRIC_COLUMNS)]


def window_end(times: np.ndarray, window: float) -> np.ndarray:
    """The end of the window each time falls in: (floor(t / window) + 1) * window."""
    return (np.floor(times / window) + 1.0) * window


def _request_metrics(requests: pd.DataFrame, placement: Placement, window: float) -> pd.DataFrame:
    ended = requests[~requests["finish"].isna()]
    if ended.empty:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    lat = latency_columns(ended)
    status = ended["status"].astype(str).to_numpy()
    replica = ended["replica"].to_numpy()
    node_of = np.array(placement.node + [""], dtype=object)
    region_of = np.array(placement.region + [""], dtype=object)
    base = pd.DataFrame(
        {
            "time": window_end(ended["finish"].to_numpy(), window),
            "error": np.isin(status, ("failed", "timeout")),
            "shed": status == "shed",
            "ok": status == "ok",
            "retried": ended["retries"].to_numpy() > 0,
            "failed_over": ended["failed_over"].to_numpy(),
            "ttft": lat["ttft"].to_numpy(),
            "tpot": lat["tpot"].to_numpy(),
            "e2e": lat["e2e"].to_numpy(),
        }
    )
    keys = {
        "fleet": np.full(len(ended), "fleet", dtype=object),
        "client_region": ended["client_region"].astype(str).to_numpy(),
        "region": region_of[replica],
        "node": node_of[replica],
    }
    stage = ended["stage"].astype(str).to_numpy() if "stage" in ended else np.full(len(ended), "")
    if (stage != "").any():
        keys["stage"] = stage
    rows = []
    for scope, key in keys.items():
        frame = base.assign(target=key)
        frame = frame[frame["target"] != ""]
        served_only = scope in ("region", "node")  # failed requests have no replica
        rows.append(_summarise(frame, scope, window, outcomes=not served_only))
    return pd.concat(rows, ignore_index=True)


def _summarise(frame: pd.DataFrame, scope: str, window: float, outcomes: bool) -> pd.DataFrame:
    """Counts, shares and latency percentiles per (window, target)."""
    groups = frame.groupby(["time", "target"], sort=True)
    table = groups.agg(
        requests=("ok", "size"), ok=("ok", "sum"), error=("error", "sum"), shed=("shed", "sum"),
        retried=("retried", "sum"), failed_over=("failed_over", "sum"),
    )
    metrics = {"request_rate": table["requests"] / window, "throughput": table["ok"] / window}
    if outcomes:
        metrics |= {
            "error_rate": table["error"] / table["requests"],
            "shed_rate": table["shed"] / table["requests"],
            "retry_share": table["retried"] / table["requests"],
            "failed_over_share": table["failed_over"] / table["requests"],
            "requests": table["requests"].astype(float),
        }
    ok = frame[frame["ok"]]
    ok_groups = ok.groupby(["time", "target"], sort=True)
    for name, percentiles in LATENCY_METRICS.items():
        for p in percentiles:
            metrics[f"{name}_p{p}"] = ok_groups[name].quantile(p / 100)
    wide = pd.DataFrame(metrics)
    long = wide.stack(future_stack=True).dropna().reset_index()
    long.columns = ["time", "target", "metric", "value"]
    long["scope"] = scope
    return long


def _attempt_metrics(requests: pd.DataFrame, attempts: pd.DataFrame, placement: Placement, window: float) -> pd.DataFrame:
    """Failed attempts per node and region, over attempts that ended there (failed + served).

    An attempt cancelled because its request timed out counts as failed where it was: that is
    how a hung replica shows up, since it never answers at all.
    """
    status = requests.set_index("request_id")["status"].astype(str)
    outcome = attempts["outcome"].astype(str).to_numpy()
    request_ok = status.reindex(attempts["request_id"]).to_numpy() == "ok"
    failed = np.isin(outcome, ("failed", "unavailable")) | ((outcome == "cancelled") & ~request_ok)
    failures = attempts.loc[failed, ["end", "replica"]]
    served = requests.loc[requests["status"] == "ok", ["finish", "replica"]].rename(columns={"finish": "end"})
    both = pd.concat([failures.assign(failed=1), served.assign(failed=0)], ignore_index=True)
    both = both[both["replica"] >= 0]
    both["time"] = window_end(both["end"].to_numpy(), window)
    replica = both["replica"].to_numpy()
    rows = []
    for scope, names in (("node", placement.node), ("region", placement.region), ("fleet", None)):
        target = np.full(len(both), "fleet", dtype=object) if names is None else np.array(names, dtype=object)[replica]
        table = both.assign(target=target).groupby(["time", "target"], sort=True)["failed"].agg(["sum", "size"])
        rate = (table["sum"] / table["size"]).rename("value").reset_index()
        rows.append(rate.assign(scope=scope, metric="attempt_failure_rate"))
    return pd.concat(rows, ignore_index=True)


def _fleet_metrics(timeseries: pd.DataFrame, placement: Placement, window: float) -> pd.DataFrame:
    """Queue depth, batch size and utilisation (means per replica) and completions (sums) per scope.

    A sample at time t covers the interval ending at t, so it belongs to the window ending at
    the first multiple of ``window`` at or after t.
    """
    ts = timeseries
    time = np.ceil(ts["time"].to_numpy() / window - 1e-9) * window
    replica = ts["replica"].to_numpy()
    base = pd.DataFrame(
        {
            "time": time,
            "queue_depth": ts["queue_depth"].to_numpy(dtype=float),
            "running": ts["running"].to_numpy(dtype=float),
            "utilisation": ts["utilisation"].to_numpy(dtype=float),
            "completed": ts["completed"].to_numpy(dtype=float),
        }
    )
    keys = {
        "replica": replica.astype(str),
        "node": np.array(placement.node, dtype=object)[replica],
        "region": np.array(placement.region, dtype=object)[replica],
        "fleet": np.full(len(ts), "fleet", dtype=object),
    }
    rows = []
    for scope, key in keys.items():
        grouped = base.assign(target=key).groupby(["time", "target"], sort=True)
        wide = grouped.agg(queue_depth=("queue_depth", "mean"), running=("running", "mean"),
                           utilisation=("utilisation", "mean"), completed=("completed", "sum"))
        long = wide.stack().reset_index()
        long.columns = ["time", "target", "metric", "value"]
        rows.append(long.assign(scope=scope))
    return pd.concat(rows, ignore_index=True)


def series(metrics: pd.DataFrame, scope: str, target: str, metric: str) -> pd.Series:
    """One series (indexed by window end) from the long table."""
    rows = metrics[(metrics["scope"] == scope) & (metrics["target"] == target) & (metrics["metric"] == metric)]
    return rows.set_index("time")["value"]


def default_window(interval: float, configured: float | None) -> float:
    """The observability window: the configured one, else the fleet's sampling interval."""
    return float(configured) if configured is not None else float(interval)

