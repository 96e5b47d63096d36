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
        "fleet": _fleet(len(ended)),
        "client_region": _codes(ended["client_region"]),
        "region": _placed(replica, placement.region),  # failed requests have no replica
        "node": _placed(replica, placement.node),
    }
    if "stage" in ended:
        stage = _codes(ended["stage"])
        if (stage[0] >= 0).any():
            keys["stage"] = stage
    return _summarise(*_stacked(base, keys), window, served_only=("region", "node"))


# A scope's targets for each row: (code per row, -1 for none; the name of each code).
Keyed = tuple[np.ndarray, np.ndarray]


def _codes(column: pd.Series) -> Keyed:
    """A column's values as codes; "" is no target."""
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype("category")
    codes = column.cat.codes.to_numpy().astype(np.int64)
    names = column.cat.categories.astype(str).to_numpy(dtype=object)
    empty = np.append(names == "", True)  # code -1 (a missing value) is no target either
    return np.where(empty[codes], -1, codes), names


def _placed(replica: np.ndarray, names: list[str]) -> Keyed:
    """Where each row's replica is (a region or node path); replica -1 is nowhere."""
    of_replica, unique = pd.factorize(np.array(names, dtype=object))
    codes = np.where(replica >= 0, np.append(of_replica, -1)[replica], -1)
    return codes, np.asarray(unique, dtype=object)


def _fleet(rows: int) -> Keyed:
    return np.zeros(rows, dtype=np.int64), np.array(["fleet"], dtype=object)


def _stacked(base: pd.DataFrame, keys: dict[str, Keyed]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``base`` once per scope with an integer ``key`` per (scope, target), and each key's scope and target.

    One table grouped once, on integers rather than strings, costs far less than a groupby per
    scope on a small run; the groups hold the same rows in the same order, so sums and
    percentiles come out the same. Rows without a target are dropped.
    """
    parts, scopes, targets, offset = [], [], [], 0
    for scope, (codes, names) in keys.items():
        parts.append(np.where(codes >= 0, codes + offset, -1))
        scopes += [scope] * len(names)
        targets += names.tolist()
        offset += len(names)
    key = np.concatenate(parts)
    frame = pd.concat([base] * len(keys), ignore_index=True)
    frame["key"] = key
    return frame[key >= 0], np.array(scopes, dtype=object), np.array(targets, dtype=object)


def _named(long: pd.DataFrame, scopes: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    """Replace the integer ``key`` column by the scope and target it stands for."""
    key = long["key"].to_numpy()
    return long.drop(columns="key").assign(scope=scopes[key], target=targets[key])


def _summarise(frame: pd.DataFrame, scopes: np.ndarray, targets: np.ndarray, window: float,
               served_only: tuple[str, ...]) -> pd.DataFrame:
    """Counts, shares and latency percentiles per (key, window); ``served_only`` scopes get no outcome shares."""
    by = ["key", "time"]
    table = frame.groupby(by, sort=True).agg(
        requests=("ok", "size"), ok=("ok", "sum"), error=("error", "sum"), shed=("shed", "sum"),
        retried=("retried", "sum"), failed_over=("failed_over", "sum"),
    )
    metrics = {
        "request_rate": table["requests"] / window,
        "throughput": table["ok"] / window,
        "error_rate": table["error"] / table["requests"],
        "shed_rate": table["shed"] / table["requests"],
        "retry_share": table["retried"] / table["requests"],
        "failed_over_share": table["failed_over"] / table["requests"],
        "requests": table["requests"].astype(float),
    }
    ok_groups = frame[frame["ok"]].groupby(by, sort=True)
    quantiles = {p: ok_groups[[n for n, ps in LATENCY_METRICS.items() if p in ps]].quantile(p / 100)
                 for p in sorted({p for ps in LATENCY_METRICS.values() for p in ps})}
    for name, percentiles in LATENCY_METRICS.items():
        for p in percentiles:
            metrics[f"{name}_p{p}"] = quantiles[p][name]
    wide = pd.DataFrame(metrics)
    outcome = ["error_rate", "shed_rate", "retry_share", "failed_over_share", "requests"]
    wide.loc[np.isin(scopes[wide.index.get_level_values("key")], served_only), outcome] = np.nan
    long = wide.stack(future_stack=True).dropna().reset_index()
    long.columns = ["key", "time", "metric", "value"]
    return _named(long, scopes, targets)


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
    replica = both["replica"].to_numpy()
    base = pd.DataFrame({"time": window_end(both["end"].to_numpy(), window), "failed": both["failed"].to_numpy()})
    keys = {"node": _placed(replica, placement.node), "region": _placed(replica, placement.region), "fleet": _fleet(len(both))}
    frame, scopes, targets = _stacked(base, keys)
    table = frame.groupby(["key", "time"], sort=True)["failed"].agg(["sum", "size"])
    rate = (table["sum"] / table["size"]).rename("value").reset_index()
    return _named(rate.assign(metric="attempt_failure_rate"), scopes, targets)


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
        "replica": _placed(replica, [str(i) for i in range(len(placement.node))]),
        "node": _placed(replica, placement.node),
        "region": _placed(replica, placement.region),
        "fleet": _fleet(len(ts)),
    }
    frame, scopes, targets = _stacked(base, keys)
    wide = frame.groupby(["key", "time"], sort=True).agg(
        queue_depth=("queue_depth", "mean"), running=("running", "mean"),
        utilisation=("utilisation", "mean"), completed=("completed", "sum"),
    )
    long = wide.stack().reset_index()
    long.columns = ["key", "time", "metric", "value"]
    return _named(long, scopes, targets)


def series(metrics: pd.DataFrame, scope: str, target: str, metric: str) -> pd.Series:
    """One series (indexed by window end) from the long table."""
    rows = metrics[(metrics["scope"] == scope) & (metrics["target"] == target) & (metrics["metric"] == metric)]
    return rows.set_index("time")["value"]


def default_window(interval: float, configured: float | None) -> float:
    """The observability window: the configured one, else the fleet's sampling interval."""
    return float(configured) if configured is not None else float(interval)

