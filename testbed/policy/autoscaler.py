"""How many replicas a pool wants: a target-tracking autoscaler with stabilisation and step limits.

Rules, in the order they apply at each decision (every ``interval`` seconds, driven by the plane):

1. **Recommendation** — ``ceil(serving * observed / target)``, where ``observed`` is the metric
   averaged over the pool's serving replicas (and, by the plane, over the interval) (ongoing requests, queued requests, KV-cache share
   used, or a TTFT percentile in seconds). This is the Kubernetes HPA formula, and Ray Serve's for
   ongoing requests. While ``observed / target`` lies within ``1 ± tolerance`` the recommendation
   is the current count (HPA's 10% dead band), so noise around the target changes nothing.
2. **Bounds** — clamped to ``min_replicas..max_replicas``.
3. **Stabilisation** — a rise is acted on only once every recommendation for ``upscale_delay``
   seconds has been above the current count, and then by the *smallest* of them; a fall only
   once every recommendation for ``downscale_delay`` has been below, and then to the *largest*
   (Ray Serve's upscale/downscale delays; HPA's stabilisation windows). A metric that oscillates
   faster than the delays never moves the fleet: this is the flapping prevention.
4. **Step limits** — one decision adds at most ``max_step_up`` and removes at most
   ``max_step_down`` replicas (HPA scaling policies).
5. **Scale from zero** — a pool at zero serving replicas with requests waiting wants
   ``max(1, min_replicas)`` at once (Knative's activator, Ray Serve's scale-from-zero): there is
   nothing to average and every second waited is a second of unavailability.

The autoscaler decides counts only; which slot a new replica takes, and which replica drains on
a scale-down, are the plane's choices (quota, stockouts and health are not this policy's business).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from testbed.spec import AutoscalerSpec


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    at: float
    current: int
    desired: int
    reason: str  # "up" | "down" | "from_zero"


@dataclass(slots=True)
class _Streak:
    """A run of recommendations on one side of the current count: since when, and its extreme."""

    since: float | None = None
    extreme: int = 0


class Autoscaler:
    """Target tracking for one pool (see module docstring)."""

    def __init__(
        self,
        target: float,
        min_replicas: int,
        max_replicas: int,
        upscale_delay: float = 30.0,
        downscale_delay: float = 600.0,
        max_step_up: int | None = None,
        max_step_down: int | None = None,
        tolerance: float = 0.1,
    ) -> None:
        if target <= 0:
            raise ValueError("target must be positive")
        if not 0 <= min_replicas <= max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        self.target = target
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.upscale_delay = upscale_delay
        self.downscale_delay = downscale_delay
        self.max_step_up = max_step_up or max_replicas
        self.max_step_down = max_step_down or max_replicas
        self.tolerance = tolerance
        self._up = _Streak()
        self._down = _Streak()

    @classmethod
    def from_spec(cls, spec: AutoscalerSpec) -> Autoscaler:
        return cls(
            spec.target,
            spec.min_replicas,
            spec.max_replicas,
            spec.upscale_delay,
            spec.downscale_delay,
            spec.max_step_up,
            spec.max_step_down,
            spec.tolerance,
        )

    def recommend(self, current: int, serving: int, observed: float) -> int:
        """Rules 1 and 2: the count this one reading asks for."""
        if serving == 0:
            return current
        ratio = observed / self.target
        wanted = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(serving * ratio - 1e-9)
        return min(self.max_replicas, max(self.min_replicas, wanted))

    def decide(self, now: float, current: int, serving: int, observed: float, waiting: int = 0) -> ScaleDecision | None:
        """One reading: ``current`` replicas wanted so far, ``serving`` of them answering.

        ``waiting`` counts requests for the pool that no replica holds (only read at zero).
        Returns a decision when the wanted count changes.
        """
        if serving == 0 and current == 0:
            if waiting > 0:
                return self._change(now, current, max(1, self.min_replicas), "from_zero")
            return None
        wanted = self.recommend(current, serving, observed)
        if wanted > current:
            self._down = _Streak()
            streak = self._up
            streak.extreme = wanted if streak.since is None else min(streak.extreme, wanted)
            streak.since = now if streak.since is None else streak.since
            if now - streak.since >= self.upscale_delay:
                return self._change(now, current, min(streak.extreme, current + self.max_step_up), "up")
        elif wanted < current:
            self._up = _Streak()
            streak = self._down
            streak.extreme = wanted if streak.since is None else max(streak.extreme, wanted)
            streak.since = now if streak.since is None else streak.since
            if now - streak.since >= self.downscale_delay:
                return self._change(now, current, max(streak.extreme, current - self.max_step_down), "down")
        else:
            self._up, self._down = _Streak(), _Streak()
        return None

    def _change(self, now: float, current: int, desired: int, reason: str) -> ScaleDecision:
        """Act: both streaks start over, since they were measured against the old count."""
        self._up, self._down = _Streak(), _Streak()
        return ScaleDecision(now, current, desired, reason)
