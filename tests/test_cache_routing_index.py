"""The cache-aware routers' indexes pick exactly what their scans pick.

Watched by a driver that reports every change (the gateway), :class:`PrefixAffinity` and
:class:`SessionAffinity` keep a census of available replicas and load per tier, and
:class:`CacheAware` holders per block and load orders, instead of passing over the pool per
request. A choice that moved would move records, so each test walks random fleet states —
loads, outages, exclusions, two tiers, prefixes and sessions, and for the scorer beliefs that
fill and evict, mixed slot counts and weights that make scores tie — and asks a watched router
and an unwatched one (the scan) over the same views, call by call. Hypothesis draws the fleet,
the weights and the walk's seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.policy import cache_routing
from testbed.policy.cache_routing import CacheAware, PrefixAffinity, SessionAffinity
from testbed.policy.gateway import Gateway, ReplicaState
from testbed.policy.prefix_cache import Prefix
from testbed.spec import ServingSpec


@dataclass(eq=False)
class View:
    index: int
    region: str = "a/east"
    tier: str = "primary"
    outstanding: int = 0
    available: bool = True
    capacity: int = 8


def views(rng: random.Random, n: int, fallback_every: int, capacities: list[int]) -> list[View]:
    fleet = [
        View(i, tier="fallback" if fallback_every and i % fallback_every == 0 else "primary", capacity=rng.choice(capacities))
        for i in range(n)
    ]
    rng.shuffle(fleet)  # pools are ordered by index whatever the driver's order
    return fleet


def chain(rng: random.Random, session: int = -1) -> Prefix:
    """Mostly a system prompt's run (one of four: widely held) then a conversation's (narrowly
    held); sometimes a conversation alone, so a narrowly held block can lead a chain too."""
    system = (1_000 * rng.randrange(4), rng.randrange(1, 6))
    conversation = (10**6 + 100 * rng.randrange(40), rng.randrange(0, 8))
    runs = tuple(run for run in (system if rng.random() < 0.8 else None, conversation) if run and run[1])
    return Prefix(runs or (system,), 16, session)


def step(rng: random.Random, fleet: list[View]) -> View:
    """Move one replica's load or availability."""
    view = rng.choice(fleet)
    roll = rng.random()
    if roll < 0.45:
        view.outstanding += rng.randrange(1, 6)
    elif roll < 0.9 and view.outstanding:
        view.outstanding -= rng.randrange(1, view.outstanding + 1)
    elif roll < 0.97:
        view.available = not view.available
    return view


def exclusion(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(n) for _ in range(rng.randrange(4))]  # duplicates too, as a retry's tried list has


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    fallback_every=st.sampled_from([0, 3, 7]),
    load_factor=st.sampled_from([1.05, 1.25, 1.5, 3.0]),
)
def test_prefix_affinity_census_chooses_as_the_scan_does(seed: int, n: int, fallback_every: int, load_factor: float) -> None:
    rng = random.Random(seed)
    fleet = views(rng, n, fallback_every, [8])
    indexed = PrefixAffinity(fleet, random.Random(1), 4, load_factor)
    scan = PrefixAffinity(fleet, random.Random(1), 4, load_factor)
    indexed.watch()
    for call in range(300):
        indexed.moved(step(rng, fleet))
        prefix, exclude = chain(rng), exclusion(rng, n)
        assert indexed.choose_for("a/east", prefix, 0.0, exclude) is scan.choose_for("a/east", prefix, 0.0, exclude), call


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20), fallback_every=st.sampled_from([0, 2, 3]))
def test_session_affinity_census_chooses_as_the_scan_does(seed: int, n: int, fallback_every: int) -> None:
    rng = random.Random(seed)
    fleet = views(rng, n, fallback_every, [8])
    # Both draw their spills from equal random streams, so they stay in step call by call.
    indexed = SessionAffinity(fleet, random.Random(5), spill_threshold=3)
    scan = SessionAffinity(fleet, random.Random(5), spill_threshold=3)
    indexed.watch()
    for call in range(300):
        indexed.moved(step(rng, fleet))
        prefix, exclude = chain(rng, session=rng.randrange(6)), exclusion(rng, n)
        assert indexed.choose_for("a/east", prefix, 0.0, exclude) is scan.choose_for("a/east", prefix, 0.0, exclude), call


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    fallback_every=st.sampled_from([0, 3, 7]),
    capacities=st.sampled_from([[8], [3, 9], [0, 1, 2], [6, 8, 9, 128]]),
    cache_weight=st.sampled_from([0.0, 0.3, 1.0, 4.0]),
    load_weight=st.sampled_from([0.0, 1e-12, 0.1, 1.0, 3.0]),
    belief_blocks=st.sampled_from([0, 6, 24]),
    few_holders=st.sampled_from([0, 2, 8]),
)
def test_cache_aware_index_chooses_as_the_scan_does(
    seed: int,
    n: int,
    fallback_every: int,
    capacities: list[int],
    cache_weight: float,
    load_weight: float,
    belief_blocks: int,
    few_holders: int,
) -> None:
    """Slot counts 3 and 9 (and a load weight of 0.1) give equal loads scores a rounding apart;
    a weight of 1e-12 makes loads vanish beside the share; 0 slots count as 1; small beliefs
    evict, so the holder index must forget as the beliefs do; the threshold between scoring a
    block's holders and keeping them by load is lowered so both ways are taken on small fleets
    (which are indexed here, though the router would scan them)."""
    saved = cache_routing._FEW_HOLDERS, cache_routing._SCAN_UP_TO
    cache_routing._FEW_HOLDERS, cache_routing._SCAN_UP_TO = few_holders, 0  # index fleets of any size
    try:
        walk_cache_aware(random.Random(seed), n, fallback_every, capacities, cache_weight, load_weight, belief_blocks)
    finally:
        cache_routing._FEW_HOLDERS, cache_routing._SCAN_UP_TO = saved


