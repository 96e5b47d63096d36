"""Hedged requests: if the first attempt has not produced a token by the hedge delay, send another.

Dean and Barroso ("The Tail at Scale") hedge after the 95th-percentile latency, so about 5% of
requests pay for a duplicate while the tail loses its stragglers. The delay is either fixed or
adaptive: the chosen percentile of recently observed TTFTs over a bounded window, so it follows
load changes. Until the window holds :data:`MIN_SAMPLES` observations an adaptive policy does
not hedge, because a percentile of a handful of samples would hedge far too eagerly.
"""

from __future__ import annotations

import bisect
from collections import deque

from testbed.spec import HedgingSpec

MIN_SAMPLES = 20
WINDOW = 1000


class HedgePolicy:
    """When to send a hedge; ``max_hedges`` is 0 when hedging is disabled."""

    def __init__(
        self,
        enabled: bool,
        delay: float | None = None,
        percentile: float = 95.0,
        max_hedges: int = 1,
        window: int = WINDOW,
    ) -> None:
        if not 0 < percentile < 100:
            raise ValueError("percentile must be between 0 and 100")
        self.delay = delay
        self.percentile = percentile
        self.max_hedges = max_hedges if enabled else 0
        self.window = window
        self._ttfts: deque[float] = deque()  # arrival order, to know which sample leaves next
        self._sorted: list[float] = []  # the same samples in order, for the percentile

    @classmethod
    def from_spec(cls, spec: HedgingSpec) -> HedgePolicy:
        return cls(spec.enabled, spec.delay, spec.percentile, spec.max_hedges)

    def observe(self, ttft: float) -> None:
        """Record a request's time to first token (kept only in adaptive mode).

        The sorted copy is kept with bisect: O(log w) to search plus a C memmove of at most
        ``window`` floats, so a million observations stay cheap and the percentile is exact.
        """
        if self.max_hedges == 0 or self.delay is not None:
            return
        self._ttfts.append(ttft)
        bisect.insort(self._sorted, ttft)
        if len(self._ttfts) > self.window:
            oldest = self._ttfts.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]

    def hedge_delay(self) -> float | None:
        """Seconds after an attempt starts to hedge it, or None for no hedge."""
        if self.max_hedges == 0:
            return None
        if self.delay is not None:
            return self.delay
        n = len(self._sorted)
        if n < MIN_SAMPLES:
            return None
        return self._sorted[min(n - 1, int(self.percentile / 100.0 * n))]
