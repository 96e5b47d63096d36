"""The cache-aware routers' indexes pick exactly what their scans pick.

Watched by a driver that reports every change (the gateway), :class:`PrefixAffinity` and
:class:`SessionAffinity` keep a census of available replicas and load per tier instead of
passing over the pool per request. A choice that moved would move records, so each test walks
random fleet states — loads, outages, exclusions, two tiers, prefixes and sessions — and asks a
watched router and an unwatched one (the scan) over the same views, call by call. Hypothesis
draws the fleet, the load factor and the walk's seed. (:class:`CacheAware` keeps no index: see
its docstring.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.policy.cache_routing import PrefixAffinity, SessionAffinity
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
