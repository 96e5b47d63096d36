"""Routing policies: which replica serves a request, decided from the fleet as it is right now.

A router is built once over the fleet's replica views and then asked :meth:`Router.choose` per
request. The driver (the SimPy engine or the live gateway) owns the views and mutates them in
place — ``outstanding`` as requests start and end, ``available`` as replicas go down, are ejected
or come back — so a router keeps no copy of fleet state and builds no candidate list per call.
The simulator routes about a million requests over about a thousand replicas, so
:class:`RoundRobin`, :class:`PowerOfTwo` and :class:`RegionAffine` cost O(1) expected per call
while most replicas are available; only when a whole pool is down do they scan it.

Every router applies the same **tier rule**: choose among available primary-tier replicas; only
if none is available, among available fallback-tier replicas (e.g. CPU-quantized hosts); if none
of those either, return ``None`` and let the driver fail the request.

Randomness comes only from the ``random.Random`` passed in, so a seeded run routes identically.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from testbed.spec import RoutingSpec

TIERS = ("primary", "fallback")

# Random draws power-of-two choices makes before it gives up on luck and scans its pool. With
# half the pool down, eight draws miss two live replicas with probability 9/256.
_DRAWS = 8


class ReplicaView(Protocol):
    """What a router may read about a replica; the driver keeps it current."""

    index: int
    region: str  # "provider/region", e.g. "aws/us-east-1"
    tier: str  # "primary" | "fallback"
    outstanding: int  # requests routed to it and not yet finished
    available: bool  # False while the replica is down or ejected


R = TypeVar("R", bound=ReplicaView)
R_co = TypeVar("R_co", bound=ReplicaView, covariant=True)


class Router(Protocol[R_co]):
    def choose(self, client_region: str, now: float) -> R_co | None:
        """The replica to send a request from ``client_region`` to, or None if none is available."""


def _tier_pools(replicas: Sequence[R]) -> tuple[list[R], list[R]]:
    """(primary, fallback) replicas, each ordered by index so ties and scans are deterministic."""
    pools: dict[str, list[R]] = {tier: [] for tier in TIERS}
    for replica in sorted(replicas, key=lambda r: r.index):
        if replica.tier not in pools:
            raise ValueError(f"replica {replica.index} has tier {replica.tier!r}; expected one of {TIERS}")
        pools[replica.tier].append(replica)
    return pools["primary"], pools["fallback"]


def _two_choices(pool: Sequence[R], rng: random.Random) -> R | None:
    """Power-of-two choices over the available replicas of ``pool``: the less loaded of two.

    Draws random indices until it has two distinct available replicas; after ``_DRAWS`` misses
    (a pool mostly down) it scans the pool instead, which is O(len(pool)).
    """
    n = len(pool)
    first: R | None = None
    if n > 1:
        for _ in range(_DRAWS):
            candidate = pool[rng.randrange(n)]
            if not candidate.available or candidate is first:
                continue
            if first is None:
                first = candidate
                continue
            return first if first.outstanding <= candidate.outstanding else candidate
    live = [r for r in pool if r.available]
    if len(live) < 2:
        return live[0] if live else None
    a, b = rng.sample(live, 2)
    return a if a.outstanding <= b.outstanding else b


class RoundRobin(Generic[R]):
    """Each available replica in turn; a down replica is skipped without giving its turn away.

    The cursor moves past the replica chosen, so over any stretch in which availability does not
    change every available replica of the tier is chosen equally often (to within one).
    """

    def __init__(self, replicas: Sequence[R]) -> None:
        self._pools = _tier_pools(replicas)
        self._cursors = [0, 0]

    def choose(self, client_region: str, now: float) -> R | None:
        for tier, pool in enumerate(self._pools):
            n = len(pool)
            start = self._cursors[tier]
            for step in range(n):
                position = (start + step) % n
                replica = pool[position]
                if replica.available:
                    self._cursors[tier] = (position + 1) % n
                    return replica
        return None


class LeastOutstanding(Generic[R]):
    """The available replica with the fewest outstanding requests; ties go to the lowest index.

    This is an O(n) scan per call — exact but slow on a large fleet, where :class:`PowerOfTwo`
    gets nearly the same balance in O(1).
    """

    def __init__(self, replicas: Sequence[R]) -> None:
        self._pools = _tier_pools(replicas)

    def choose(self, client_region: str, now: float) -> R | None:
        for pool in self._pools:
            best: R | None = None
            for replica in pool:
                if replica.available and (best is None or replica.outstanding < best.outstanding):
                    best = replica
            if best is not None:
                return best
        return None


class PowerOfTwo(Generic[R]):
    """Power-of-two choices (Mitzenmacher): the less loaded of two random available replicas.

    Sampling two instead of one cuts the maximum load from about log n / log log n above the mean
    to about log log n, at O(1) per call and without a global view.
    """

    def __init__(self, replicas: Sequence[R], rng: random.Random) -> None:
        self._pools = _tier_pools(replicas)
        self._rng = rng

    def choose(self, client_region: str, now: float) -> R | None:
        for pool in self._pools:
            pick = _two_choices(pool, self._rng)
            if pick is not None:
                return pick
        return None


class RegionAffine(Generic[R]):
    """Stay in the client's nearest region until it is loaded, then spill to the next nearest.

    For each client region the replica regions are ordered by RTT (ties by name), once, on first
    use. A request goes to the power-of-two pick of the nearest region unless that pick already
    has ``spill_threshold`` or more outstanding requests; then the next region is tried, and so
    on. If every region's pick is over the threshold, the least loaded pick wins (the nearest on
    ties). Regions with no available replica are skipped, which is how a region outage fails
    over to the next nearest region.
    """

    def __init__(
        self,
        replicas: Sequence[R],
        rtt: Callable[[str, str], float],
        rng: random.Random,
        spill_threshold: int,
    ) -> None:
        self._rtt = rtt
        self._rng = rng
        self._threshold = spill_threshold
        self._regions: list[dict[str, list[R]]] = []
        for pool in _tier_pools(replicas):
            by_region: dict[str, list[R]] = {}
            for replica in pool:
                by_region.setdefault(replica.region, []).append(replica)
            self._regions.append(by_region)
        self._order: dict[str, list[list[list[R]]]] = {}

    def _ordered(self, client_region: str) -> list[list[list[R]]]:
        """Per tier, that tier's region pools nearest first as seen from ``client_region``."""
        order = self._order.get(client_region)
        if order is None:
            order = [
                [by_region[name] for name in sorted(by_region, key=lambda r: (self._rtt(client_region, r), r))]
                for by_region in self._regions
            ]
            self._order[client_region] = order
        return order

    def choose(self, client_region: str, now: float) -> R | None:
        for region_pools in self._ordered(client_region):
            best: R | None = None
            for pool in region_pools:
                pick = _two_choices(pool, self._rng)
                if pick is None:
                    continue
                if pick.outstanding < self._threshold:
                    return pick
                if best is None or pick.outstanding < best.outstanding:
                    best = pick
            if best is not None:
                return best
        return None


def make_router(
    spec: RoutingSpec,
    replicas: Sequence[R],
    rtt: Callable[[str, str], float],
    rng: random.Random,
) -> Router[R]:
    """The router ``spec`` names, over ``replicas`` (views the driver keeps current)."""
    if spec.policy == "round_robin":
        return RoundRobin(replicas)
    if spec.policy == "least_outstanding":
        return LeastOutstanding(replicas)
    if spec.policy == "power_of_two":
        return PowerOfTwo(replicas, rng)
    if spec.policy == "region_affine":
        return RegionAffine(replicas, rtt, rng, spec.spill_threshold)
    raise ValueError(f"unknown routing policy {spec.policy!r}")
