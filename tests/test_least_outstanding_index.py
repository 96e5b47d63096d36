"""The least-outstanding index picks exactly what the scan picks.

Once a driver watches a :class:`LeastOutstanding` router and reports every change, it answers
from per-tier heaps instead of scanning; the choice, the lowest-index tie-break, the tier rule
and the exclusion rule must not move, or records change. A seeded random walk of loads,
outages and exclusions over two tiers compares a watched router with an unwatched one (the
scan) on the same views, call by call; the gateway test checks the gateway watches it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from testbed.policy.gateway import Gateway, ReplicaState
from testbed.policy.routing import LeastOutstanding
from testbed.spec import ServingSpec


@dataclass(eq=False)
class View:
    index: int
    region: str = "a/east"
    tier: str = "primary"
    outstanding: int = 0
    available: bool = True


def test_watched_router_chooses_as_the_scan_does() -> None:
    rng = random.Random(7)
    views = [View(i, tier="fallback" if i % 5 == 0 else "primary") for i in range(40)]
    rng.shuffle(views)  # pools are ordered by index whatever the driver's order
    indexed, scan = LeastOutstanding(views), LeastOutstanding(views)
    watched = indexed.watch()
    assert sorted(v.index for v in watched) == list(range(40))
    by_index = {v.index: v for v in views}
    for step in range(20_000):
        view = by_index[rng.randrange(40)]
        roll = rng.random()
        if roll < 0.45:
            view.outstanding += 1
        elif roll < 0.9 and view.outstanding:
            view.outstanding -= 1
        elif roll < 0.97:
            view.available = not view.available
        indexed.moved(view)
        exclude = {rng.randrange(40) for _ in range(rng.randrange(4))}
        assert indexed.choose("a/east", 0.0, exclude) is scan.choose("a/east", 0.0, exclude), step
    assert len(indexed._heaps[0]) <= 2 * len(indexed._pools[0]) + 65  # stale entries stay bounded


def test_every_replica_excluded_or_down_gives_none() -> None:
    views = [View(i) for i in range(4)]
    router = LeastOutstanding(views)
    router.watch()
    views[3].available = False
    router.moved(views[3])
    assert router.choose("a/east", 0.0, {0, 1, 2}) is None
    assert router.choose("a/east", 0.0, {0, 2}) is views[1]  # and the excluded entries came back
    assert router.choose("a/east", 0.0) is views[0]


def test_the_gateway_watches_a_least_outstanding_router() -> None:
    replicas = [ReplicaState(i, "a/east", "primary", capacity=8) for i in range(3)]
    gateway = Gateway(ServingSpec.model_validate({"routing": {"policy": "least_outstanding"}}), replicas, ["a/east"],
                      lambda a, b: 0.0, random.Random(1))
    (router,) = set(gateway.routers.values())
    assert router._heaps is not None
    picks = [gateway.on_arrival(rid, 0, "a/east", 0.0)[0].replica for rid in range(6)]
    assert picks == [0, 1, 2, 0, 1, 2]
