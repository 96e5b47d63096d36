"""Routing policies: which replica serves a request, decided from the fleet as it is right now.

A router is built once over the fleet's replica views and then asked :meth:`Router.choose` per
request. The driver (the SimPy engine or the live gateway) owns the views and mutates them in
place — ``outstanding`` as requests start and end, ``available`` as replicas go down, are ejected
or come back — so a router keeps no copy of fleet state and builds no candidate list per call.
The simulator routes about a million requests over about a thousand replicas, so
:class:`RoundRobin`, :class:`PowerOfTwo` and :class:`RegionAffine` cost O(1) expected per call
while most replicas are available; only when a whole pool is down do they scan it.
:class:`LeastOutstanding` costs O(log n) once the driver reports changes to it (see its
docstring), as the gateway does.

Every router applies the same **tier rule**: choose among available primary-tier replicas; only
if none is available, among available fallback-tier replicas (e.g. CPU-quantized hosts); if none
of those either, return ``None`` and let the driver fail the request.

And the same **exclusion rule**: ``choose`` takes ``exclude``, the indices of replicas this
request must not be sent to (those it already tried, those whose breaker refuses it), and treats
them as unavailable: an excluded replica is never returned while another is available, and
``None`` means every available replica is excluded. Exclusions are a handful of indices, so
checking them keeps every router's cost per call as stated.

Routers are found by name in :data:`ROUTERS` (the spec's ``routing.policy``); a new router
registers itself there with :func:`register` and both planes can use it.

Randomness comes only from the ``random.Random`` passed in, so a seeded run routes identically.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection, Sequence
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


Exclude = Collection[int]  # replica indices a request must not be sent to (indexed routers iterate them)
NONE_EXCLUDED: tuple[int, ...] = ()


class Router(Protocol[R_co]):
    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R_co | None:
        """The replica to send a request from ``client_region`` to, never one in ``exclude``;
        None if no replica outside ``exclude`` is available."""


class Watched(Protocol[R]):
    """A router that keeps an index over its views, fed by the driver (see :class:`LeastOutstanding`)."""

    def watch(self) -> Sequence[R]:
        """Start indexing; the views whose changes the driver must report to :meth:`moved`."""

    def moved(self, replica: R) -> None:
        """``replica``'s ``outstanding`` or ``available`` just changed."""


def _tier_pools(replicas: Sequence[R]) -> tuple[list[R], list[R]]:
    """(primary, fallback) replicas, each ordered by index so ties and scans are deterministic."""
    pools: dict[str, list[R]] = {tier: [] for tier in TIERS}
    for replica in sorted(replicas, key=lambda r: r.index):
        if replica.tier not in pools:
            raise ValueError(f"replica {replica.index} has tier {replica.tier!r}; expected one of {TIERS}")
        pools[replica.tier].append(replica)
    return pools["primary"], pools["fallback"]


def _below(rng: random.Random, n: int) -> int:
    """``rng.randrange(n)`` for ``n >= 1``, the very same draw: CPython's ``randrange`` takes
    ``getrandbits(n.bit_length())`` until it is below ``n``. Called directly it skips
    ``randrange``'s argument checks, a third of a routing decision's time."""
    bits = n.bit_length()
    value = rng.getrandbits(bits)
    while value >= n:
        value = rng.getrandbits(bits)
    return value


def _two_choices(pool: Sequence[R], rng: random.Random, exclude: Exclude) -> R | None:
    """Power-of-two choices over the available replicas of ``pool``: the less loaded of two.

    Draws random indices until it has two distinct available replicas; after ``_DRAWS`` misses
    (a pool mostly down) it scans the pool instead, which is O(len(pool)).
    """
    n = len(pool)
    first: R | None = None
    if n > 1:
        for _ in range(_DRAWS):
            candidate = pool[_below(rng, n)]
            if not candidate.available or candidate is first or candidate.index in exclude:
                continue
            if first is None:
                first = candidate
                continue
            return first if first.outstanding <= candidate.outstanding else candidate
    live = [r for r in pool if r.available and r.index not in exclude]
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

    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        for tier, pool in enumerate(self._pools):
            n = len(pool)
            start = self._cursors[tier]
            for step in range(n):
                position = (start + step) % n
                replica = pool[position]
                if replica.available and replica.index not in exclude:
                    self._cursors[tier] = (position + 1) % n
                    return replica
        return None


