"""Root-cause ranking: a lagged-correlation graph over the signals, and anomaly scores on it.

Each signal is one windowed series of one component — a serving region, the clients near a
region, a node, an agent stage — such as a node's queue depth or a client region's p99 TTFT.
The graph (networkx) has an edge u → v when u's series, shifted by 0..``max_lag`` windows,
correlates with v's (|r| ≥ ``min_corr``); a positive best lag means u moves first, so edges
point from causes towards symptoms, as in MicroRCA and CauseInfer.

For an alert at time t, each signal gets an anomaly score: how far its last few windows moved in
its bad direction (latency and failures up, completions down) from the windows before, in units
of their spread, capped, and weighted by how local the evidence is (a component's own failed
attempts and silence count fully; latency seen by clients, where every problem ends up, half).
A component's score is its best signal's anomaly, weighted by how strongly that
signal reaches the alerted one through the graph (the product of |r| along the strongest path);
a signal with no path keeps 80% of its weight, so a dead region whose series simply stopped
(and so correlates with nothing) still ranks. Components are ranked by that score: the ranking names where to look first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pandas as pd

from testbed.observe.metrics import BAD_DIRECTION

COMPONENT_SCOPES = {"region": "", "client_region": "clients:", "node": "", "stage": "stage:"}
SIGNAL_METRICS = tuple(BAD_DIRECTION)
# How local a signal's evidence is. Failures and silence at a component are its own; latency seen
# by clients is where every upstream problem ends up. Anomalies are capped (``MAX_ANOMALY``), so a
# symptom that moved a hundredfold cannot outrank the component that stopped.
EVIDENCE = {
    "attempt_failure_rate": 1.0, "completed": 1.0, "utilisation": 0.8, "queue_depth": 0.8,
    "ttft_p50": 0.6, "ttft_p99": 0.6, "tpot_p50": 0.6, "tpot_p99": 0.6, "e2e_p99": 0.6,
}
CLIENT_EVIDENCE = 0.5
MAX_ANOMALY = 10.0
ABSOLUTE_FLOOR = {
    "error_rate": 0.005, "attempt_failure_rate": 0.005, "retry_share": 0.005, "failed_over_share": 0.005,
    "queue_depth": 0.5, "utilisation": 0.02, "completed": 1.0,
}


@dataclass
class SignalGraph:
    """The signals of a run as a time x signal matrix and the lagged-correlation graph over them.

    Every alert ranks components, so what a ranking needs per signal (its windows as a numpy
    matrix, bad direction, floor, evidence weight, component) is worked out once, here.
    """

    values: pd.DataFrame  # index: window end; columns: "scope|target|metric"
    graph: nx.DiGraph
    window: float
    _times: np.ndarray = field(init=False, repr=False)
    _matrix: np.ndarray = field(init=False, repr=False)  # signal x time, as pandas reduces it
    _floor: np.ndarray = field(init=False, repr=False)
    _direction: np.ndarray = field(init=False, repr=False)
    _evidence: np.ndarray = field(init=False, repr=False)
    _completed: np.ndarray = field(init=False, repr=False)
    _components: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = self.values.columns.tolist()
        scopes = [name.split("|", 1)[0] for name in names]
        metrics = [name.rsplit("|", 1)[1] for name in names]
        self._times = self.values.index.to_numpy(dtype=float)
        self._matrix = np.asfortranarray(self.values.to_numpy(dtype=float).T)
        self._floor = np.array([ABSOLUTE_FLOOR.get(m, 1e-3) for m in metrics], dtype=float)
        self._direction = np.array([float(BAD_DIRECTION.get(m, 1.0)) for m in metrics])
        self._evidence = np.array([CLIENT_EVIDENCE if s == "client_region" else EVIDENCE.get(m, CLIENT_EVIDENCE)
                                   for s, m in zip(scopes, metrics)])
        self._completed = np.array([m == "completed" for m in metrics], dtype=bool)
        self._components = [component_of(name) for name in names]

    @classmethod
    def build(cls, metrics: pd.DataFrame, window: float, start: float, stop: float, max_lag: int = 3,
              min_corr: float = 0.6, top_k: int = 5) -> SignalGraph:
        rows = metrics[metrics["scope"].isin(list(COMPONENT_SCOPES)) & metrics["metric"].isin(SIGNAL_METRICS)]
        rows = rows[(rows["time"] > start) & (rows["time"] <= stop)]
        signal = (rows["scope"] + "|" + rows["target"].astype(str) + "|" + rows["metric"]).to_numpy(dtype=object)
        time = rows["time"].to_numpy(dtype=float)
        names, column = np.unique(signal, return_inverse=True)
        times, row = np.unique(time, return_inverse=True)
        matrix = np.full((len(times), len(names)), np.nan)
        matrix[row[::-1], column[::-1]] = rows["value"].to_numpy(dtype=float)[::-1]  # the first of duplicates wins
        values = pd.DataFrame(matrix, index=pd.Index(times, name="time"), columns=pd.Index(names.tolist(), name="signal"))
        return cls(values, _lagged_graph(values, max_lag, min_corr, top_k), window)

    def rank(self, time: float, signal: str = "", lookback: int = 3, history: int = 10) -> list[tuple[str, float]]:
        """Components by descending score for an alert at ``time`` on ``signal`` (may be empty)."""
        anomaly = self._anomaly(time, lookback, history)
        if anomaly is None:
            return []
        reach = self._reach(signal) if signal in self.graph else None
        names = self.values.columns.tolist()
        scores: dict[str, float] = {}
        for i in np.flatnonzero(~np.isnan(anomaly)).tolist():
            component = self._components[i]
            if component.startswith("stage:"):
                continue  # a stage is where symptoms show, not a part of the fleet that fails
            weight = 1.0 if reach is None else 0.8 + 0.2 * reach.get(names[i], 0.0)
            scores[component] = max(scores.get(component, 0.0), float(anomaly[i]) * weight)
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        return [(c, s) for c, s in ranked if s > 0]

    def anomalies(self, time: float, lookback: int, history: int) -> pd.Series:
        """Per signal: (mean of the last ``lookback`` windows - mean before) / spread, bad way up."""
        anomaly = self._anomaly(time, lookback, history)
        if anomaly is None:
            return pd.Series(dtype=float)
        return pd.Series(anomaly, index=self.values.columns).dropna()

    def _anomaly(self, time: float, lookback: int, history: int) -> np.ndarray | None:
        """:meth:`anomalies` as an array over all signals (NaN: no score), None without windows."""
        times = self._times
        middle = np.searchsorted(times, time - lookback * self.window, side="right")
        after = self._matrix[:, middle : np.searchsorted(times, time, side="right")]
        before = self._matrix[:, np.searchsorted(times, time - (lookback + history) * self.window, side="right") : middle]
        if after.shape[1] == 0 or before.shape[1] == 0:
            return None
        mean_before, std_before = _nanmean_std(before)
        floor = np.maximum(0.1 * np.abs(mean_before), self._floor)
        after_mean, _ = _nanmean_std(after)
        # A component that stopped reporting finished nothing: its silence is the signal.
        after_mean = np.where(self._completed & np.isnan(after_mean), 0.0, after_mean)
        with np.errstate(invalid="ignore"):
            score = self._direction * (after_mean - mean_before) / np.maximum(np.nan_to_num(std_before), floor)
        return np.clip(score, 0.0, MAX_ANOMALY) * self._evidence

    def _reach(self, target: str) -> dict[str, float]:
        """Strongest path product of |r| from every signal to ``target`` (edges towards it)."""
        lengths = nx.single_source_dijkstra_path_length(self.graph.reverse(copy=False), target, cutoff=-math.log(0.2), weight="cost")
        return {node: math.exp(-cost) for node, cost in lengths.items()}


def _nanmean_std(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (signal): mean and population std over the non-NaN windows, NaN where none.

    The arithmetic (and the summation order) of pandas' ``mean()`` and ``std(ddof=0)`` on the
    frame's column-major block, so rankings match the frame-based computation bit for bit: the
    mean sums the block as it is unless NaNs force a zero-filled copy; the variance always sums
    a zero-filled copy.
    """
    missing = np.isnan(block)
    count = (block.shape[1] - missing.sum(axis=1)).astype(float)
    filled = np.array(block, order="C")
    filled[missing] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (filled if missing.any() else block).sum(axis=1) / count
        squares = (filled.sum(axis=1)[:, None] / count[:, None] - filled) ** 2
        squares[missing] = 0.0
        std = np.sqrt(squares.sum(axis=1) / count)
    return mean, std


