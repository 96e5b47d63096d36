"""Fleet time series: every replica's state sampled at a fixed simulated interval."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import simpy

from testbed.sim.replica import SimReplica

TIMESERIES_COLUMNS = (
    "time", "replica", "region", "queue_depth", "running", "utilisation", "completed", "output_tokens",
)
# With prefix caching on: prompt tokens looked up in the interval, how many were cached, and
# their ratio (NaN when nothing was looked up). A region's hit rate is the ratio of its sums:
# see :func:`cache_hit_rates`.
CACHE_COLUMNS = ("cache_lookup_tokens", "cache_hit_tokens", "cache_hit_rate")


class FleetSampler:
    """A SimPy process that snapshots queue depth, batch size, utilisation and throughput.

    Counters (busy time, completions, tokens) are cumulative on each replica, so a sample is a
    difference of two snapshots: sampling costs nothing on the request path. The last interval
    of a run is usually shorter; its utilisation is relative to its own length.
    """

    def __init__(
        self,
        env: simpy.Environment,
        replicas: Sequence[SimReplica],
        interval: float,
        horizon: float,
        progress: Callable[[float], None] | None = None,
        caching: bool = False,
    ) -> None:
        self.env = env
        self.replicas = replicas
        self.interval = interval
        self.horizon = horizon
        self.progress = progress
        self.caching = caching
        names = TIMESERIES_COLUMNS + (CACHE_COLUMNS if caching else ())
        self._columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
        self._lookups = np.zeros(len(replicas), dtype=np.int64)
        self._hits = np.zeros(len(replicas), dtype=np.int64)
        self._last_time = 0.0
        self._busy = np.zeros(len(replicas))
        self._completed = np.zeros(len(replicas), dtype=np.int64)
        self._tokens = np.zeros(len(replicas), dtype=np.int64)

    def run(self, stop: simpy.Event) -> Iterator[simpy.Event]:
        """Sample every ``interval`` until ``stop``; call :meth:`sample` once more at the end."""
        while not stop.triggered:
            yield self.env.timeout(self.interval)
            self.sample()
            if self.progress is not None:
                self.progress(min(1.0, self.env.now / self.horizon))

    def sample(self) -> None:
        """Record the interval since the previous sample (a shorter one at the end of a run)."""
        now = self.env.now
        elapsed = now - self._last_time
        if elapsed <= 0:
            return
        replicas = self.replicas
        n = len(replicas)
        busy = np.array([r.busy_time_until(now) for r in replicas])
        completed = np.array([r.completed for r in replicas], dtype=np.int64)
        tokens = np.array([r.tokens_out for r in replicas], dtype=np.int64)
        self._append(
            time=np.full(n, now),
            replica=np.arange(n, dtype=np.int32),
            region=np.array([r.region for r in replicas], dtype=object),
            queue_depth=np.array([r.batcher.queued for r in replicas], dtype=np.int32),
            running=np.array([r.batcher.running for r in replicas], dtype=np.int32),
            utilisation=(busy - self._busy) / elapsed,
            completed=completed - self._completed,
            output_tokens=tokens - self._tokens,
        )
        self._last_time, self._busy, self._completed, self._tokens = now, busy, completed, tokens
        if self.caching:
            caches = [getattr(r.batcher, "cache", None) for r in replicas]
            lookups = np.array([c.lookup_tokens if c is not None else 0 for c in caches], dtype=np.int64)
            hits = np.array([c.hit_tokens if c is not None else 0 for c in caches], dtype=np.int64)
            looked, hit = lookups - self._lookups, hits - self._hits
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.where(looked > 0, hit / np.maximum(looked, 1), np.nan)
            self._append(cache_lookup_tokens=looked, cache_hit_tokens=hit, cache_hit_rate=rate)
            self._lookups, self._hits = lookups, hits

    def _append(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self._columns[name].append(values)

    def frame(self) -> pd.DataFrame:
        """The samples as a long table: one row per replica per interval."""
        if not self._columns["time"]:
            return pd.DataFrame({name: pd.Series(dtype="float64") for name in self._columns})
        frame = pd.DataFrame({name: np.concatenate(parts) for name, parts in self._columns.items()})
        frame["region"] = frame["region"].astype("category")
        return frame


def cache_hit_rates(timeseries: pd.DataFrame, by: str = "region") -> pd.DataFrame:
    """Prefix-cache hit rate per ``by`` (``region`` or ``replica``) and interval: hit / looked-up tokens."""
    sums = timeseries.groupby(["time", by], observed=True)[["cache_lookup_tokens", "cache_hit_tokens"]].sum()
    sums["cache_hit_rate"] = sums["cache_hit_tokens"] / sums["cache_lookup_tokens"].where(sums["cache_lookup_tokens"] > 0)
    return sums.reset_index()