class LoadHeap(Generic[R]):
    """Some replicas by ``(outstanding, position)``, for the least loaded available one in
    O(log n) amortised instead of a pass over them.

    A heap of entries kept lazily: the owner reports every change of a member's ``outstanding``
    or ``available`` (:meth:`moved`), which pushes one entry; an entry is stale once its replica
    is unavailable or has another count, and is popped when it surfaces. When stale entries
    outnumber the members twice over, the heap is rebuilt. Ties go to the lower position, so
    members listed by index tie as a scan over them does.
    """

    def __init__(self, members: Sequence[R]) -> None:
        self.members = list(members)
        self._heap = self._built()

    def __len__(self) -> int:
        """Entries held, stale ones included (bounded by the rebuild)."""
        return len(self._heap)

    def _built(self) -> list[tuple[int, int]]:
        heap = [(r.outstanding, pos) for pos, r in enumerate(self.members) if r.available]
        heapq.heapify(heap)
        return heap

    def moved(self, pos: int) -> None:
        """The member at ``pos`` changed its ``outstanding`` or ``available``."""
        replica = self.members[pos]
        if len(self._heap) > 2 * len(self.members) + 64:  # mostly stale entries: rebuild, O(1) amortised
            self._heap = self._built()
        elif replica.available:
            heapq.heappush(self._heap, (replica.outstanding, pos))

    def least(self, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        """The available member outside ``exclude`` with the fewest outstanding (lowest position on
        ties), or None. Excluded members are popped aside and pushed back: a handful per call."""
        heap, members = self._heap, self.members
        aside: list[tuple[int, int]] = []
        pick: R | None = None
        while heap:
            load, pos = heap[0]
            replica = members[pos]
            if not replica.available or replica.outstanding != load:
                heapq.heappop(heap)
            elif replica.index in exclude:
                aside.append(heapq.heappop(heap))
            else:
                pick = replica
                break
        for entry in aside:
            heapq.heappush(heap, entry)
        return pick


class LeastOutstanding(Generic[R]):
    """The available replica with the fewest outstanding requests; ties go to the lowest index.

    A router cannot see views change, so on its own it scans its pools: O(n) per call. A driver
    that reports every change of a replica's ``outstanding`` or ``available`` calls
    :meth:`watch` once and then :meth:`moved` after each change (the gateway does, in both
    planes); from then on each tier keeps a :class:`LoadHeap`, so both cost O(log n) amortised
    and pick exactly what the scan would.
    """

    def __init__(self, replicas: Sequence[R]) -> None:
        self._pools = _tier_pools(replicas)
        self._heaps: list[LoadHeap[R]] | None = None  # per tier, once watched
        self._where = {r.index: (tier, pos) for tier, pool in enumerate(self._pools) for pos, r in enumerate(pool)}

    def watch(self) -> list[R]:
        """Index from now on; returns the replicas whose changes the caller must report to :meth:`moved`."""
        self._heaps = [LoadHeap(pool) for pool in self._pools]
        return [r for pool in self._pools for r in pool]

    def moved(self, replica: R) -> None:
        """``replica``'s ``outstanding`` or ``available`` just changed."""
        tier, pos = self._where[replica.index]
        self._heaps[tier].moved(pos)  # type: ignore[index]

    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        if self._heaps is None:
            return self._scan(exclude)
        for heap in self._heaps:
            pick = heap.least(exclude)
            if pick is not None:
                return pick
        return None

    def _scan(self, exclude: Exclude) -> R | None:
        for pool in self._pools:
            best: R | None = None
            for replica in pool:
                if replica.available and replica.index not in exclude and (best is None or replica.outstanding < best.outstanding):
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

    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        for pool in self._pools:
            pick = _two_choices(pool, self._rng, exclude)
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

    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        for region_pools in self._ordered(client_region):
            best: R | None = None
            for pool in region_pools:
                pick = _two_choices(pool, self._rng, exclude)
                if pick is None:
                    continue
                if pick.outstanding < self._threshold:
                    return pick
                if best is None or pick.outstanding < best.outstanding:
                    best = pick
            if best is not None:
                return best
        return None


# Builds a router over the fleet's views from the spec, the RTT between regions and the
# policy's random stream; each takes what it needs.
RouterFactory = Callable[[RoutingSpec, Sequence[ReplicaView], Callable[[str, str], float], random.Random], Router]

ROUTERS: dict[str, RouterFactory] = {}


def register(name: str, factory: RouterFactory) -> None:
    """Make ``factory`` the router for ``routing.policy: name`` in both planes."""
    if name in ROUTERS:
        raise ValueError(f"a router named {name!r} is already registered")
    ROUTERS[name] = factory


register("round_robin", lambda spec, replicas, rtt, rng: RoundRobin(replicas))
register("least_outstanding", lambda spec, replicas, rtt, rng: LeastOutstanding(replicas))
register("power_of_two", lambda spec, replicas, rtt, rng: PowerOfTwo(replicas, rng))
register("region_affine", lambda spec, replicas, rtt, rng: RegionAffine(replicas, rtt, rng, spec.spill_threshold))


def make_router(
    spec: RoutingSpec,
    replicas: Sequence[R],
    rtt: Callable[[str, str], float],
    rng: random.Random,
) -> Router[R]:
    """The router ``spec`` names (see :data:`ROUTERS`), over ``replicas`` (views the driver keeps current)."""
    factory = ROUTERS.get(spec.policy)
    if factory is None:
        raise ValueError(f"unknown routing policy {spec.policy!r}; registered: {', '.join(ROUTERS)}")
    return factory(spec, replicas, rtt, rng)
