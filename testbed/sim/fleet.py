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
    ) -> None:
        self.env = env
        self.replicas = replicas
        self.interval = interval
        self.horizon = horizon
        self.progress = progress
        self._columns: dict[str, list[np.ndarray]] = {name: [] for name in TIMESERIES_COLUMNS}
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

    def _append(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self._columns[name].append(values)

    def frame(self) -> pd.DataFrame:
        """The samples as a long table: one row per replica per interval."""
        if not self._columns["time"]:
            return pd.DataFrame({name: pd.Series(dtype="float64") for name in TIMESERIES_COLUMNS})
        frame = pd.DataFrame({name: np.concatenate(parts) for name, parts in self._columns.items()})
        frame["region"] = frame["region"].astype("category")
        return frame
