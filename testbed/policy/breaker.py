"""Passive failure detection from request results: circuit breakers and outlier ejection.

Both learn only from the results of real requests, which is all a gateway sees of a failure
before its health checks catch up:

* :class:`CircuitBreaker` — one per replica, the classic closed / open / half-open machine
  (Nygard, "Release It!"): after ``consecutive_failures`` failures it opens and refuses traffic
  for ``open_for`` seconds, then lets ``half_open_probes`` trial requests through; their success
  closes it, a failure opens it again.
* :class:`OutlierDetector` — Envoy-style ejection over the whole fleet: a replica with
  ``consecutive_errors`` errors is ejected for ``base_ejection`` times the number of times it has
  been ejected, so a flapping replica stays out longer each time; and never more than
  ``max_ejected_share`` of the replicas are out at once, so a fleet-wide problem (a bad
  upstream, a client sending bad requests) cannot eject the whole fleet.
"""

from __future__ import annotations

from testbed.spec import CircuitBreakerSpec, OutlierEjectionSpec

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """A per-replica breaker; ``state`` is "closed", "open" or "half_open"."""

    def __init__(self, consecutive_failures: int, open_for: float, half_open_probes: int = 1) -> None:
        if consecutive_failures < 1 or half_open_probes < 1:
            raise ValueError("consecutive_failures and half_open_probes must be at least 1")
        self.threshold = consecutive_failures
        self.open_for = open_for
        self.probes = half_open_probes
        self.state = CLOSED
        self.opened_at: float | None = None
        self._failures = 0  # consecutive failures while closed
        self._probes_sent = 0  # trial requests let through while half-open
        self._probe_successes = 0

    @classmethod
    def from_spec(cls, spec: CircuitBreakerSpec) -> CircuitBreaker:
        return cls(spec.consecutive_failures, spec.open_for, spec.half_open_probes)

    def _advance(self, now: float) -> None:
        """An open breaker becomes half-open once ``open_for`` has passed."""
        if self.state == OPEN and self.opened_at is not None and now >= self.opened_at + self.open_for:
            self.state = HALF_OPEN
            self._probes_sent = self._probe_successes = 0

    def allow_peek(self, now: float) -> bool:
        """Whether :meth:`allow` would let a request through now, without spending a probe.

        Routers use this to mark a replica available; the request actually sent calls
        :meth:`allow` so that a half-open breaker admits only its probes.
        """
        self._advance(now)
        if self.state == CLOSED:
            return True
        return self.state == HALF_OPEN and self._probes_sent < self.probes

    def allow(self, now: float) -> bool:
        """Let a request through? In half-open state each True spends one of the probes."""
        if not self.allow_peek(now):
            return False
        if self.state == HALF_OPEN:
            self._probes_sent += 1
        return True

    def on_success(self, now: float) -> None:
        self._advance(now)
        if self.state == CLOSED:
            self._failures = 0
        elif self.state == HALF_OPEN:
            self._probe_successes += 1
            if self._probe_successes >= self.probes:
                self.state = CLOSED
                self._failures = 0
        # While open, late results of requests sent before it opened change nothing.

    def on_failure(self, now: float) -> None:
        self._advance(now)
        if self.state == CLOSED:
            self._failures += 1
            if self._failures >= self.threshold:
                self._open(now)
        elif self.state == HALF_OPEN:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.opened_at = now
        self._failures = 0


class OutlierDetector:
    """Consecutive-error ejection over ``n`` replicas, capped at a share of the fleet.

    The cap is strict: with ``n`` replicas at most ``floor(max_ejected_share * n)`` are out at
    once (Envoy allows one past the percentage; here the share is never exceeded), so a single
    replica is never ejected. Results from a replica while it is ejected (late answers of
    requests sent before) are ignored; its error count starts afresh when it returns.
    """

    def __init__(self, n: int, consecutive_errors: int, base_ejection: float, max_ejected_share: float) -> None:
        if consecutive_errors < 1:
            raise ValueError("consecutive_errors must be at least 1")
        self.threshold = consecutive_errors
        self.base = base_ejection
        self.max_ejected = int(max_ejected_share * n + 1e-9)
        self.times_ejected = [0] * n
        self._errors = [0] * n
        self._until = [float("-inf")] * n
        self._ejected: set[int] = set()  # possibly stale: pruned as ejections expire

    @classmethod
    def from_spec(cls, spec: OutlierEjectionSpec, n: int) -> OutlierDetector:
        return cls(n, spec.consecutive_errors, spec.base_ejection, spec.max_ejected_share)

    def is_ejected(self, replica: int, now: float) -> bool:
        return now < self._until[replica]

    def ejected_until(self, replica: int) -> float | None:
        """When the current or last ejection of ``replica`` ends (None if never ejected)."""
        return self._until[replica] if self.times_ejected[replica] else None

    def ejected_count(self, now: float) -> int:
        """Replicas ejected at ``now``; O(ejected), since expired entries are pruned here."""
        expired = [r for r in self._ejected if not self.is_ejected(r, now)]
        self._ejected.difference_update(expired)
        return len(self._ejected)

    def on_result(self, replica: int, ok: bool, now: float) -> None:
        if self.is_ejected(replica, now):
            return
        if ok:
            self._errors[replica] = 0
            return
        self._errors[replica] += 1
        if self._errors[replica] >= self.threshold and self.ejected_count(now) < self.max_ejected:
            self._errors[replica] = 0
            self.times_ejected[replica] += 1
            self._until[replica] = now + self.base * self.times_ejected[replica]
            self._ejected.add(replica)
