"""Prefix affinity's ring walk picks exactly what the walk it replaced picked.

The walk looks for the first replica clockwise from the prefix's point that is usable and below
the load bound. It used to keep a set of the replicas seen and the least loaded one so far at
every point; now it reads the ring in slices and tests only "usable and below the bound", and
falls back to the full walk only when no replica is below it. A choice that moved would move
records, so this test keeps the old walk as the reference and asks both over random fleets —
loads piled on the points of a few hot prefixes (as a shared system prompt piles them), outages,
exclusions, two tiers, and load factors under 1, where every replica can be at the bound.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.policy.cache_routing import PrefixAffinity, prefix_key
from testbed.policy.prefix_cache import Prefix


@dataclass(eq=False)
class View:
    index: int
    tier: str = "primary"
    region: str = "a/east"
    outstanding: int = 0
    available: bool = True


def reference_walk(router: PrefixAffinity[View], prefix: Prefix, exclude: list[int]) -> View | None:
    """The walk as it was: every point, a set of replicas seen, the least loaded kept."""
    key = prefix_key(prefix.leading(router._blocks))
    for tier, (pool, (points, owners)) in enumerate(zip(router._pools, router._rings)):
        live, load = router._live(tier, pool, exclude)
        if not live:
            continue
        bound = math.ceil(router._factor * (load + 1) / live)
        start = bisect.bisect_left(points, key)
        best: View | None = None
        seen: set[int] = set()
        for step in range(len(points)):
            replica = owners[(start + step) % len(points)]
            if replica.index in seen or not replica.available or replica.index in exclude:
                continue
            seen.add(replica.index)
            if replica.outstanding < bound:
                return replica
            if best is None or replica.outstanding < best.outstanding:
                best = replica
            if len(seen) == live:
                break
        return best
    return None


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    fallback_every=st.sampled_from([0, 3, 7]),
    load_factor=st.sampled_from([0.5, 0.9, 1.05, 1.25, 3.0]),
    watched=st.booleans(),
)
def test_the_sliced_walk_chooses_as_the_full_walk_does(
    seed: int, n: int, fallback_every: int, load_factor: float, watched: bool
) -> None:
    rng = random.Random(seed)
    fleet = [View(i, tier="fallback" if fallback_every and i % fallback_every == 0 else "primary") for i in range(n)]
    router = PrefixAffinity(fleet, random.Random(1), 2, load_factor)
    if watched:
        router.watch()
    hot = [Prefix(((1_000 * k, 2),), 16) for k in range(3)]  # few points, much traffic: long walks
    for call in range(200):
        prefix = rng.choice(hot) if rng.random() < 0.8 else Prefix(((10**6 + rng.randrange(500), 3),), 16)
        exclude = [rng.randrange(n) for _ in range(rng.randrange(4))]
        expected = reference_walk(router, prefix, exclude)
        assert router.choose_for("a/east", prefix, 0.0, exclude) is expected, call
        # Move the fleet as a driver would: the chosen replica takes the request, others finish
        # or go down, and the router is told of each change when it is watched.
        moved = [expected] if expected is not None else []
        if expected is not None:
            expected.outstanding += 1
        for view in rng.sample(fleet, k=min(n, 2)):
            roll = rng.random()
            if roll < 0.5 and view.outstanding:
                view.outstanding -= 1
            elif roll < 0.55:
                view.available = not view.available
            moved.append(view)
        if watched:
            for view in moved:
                router.moved(view)