def walk_cache_aware(
    rng: random.Random, n: int, fallback_every: int, capacities: list[int], cache_weight: float, load_weight: float, belief_blocks: int
) -> None:
    fleet = views(rng, n, fallback_every, capacities)
    tokens = {v.index: belief_blocks * 16 for v in fleet}
    indexed = CacheAware(fleet, random.Random(1), cache_weight, load_weight, tokens)
    scan = CacheAware(fleet, random.Random(1), cache_weight, load_weight, tokens)
    indexed.watch()
    for call in range(300):
        indexed.moved(step(rng, fleet))
        prefix, exclude = chain(rng), exclusion(rng, n)
        pick = indexed.choose_for("a/east", prefix, 0.0, exclude)
        assert pick is scan.choose_for("a/east", prefix, 0.0, exclude), call
        if pick is not None and rng.random() < 0.8:  # most picks are routed there, as the gateway does
            for router in (indexed, scan):
                router.routed(pick.index, prefix)
            pick.outstanding += 1
            indexed.moved(pick)
        elif rng.random() < 0.5:  # and some beliefs come from elsewhere (a retry's, a hedge's)
            other = rng.randrange(n)
            for router in (indexed, scan):
                router.routed(other, prefix)
    # Evictions leave no holder behind (a missing holder would have moved a choice above).
    assert all(indexed.beliefs[r].holds(block) for block, held in indexed._holders.items() for r in held)


def test_the_gateway_watches_the_indexed_cache_routers() -> None:
    for policy in ("prefix_affinity", "session_affinity"):
        replicas = [ReplicaState(i, "a/east", "primary", capacity=8, kv_tokens=1 << 16) for i in range(3)]
        gateway = Gateway(ServingSpec.model_validate({"routing": {"policy": policy}}), replicas, ["a/east"],
                          lambda a, b: 0.0, random.Random(1))
        (router,) = set(gateway.routers.values())
        assert [len(w) for w in gateway._watchers] == [1, 1, 1], policy
        for rid in range(6):
            gateway.on_arrival(rid, 0, "a/east", 0.0, prefix=Prefix(((100, 4),), 16, session=rid % 2))
        assert sum(r.outstanding for r in replicas) == 6


def test_the_gateway_watches_the_cache_aware_scorer_beyond_a_small_fleet() -> None:
    for n, watched in ((cache_routing._SCAN_UP_TO, 0), (cache_routing._SCAN_UP_TO + 1, 1)):
        replicas = [ReplicaState(i, "a/east", "primary", capacity=8, kv_tokens=1 << 16) for i in range(n)]
        gateway = Gateway(ServingSpec.model_validate({"routing": {"policy": "cache_aware"}}), replicas, ["a/east"],
                          lambda a, b: 0.0, random.Random(1))
        assert [len(w) for w in gateway._watchers] == [watched] * n  # a small fleet is scored in full
        for rid in range(6):
            gateway.on_arrival(rid, 0, "a/east", 0.0, prefix=Prefix(((100, 4),), 16))
        assert replicas[0].outstanding == 6  # the prefix's holder: 1 - 5/8 still beats an idle replica's 0
