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

from testbed.records.schema import latency_columns, string_values
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
    """The long metrics table of a run (metrics.parquet), sorted by scope, target, metric and time.

    The table is built in numpy and turned into a frame once: a pandas groupby per scope cost
    more than the simulation itself on a small run (see ``benchmarks/observe_overhead.py``).
    """
    rows = _Rows()
    _request_metrics(rows, requests, placement, window)
    if attempts is not None and not attempts.empty:
        _attempt_metrics(rows, requests, attempts, placement, window)
    if timeseries is not None and not timeseries.empty:
        _fleet_metrics(rows, timeseries, placement, window)
    return rows.frame()


def window_end(times: np.ndarray, window: float) -> np.ndarray:
    """The end of the window each time falls in: (floor(t / window) + 1) * window."""
    return (np.floor(times / window) + 1.0) * window


class _Rows:
    """The long table being collected: one block of rows per (scope, metric)."""

    def __init__(self) -> None:
        self._blocks: list[tuple[np.ndarray, str, np.ndarray, np.ndarray, str, np.ndarray]] = []

    def add(self, groups: _Groups, scope: str, names: np.ndarray, metric: str, value: np.ndarray) -> None:
        """One value per group; NaN values are left out, as a scrape would have no sample."""
        keep = ~np.isnan(value)
        self._blocks.append((groups.time[keep], scope, names, groups.key[keep], metric, value[keep]))

    def frame(self) -> pd.DataFrame:
        """The table sorted by (scope, target, metric, time), sorting codes rather than strings."""
        if not self._blocks:
            return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("time", "value") else "object") for c in METRIC_COLUMNS})
        sizes = [len(b[0]) for b in self._blocks]
        labels = {kind: sorted({b[i] for b in self._blocks}) for kind, i in (("scope", 1), ("metric", 4))}
        vocabulary = sorted({name for b in self._blocks for name in b[2].tolist()})
        position = {name: i for i, name in enumerate(vocabulary)}
        target = np.concatenate([np.array([position[n] for n in b[2].tolist()], dtype=np.int64)[b[3]] for b in self._blocks])
        scope = np.repeat([labels["scope"].index(b[1]) for b in self._blocks], sizes)
        metric = np.repeat([labels["metric"].index(b[4]) for b in self._blocks], sizes)
        time = np.concatenate([b[0] for b in self._blocks])
        value = np.concatenate([b[5] for b in self._blocks])
        order = np.lexsort([time, metric, target, scope])
        return pd.DataFrame({
            "time": time[order],
            "scope": np.array(labels["scope"], dtype=object)[scope[order]],
            "target": np.array(vocabulary, dtype=object)[target[order]],
            "metric": np.array(labels["metric"], dtype=object)[metric[order]],
            "value": value[order],
        })


