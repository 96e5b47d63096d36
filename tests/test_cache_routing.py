"""Cache-aware routers' choices on hand-built fleet states.

Rules: prefix affinity sends one prefix to one replica while it is up and under the load bound,
and walks the ring otherwise; the scorer prefers where it believes the prefix is cached unless
load outweighs it, and its belief is only what it routed (so it goes stale after a restart);
session affinity keeps a session on its replica and spills (re-pinning) when that replica is
loaded or down; all of them keep the tier rule.
"""

from __future__ import annotations

import random

from testbed.policy.cache_routing import CacheAware, PrefixAffinity, SessionAffinity
from testbed.policy.gateway import ReplicaState
from testbed.policy.prefix_cache import Prefix


def fleet(n: int = 4, fallback: int = 0) -> list[ReplicaState]:
    primary = [ReplicaState(i, "p/r", "primary", capacity=8) for i in range(n)]
    return primary + [ReplicaState(n + i, "p/f", "fallback", capacity=8) for i in range(fallback)]


def chain(root: int, blocks: int = 8, session: int = -1) -> Prefix:
    return Prefix(((root, blocks),), 16, session)


def test_prefix_affinity_maps_a_prefix_to_one_replica_and_spreads_prefixes():
    replicas = fleet(4)
    router = PrefixAffinity(replicas, random.Random(1), prefix_blocks=4, load_factor=1.25)
    picks = {router.choose_for("p/r", chain(100), 0.0).index for _ in range(10)}
    assert len(picks) == 1
    owners = {router.choose_for("p/r", chain(root * 1000), 0.0).index for root in range(200)}
    assert owners == {0, 1, 2, 3}
    # Only the leading blocks count: a longer chain with the same first 4 ids goes to the same place.
    assert router.choose_for("p/r", Prefix(((100, 4), (9999, 20)), 16), 0.0).index == picks.pop()


def test_prefix_affinity_walks_the_ring_past_a_loaded_or_down_replica():
    replicas = fleet(4)
    router = PrefixAffinity(replicas, random.Random(1), prefix_blocks=4, load_factor=1.25)
    home = router.choose_for("p/r", chain(7), 0.0)
    home.outstanding = 10  # bound: ceil(1.25 * 11 / 4) = 4
    spill = router.choose_for("p/r", chain(7), 0.0)
    assert spill is not home and spill.outstanding < 4
    home.outstanding, home.available = 0, False
    assert router.choose_for("p/r", chain(7), 0.0) is spill  # the next replica on the ring
    home.available = True
    assert router.choose_for("p/r", chain(7), 0.0) is home  # back: the prefix returns home


def test_prefix_affinity_keeps_the_tier_rule_and_routes_prefixless_requests_by_load():
    replicas = fleet(2, fallback=1)
    router = PrefixAffinity(replicas, random.Random(1), prefix_blocks=4, load_factor=1.25)
    assert all(router.choose_for("p/r", chain(r), 0.0).tier == "primary" for r in range(20))
    replicas[0].available = replicas[1].available = False
    assert router.choose_for("p/r", chain(3), 0.0) is replicas[2]
    replicas[0].available = replicas[1].available = True
    replicas[0].outstanding = 5
    assert router.choose_for("p/r", None, 0.0) is replicas[1]  # power of two over two replicas


def test_cache_aware_prefers_the_replica_believed_to_hold_the_prefix():
    replicas = fleet(4)
    router = CacheAware(replicas, random.Random(1), cache_weight=1.0, load_weight=1.0)
    assert router.choose_for("p/r", chain(50), 0.0) is replicas[0]  # nothing believed: least loaded, lowest index
    router.routed(2, chain(50))
    replicas[2].outstanding = 4  # score 1 - 4/8 = 0.5 beats an idle replica's 0
    assert router.choose_for("p/r", chain(50), 0.0) is replicas[2]
    replicas[2].outstanding = 8 + 1  # 1 - 9/8 < 0: load outweighs the cache
    assert router.choose_for("p/r", chain(50), 0.0) is not replicas[2]
    # Half the chain believed cached counts half.
    router.routed(1, Prefix(((50, 4),), 16))
    replicas[2].outstanding = 0
    assert router.score(replicas[1], chain(50)) == 0.5 and router.score(replicas[2], chain(50)) == 1.0


def test_cache_aware_belief_goes_stale_when_a_replica_restarts_cold():
    """The router learns only from what it routed: a restart it cannot see leaves the belief."""
    replicas = fleet(2)
    router = CacheAware(replicas, random.Random(1), cache_weight=1.0, load_weight=1.0)
    router.routed(1, chain(9))
    replicas[1].available = False  # crashed: the gateway ejects it
    assert router.choose_for("p/r", chain(9), 0.0) is replicas[0]
    replicas[1].available = True  # back, with an empty cache the router does not know about
    assert router.choose_for("p/r", chain(9), 0.0) is replicas[1]
    assert router.beliefs[1].matched(chain(9)) == 8


def test_cache_aware_belief_is_bounded_by_the_replica_kv_memory():
    replicas = fleet(1)
    router = CacheAware(replicas, random.Random(1), 1.0, 1.0, belief_tokens={0: 16 * 10})
    router.routed(0, chain(0, 8))
    router.routed(0, chain(1000, 8))  # 16 blocks believed; 10 fit: the oldest leaves go
    assert router.beliefs[0].matched(chain(1000, 8)) == 8
    assert router.beliefs[0].matched(chain(0, 8)) == 2


def test_session_affinity_pins_spills_and_repins():
    replicas = fleet(3)
    router = SessionAffinity(replicas, random.Random(2), spill_threshold=4)
    first = router.choose_for("p/r", chain(0, session=7), 0.0)
    assert all(router.choose_for("p/r", chain(0, session=7), 0.0) is first for _ in range(5))
    first.outstanding = 4
    spilled = router.choose_for("p/r", chain(0, session=7), 0.0)
    assert spilled is not first and router.pins[7] is spilled
    first.outstanding = 0
    assert router.choose_for("p/r", chain(0, session=7), 0.0) is spilled  # re-pinned where its cache now is
    spilled.available = False
    moved = router.choose_for("p/r", chain(0, session=7), 0.0)
    assert moved is not spilled and moved.available


def test_session_affinity_returns_to_the_primary_tier():
    replicas = fleet(1, fallback=1)
    router = SessionAffinity(replicas, random.Random(2), spill_threshold=4)
    replicas[0].available = False
    assert router.choose_for("p/r", chain(0, session=1), 0.0) is replicas[1]
    replicas[0].available = True
    assert router.choose_for("p/r", chain(0, session=1), 0.0) is replicas[0]