def _lagged_graph(values: pd.DataFrame, max_lag: int, min_corr: float, top_k: int) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(values.columns)
    if len(values) < max_lag + 4:
        return graph
    filled = values.ffill().bfill()
    std = filled.std(ddof=0)
    live = std[std > 0].index
    z = ((filled[live] - filled[live].mean()) / std[live]).to_numpy()
    names = list(live)
    t = len(z)
    best = np.zeros((len(names), len(names)))
    best_lag = np.zeros((len(names), len(names)), dtype=int)
    for lag in range(max_lag + 1):
        corr = z[: t - lag].T @ z[lag:] / (t - lag)  # corr[u, v]: u at time s, v at time s + lag
        better = np.abs(corr) > np.abs(best)
        best = np.where(better, corr, best)
        best_lag = np.where(better, lag, best_lag)
    np.fill_diagonal(best, 0.0)
    for u in range(len(names)):
        strength = np.abs(best[u])
        for v in np.argsort(-strength, kind="stable")[:top_k].tolist():
            r = min(1.0, float(strength[v]))  # z is standardised over the whole series, not the shifted part
            if r < min_corr:
                break
            graph.add_edge(names[u], names[v], corr=r, lag=int(best_lag[u, v]), cost=-math.log(max(r, 1e-9)))
    return graph


def component_of(signal: str) -> str:
    """The component a signal belongs to: a region or node path, 'clients:<region>' or 'stage:<name>'."""
    scope, target, _ = signal.split("|")
    return COMPONENT_SCOPES.get(scope, "") + target


def matches(component: str, target: str, endpoints: tuple[str, ...] = ()) -> bool:
    """Whether naming ``component`` points at a fault on ``target``.

    A component inside the faulty domain names it (a node of a region that went dark), and so
    does a node that holds a failed device; a network fault is named by either of its ends.
    """
    if endpoints:
        return component in endpoints
    if component == target or component.startswith(target + "/"):
        return True
    return target.startswith(component + "/") and component.count("/") >= 4  # a node holding the failed device