@dataclass(frozen=True)
class _Groups:
    """Rows grouped by (target code, window end), as a pandas groupby would group them.

    Percentiles reproduce pandas' linear interpolation between order statistics, and sums and
    means are pandas' own, so the table is the same one a frame-based groupby made, bit for bit.
    """

    index: np.ndarray  # the group of each row
    key: np.ndarray  # each group's target code
    time: np.ndarray  # each group's window end
    size: np.ndarray  # rows per group

    @classmethod
    def of(cls, key: np.ndarray, time: np.ndarray, names: np.ndarray) -> _Groups:
        """Groups numbered as ``groupby(["time", "target"], sort=True)`` numbers them: pandas'
        compensated sums depend on that numbering in the last bit."""
        times, time_code = np.unique(time, return_inverse=True)
        return cls.coded(key, time_code, times, names)

    @classmethod
    def coded(cls, key: np.ndarray, time_code: np.ndarray, times: np.ndarray, names: np.ndarray) -> _Groups:
        """:meth:`of` for times given as codes into the sorted ``times``, which may hold times no
        row has (one coding of a run's times serves every scope)."""
        order = np.argsort(names.astype(str), kind="stable")
        rank = np.empty(len(names), dtype=np.int64)
        rank[order] = np.arange(len(names))
        codes, index = _unique_codes(time_code * len(names) + rank[key], len(times) * len(names))
        return cls(index, order[codes % len(names)], times[codes // len(names)], np.bincount(index, minlength=len(codes)))

    def count(self, rows: np.ndarray) -> np.ndarray:
        """How many of the rows selected by the mask ``rows`` fall in each group."""
        return np.bincount(self.index[rows], minlength=len(self.key))

    def quantiles(self, values: np.ndarray, by_value: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
        """Each ``q`` quantile of each group's non-NaN values (linear interpolation), NaN if none.

        ``by_value`` is the rows in value order, sorted once per column for every scope: a stable
        sort by group then leaves each group's values in order, without a two-key sort per scope.
        """
        order = by_value[~np.isnan(values[by_value])]
        order = order[stable_order(self.index[order], len(self.key))]
        ordered = values[order]
        counts = np.bincount(self.index[order], minlength=len(self.key))
        starts = np.cumsum(counts) - counts
        has = counts > 0
        out = []
        for q in qs:
            position = q * (counts[has] - 1).astype(float)
            below = starts[has] + position.astype(np.int64)
            fraction = position % 1
            low = ordered[below]
            high = ordered[np.minimum(below + 1, starts[has] + counts[has] - 1)]
            quantile = np.full(len(self.key), np.nan)
            quantile[has] = np.where(fraction == 0.0, low, low + (high - low) * fraction)
            out.append(quantile)
        return out

    def reduce(self, values: np.ndarray, how: str) -> np.ndarray:
        """Each group's ``how`` ("sum" or "mean"): pandas' compensated summation, on integer codes."""
        return pd.Series(values).groupby(self.index, sort=True).agg(how).to_numpy(dtype=float)


def _unique_codes(values: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for integers in [0, bound): by counting, without
    a sort, when the range is no larger than a few times the number of values."""
    if bound > max(4 * len(values), 1 << 16):
        return np.unique(values, return_inverse=True)
    present = np.bincount(values, minlength=bound) > 0
    return np.flatnonzero(present), (np.cumsum(present) - 1)[values]


def stable_order(codes: np.ndarray, distinct: int) -> np.ndarray:
    """``np.argsort(codes, kind="stable")`` for codes in [0, distinct): as 16-bit integers when
    they fit, which numpy sorts by radix, six times faster on a 300k-row run than 64-bit ones."""
    if distinct <= np.iinfo(np.uint16).max:
        codes = codes.astype(np.uint16)
    return np.argsort(codes, kind="stable")


# A scope's target for each row: (code per row, -1 for none; the name of each code).
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


def _request_metrics(out: _Rows, requests: pd.DataFrame, placement: Placement, window: float) -> None:
    """Counts, shares and latency percentiles of requests, by the window they ended in."""
    ended = requests[~requests["finish"].isna()]
    if ended.empty:
        return
    lat = latency_columns(ended)
    status = string_values(ended["status"])
    replica = ended["replica"].to_numpy()
    time = window_end(ended["finish"].to_numpy(), window)
    flags = {
        "error": np.isin(status, ("failed", "timeout")),
        "shed": status == "shed",
        "retried": ended["retries"].to_numpy() > 0,
        "failed_over": ended["failed_over"].to_numpy().astype(bool),
    }
    ok = status == "ok"
    latency = {name: np.where(ok, lat[name].to_numpy(dtype=float), np.nan) for name in LATENCY_METRICS}
    # Any sort will do: tied values are equal, so which of them comes first cannot move a quantile.
    by_latency = {name: np.argsort(values) for name, values in latency.items()}
    keys = {
        "fleet": _fleet(len(ended)),
        "client_region": _codes(ended["client_region"]),
        "region": _placed(replica, placement.region),
        "node": _placed(replica, placement.node),
    }
    if "stage" in ended:
        stage = _codes(ended["stage"])
        if (stage[0] >= 0).any():
            keys["stage"] = stage
    times, time_code = np.unique(time, return_inverse=True)
    for scope, (codes, names) in keys.items():
        rows = codes >= 0
        groups = _Groups.coded(codes[rows], time_code[rows], times, names)
        requests_n = groups.size
        out.add(groups, scope, names, "request_rate", requests_n / window)
        out.add(groups, scope, names, "throughput", groups.count(ok[rows]) / window)
        if scope not in ("region", "node"):  # failed requests have no replica: no outcome shares there
            for metric, flag in (("error_rate", "error"), ("shed_rate", "shed"), ("retry_share", "retried"),
                                 ("failed_over_share", "failed_over")):
                out.add(groups, scope, names, metric, groups.count(flags[flag][rows]) / requests_n)
            out.add(groups, scope, names, "requests", requests_n.astype(float))
        position = np.cumsum(rows) - 1  # each selected row's position among the selected
        for name, percentiles in LATENCY_METRICS.items():
            by_value = position[by_latency[name][rows[by_latency[name]]]]
            for p, values in zip(percentiles, groups.quantiles(latency[name][rows], by_value, tuple(p / 100 for p in percentiles))):
                out.add(groups, scope, names, f"{name}_p{p}", values)


def _attempt_metrics(out: _Rows, requests: pd.DataFrame, attempts: pd.DataFrame, placement: Placement, window: float) -> None:
    """Failed attempts per node and region, over attempts that ended there (failed + served).

    An attempt cancelled because its request timed out counts as failed where it was: that is
    how a hung replica shows up, since it never answers at all.
    """
    status = pd.Series(string_values(requests["status"]), index=requests["request_id"])
    outcome = string_values(attempts["outcome"])
    request_ok = status.reindex(attempts["request_id"]).to_numpy() == "ok"
    failed = np.isin(outcome, ("failed", "unavailable")) | ((outcome == "cancelled") & ~request_ok)
    served = (requests["status"] == "ok").to_numpy()
    end = np.concatenate([attempts["end"].to_numpy(dtype=float)[failed], requests["finish"].to_numpy(dtype=float)[served]])
    replica = np.concatenate([attempts["replica"].to_numpy()[failed], requests["replica"].to_numpy()[served]])
    is_failure = np.arange(len(end)) < failed.sum()
    placed = replica >= 0
    end, replica, is_failure = end[placed], replica[placed], is_failure[placed]
    time = window_end(end, window)
    for scope, (codes, names) in (("node", _placed(replica, placement.node)), ("region", _placed(replica, placement.region)),
                                  ("fleet", _fleet(len(replica)))):
        groups = _Groups.of(codes, time, names)
        out.add(groups, scope, names, "attempt_failure_rate", groups.count(is_failure) / groups.size)


def _fleet_metrics(out: _Rows, timeseries: pd.DataFrame, placement: Placement, window: float) -> None:
    """Queue depth, batch size and utilisation (means per replica) and completions (sums) per scope.

    A sample at time t covers the interval ending at t, so it belongs to the window ending at
    the first multiple of ``window`` at or after t.
    """
    ts = timeseries
    time = np.ceil(ts["time"].to_numpy() / window - 1e-9) * window
    replica = ts["replica"].to_numpy()
    columns = {name: ts[name].to_numpy(dtype=float) for name in ("queue_depth", "running", "utilisation", "completed")}
    for scope, (codes, names) in (
        ("replica", _placed(replica, [str(i) for i in range(len(placement.node))])),
        ("node", _placed(replica, placement.node)),
        ("region", _placed(replica, placement.region)),
        ("fleet", _fleet(len(ts))),
    ):
        groups = _Groups.of(codes, time, names)
        for name in ("queue_depth", "running", "utilisation"):
            out.add(groups, scope, names, name, groups.reduce(columns[name], "mean"))
        out.add(groups, scope, names, "completed", groups.reduce(columns["completed"], "sum"))


def series(metrics: pd.DataFrame, scope: str, target: str, metric: str) -> pd.Series:
    """One series (indexed by window end) from the long table."""
    rows = metrics[(metrics["scope"] == scope) & (metrics["target"] == target) & (metrics["metric"] == metric)]
    return rows.set_index("time")["value"]


def default_window(interval: float, configured: float | None) -> float:
    """The observability window: the configured one, else the fleet's sampling interval."""
    return float(configured) if configured is not None else float(interval)

