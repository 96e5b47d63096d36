"""Where a new replica's devices come from: quotas, stockouts, and spot with on-demand fallback.

Rules:

* **Quota** — a region grants at most ``quota[(region, device)]`` devices of a kind at once
  (cloud GPU quotas are per region and instance family). A replica holds ``tensor_parallel``
  devices from the moment its node is granted until it is gone. No quota named: unlimited.
* **Stockout** — while a stockout is active for a region and device kind (optionally only one
  market, e.g. spot), no new devices of that kind are granted there; replicas already running
  keep theirs. A grant refused is retried by the plane at its next decision.
* **Spot** — a pool with a spot share asks for spot while the share of spot among its live
  replicas is below it. After a preemption in a region, or a spot request refused there, the
  region asks for on-demand for ``fallback_hold`` seconds (SkyServe's dynamic fallback), unless
  fallback is off. A spot replica is reclaimed after an exponential lifetime at
  ``preemption_rate``; the provider warns ``notice`` seconds before (AWS 2 min, GCP 30 s).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from testbed.spec import SpotSpec

MARKETS = ("on_demand", "spot")


@dataclass(frozen=True, slots=True)
class Stockout:
    region: str
    device: str | None  # None: every kind
    start: float
    end: float
    market: str | None = None  # None: both markets

    def blocks(self, region: str, device: str, market: str, now: float) -> bool:
        return (
            self.start <= now < self.end
            and region == self.region
            and self.device in (None, device)
            and self.market in (None, market)
        )


@dataclass(slots=True)
class CapacityLedger:
    """Devices granted per (region, device kind) against quotas and stockouts."""

    quotas: dict[tuple[str, str], int] = field(default_factory=dict)
    stockouts: list[Stockout] = field(default_factory=list)
    in_use: dict[tuple[str, str], int] = field(default_factory=dict)

    def refusal(self, region: str, device: str, devices: int, market: str, now: float) -> str | None:
        """Why a grant of ``devices`` would be refused now ("stockout", "quota"), or None."""
        if any(s.blocks(region, device, market, now) for s in self.stockouts):
            return "stockout"
        quota = self.quotas.get((region, device))
        if quota is not None and self.in_use.get((region, device), 0) + devices > quota:
            return "quota"
        return None

    def grant(self, region: str, device: str, devices: int) -> None:
        key = (region, device)
        self.in_use[key] = self.in_use.get(key, 0) + devices

    def release(self, region: str, device: str, devices: int) -> None:
        key = (region, device)
        if self.in_use.get(key, 0) < devices:
            raise ValueError(f"releasing {devices} {device} in {region} that were never granted")
        self.in_use[key] -= devices


class SpotMarket:
    """Which market a pool's next replica asks for, and when spot replicas are reclaimed."""

    def __init__(self, share: float, rate_per_s: float, notice: float | None, fallback: bool, hold: float, rng: random.Random) -> None:
        self.share = share
        self.rate = rate_per_s
        self.notice = notice
        self.fallback = fallback
        self.hold = hold
        self.rng = rng
        self._on_demand_until: dict[str, float] = {}

    @classmethod
    def from_spec(cls, spec: SpotSpec, rng: random.Random) -> SpotMarket:
        return cls(spec.share, spec.preemption_rate, spec.notice, spec.fallback == "on_demand", spec.fallback_hold, rng)

    def wants_spot(self, spot_live: int, total_live: int) -> bool:
        """Whether the next replica should be spot to keep the pool at its spot share."""
        return self.share > 0 and spot_live < self.share * (total_live + 1) - 1e-9

    def choose(self, region: str, spot_live: int, total_live: int, now: float) -> str:
        """``spot`` while spot is below its share of the pool, unless the region is falling back."""
        if not self.wants_spot(spot_live, total_live) or now < self._on_demand_until.get(region, float("-inf")):
            return "on_demand"
        return "spot"

    def on_spot_refused(self, region: str, now: float) -> str | None:
        """A spot request was refused; returns the market to ask instead now (None: wait)."""
        if not self.fallback:
            return None
        self._on_demand_until[region] = now + self.hold
        return "on_demand"

    def on_preempted(self, region: str, now: float) -> None:
        if self.fallback:
            self._on_demand_until[region] = now + self.hold

    def lifetime(self) -> float:
        """Seconds until a new spot replica is reclaimed (infinite at rate 0)."""
        return self.rng.expovariate(self.rate) if self.rate > 0 else float("inf")

    def notice_for(self, provider_notice: float) -> float:
        return provider_notice if self.notice is None else self.notice
