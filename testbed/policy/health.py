"""Active health checking: probe every replica each period, flip after consecutive results.

The checker only schedules probes and counts their results; the driver decides what a probe
observes. A **shallow** check (``deep=False``) asks only whether the process answers, so it
passes on a *hung* replica — one that accepts connections but makes no progress (a gray
failure) — and only request timeouts, breakers or outlier ejection catch it. A **deep** check
runs a tiny inference, which a hung replica cannot finish within ``timeout``, so it fails. A
probe not answered within ``timeout`` counts as failed.

Hysteresis: a replica becomes unhealthy after ``unhealthy_threshold`` consecutive failed probes
and healthy again after ``healthy_threshold`` consecutive passes, so one lost probe does not
flap it. A replica that fails between probes is therefore detected within
``period * unhealthy_threshold`` (plus the probe timeout) of failing.
"""

from __future__ import annotations

import heapq
import math

from testbed.spec import HealthCheckSpec


class HealthChecker:
    """Health belief for ``n`` replicas, all healthy at the start.

    Probes are staggered: replica ``i`` is first due at ``start + i * period / n``, so a large
    fleet is not probed in one burst. The driver asks :meth:`probe_due` for the replicas to probe
    now and :meth:`next_due` for when to ask again, then reports answers with :meth:`on_probe`.
    """

    def __init__(
        self,
        n: int,
        period: float,
        timeout: float,
        unhealthy_threshold: int,
        healthy_threshold: int,
        deep: bool = False,
        start: float = 0.0,
    ) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        if unhealthy_threshold < 1 or healthy_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        self.period = period
        self.timeout = timeout
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy_threshold = healthy_threshold
        self.deep = deep
        self._healthy = [True] * n
        self._streak = [0] * n  # consecutive probe results contradicting the current belief
        self._detected_at: list[float | None] = [None] * n
        self._due = [(start + i * period / n, i) for i in range(n)]  # already in heap order

    @classmethod
    def from_spec(cls, spec: HealthCheckSpec, n: int, start: float = 0.0) -> HealthChecker:
        return cls(n, spec.period, spec.timeout, spec.unhealthy_threshold, spec.healthy_threshold, spec.deep, start)

    def next_due(self) -> float | None:
        """When the next probe is due (None for an empty fleet)."""
        return self._due[0][0] if self._due else None

    def probe_due(self, now: float) -> list[int]:
        """Replicas whose probe is due at ``now``; each is rescheduled to its next slot after ``now``.

        A driver that asks late (the live gateway starts after its replicas, seconds after the
        clock's zero) gets each replica once, not once per missed period: a burst of catch-up
        probes would time out on a busy host and mark healthy replicas down. Skipping the
        missed slots keeps each replica's place in the stagger.
        """
        due: list[int] = []
        while self._due and self._due[0][0] <= now:
            at, replica = self._due[0]
            missed = math.floor((now - at) / self.period)
            heapq.heapreplace(self._due, (at + (missed + 1) * self.period, replica))
            due.append(replica)
        return due

    def on_probe(self, replica: int, ok: bool, now: float) -> str | None:
        """Count a probe result; "unhealthy" or "healthy" when the belief flips, else None."""
        if ok == self._healthy[replica]:
            self._streak[replica] = 0
            return None
        self._streak[replica] += 1
        if self._streak[replica] < (self.healthy_threshold if ok else self.unhealthy_threshold):
            return None
        self._streak[replica] = 0
        self._healthy[replica] = ok
        if not ok:
            self._detected_at[replica] = now
        return "healthy" if ok else "unhealthy"

    def healthy(self, replica: int) -> bool:
        return self._healthy[replica]

    def detected_at(self, replica: int) -> float | None:
        """When ``replica`` was last marked unhealthy (kept after it recovers; None if never)."""
        return self._detected_at[replica]
