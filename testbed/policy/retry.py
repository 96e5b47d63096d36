"""Retries: when to try again, how long to wait first, and a budget that stops retry storms.

* :class:`RetryPolicy` — which attempt outcomes are retried, up to ``max_attempts``, after a
  capped exponential backoff with jitter. Jitter follows the AWS Architecture Blog's
  "Exponential Backoff and Jitter": without it, clients that failed together retry together and
  hit a recovering replica in synchronized waves.
* :class:`RetryBudget` — Finagle / Envoy style: over a sliding window, retries may add at most
  ``ratio`` of the requests plus a small floor per second. Per-request attempt limits alone let
  a fleet-wide failure multiply load by ``max_attempts`` exactly when capacity is lowest.

Randomness comes only from the ``random.Random`` passed to :meth:`RetryPolicy.backoff`.
"""

from __future__ import annotations

import random
from collections import deque

from testbed.spec import RetrySpec

# Sliding window over which the retry budget counts requests and retries (Finagle's default ttl).
BUDGET_WINDOW = 10.0


class RetryPolicy:
    """Whether attempt number ``attempt`` (1-based, already made) may be followed by another."""

    def __init__(
        self,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        jitter: str = "full",
        retry_on: frozenset[str] = frozenset({"failed", "timeout", "unavailable"}),
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if jitter not in ("full", "equal", "none"):
            raise ValueError(f"unknown jitter mode {jitter!r}")
        self.max_attempts = max_attempts
        self.base = backoff
        self.cap = max_backoff
        self.jitter = jitter
        self.retry_on = retry_on

    @classmethod
    def from_spec(cls, spec: RetrySpec) -> RetryPolicy:
        return cls(spec.max_attempts, spec.backoff, spec.max_backoff, spec.jitter, frozenset(spec.on))

    def should_retry(self, attempt: int, outcome: str) -> bool:
        """True if ``outcome`` of the ``attempt``-th attempt is retryable and attempts remain."""
        return attempt < self.max_attempts and outcome in self.retry_on

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1``: ``min(cap, base * 2**(attempt-1))``, jittered."""
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt - 1, 1000))
        if self.jitter == "full":
            return rng.uniform(0.0, ceiling)
        if self.jitter == "equal":
            return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)
        return ceiling


class RetryBudget:
    """Retries allowed while ``retries < ratio * requests + min_per_s * window`` over the window.

    Requests and spent retries are kept as timestamps in two deques and expired from the front
    as time advances, so each call is O(1) amortised. Calls must come with non-decreasing ``now``.
    """

    def __init__(self, ratio: float, min_per_s: float, window: float = BUDGET_WINDOW) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.ratio = ratio
        self.floor = min_per_s * window
        self.window = window
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    @classmethod
    def from_spec(cls, spec: RetrySpec, window: float = BUDGET_WINDOW) -> RetryBudget:
        return cls(spec.budget_ratio, spec.budget_min_per_s, window)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        for times in (self._requests, self._retries):
            while times and times[0] <= horizon:
                times.popleft()

    def on_request(self, now: float) -> None:
        """Count a new request (not a retry): it earns the budget ``ratio`` of a retry."""
        self._expire(now)
        self._requests.append(now)

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget if it has room; False means do not retry."""
        self._expire(now)
        if len(self._retries) >= self.ratio * len(self._requests) + self.floor:
            return False
        self._retries.append(now)
        return True
