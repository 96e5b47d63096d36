"""The gateway queue's free-slot index picks exactly what a pass over the fleet picks.

With late binding on, every dispatch asks for an available replica of the request's pool with a
free slot — primary tier first, then the fewest outstanding, then the lowest index; in the home
region only with failover off, in the primary tier only with the fallback tier off. The gateway
answers from per-group heaps it keeps from its own change reports; a choice that moved would
move records. A random walk of loads, outages, pools, regions, tiers and slot counts compares it
with the scan below, call by call; Hypothesis draws the fleet, the failover settings and the seed.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.policy.gateway import Gateway, ReplicaState, RequestState
from testbed.spec import ServingSpec

REGIONS = ("a/east", "a/west", "b/north")
POOLS = ("default", "small")


def scan(gateway: Gateway, state: RequestState) -> ReplicaState | None:
    """The definition: every replica looked at."""
    best: ReplicaState | None = None
    best_key: tuple[bool, int, int] | None = None
    for replica in gateway.replicas:
        if not replica.available or replica.pool != state.pool or replica.outstanding >= gateway._slots_of(replica):
            continue
        if not gateway.failover_on and replica.region != state.client_region:
            continue
        if not gateway.fallback_on and replica.tier != "primary":
            continue
        key = (replica.tier != "primary", replica.outstanding, replica.index)
        if best_key is None or key < best_key:
            best, best_key = replica, key
    return best


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    failover=st.booleans(),
    fallback=st.booleans(),
    slots=st.sampled_from([None, 1, 3]),
    capacities=st.sampled_from([[4], [1, 2, 5]]),
)
def test_free_slot_index_chooses_as_the_scan_does(
    seed: int, n: int, failover: bool, fallback: bool, slots: int | None, capacities: list[int]
) -> None:
    rng = random.Random(seed)
    replicas = [
        ReplicaState(
            i,
            rng.choice(REGIONS),
            "fallback" if rng.random() < 0.25 else "primary",
            capacity=rng.choice(capacities),
            pool=rng.choice(POOLS),
        )
        for i in range(n)
    ]
    spec = ServingSpec.model_validate(
        {"queue": {"enabled": True, "slots_per_replica": slots}, "failover": {"enabled": failover, "fallback_tier": fallback}}
    )
    gateway = Gateway(spec, replicas, REGIONS, lambda a, b: 0.0, random.Random(1))
    for call in range(400):
        view = rng.choice(replicas)
        roll = rng.random()
        if roll < 0.45:
            view.outstanding += 1
        elif roll < 0.9 and view.outstanding:
            view.outstanding -= rng.randrange(1, view.outstanding + 1)
        elif roll < 0.97:
            view.available = not view.available
        gateway._moved(view)  # as the gateway reports its own changes
        state = RequestState(call, 0, rng.choice(REGIONS), 0.0, rng.choice(POOLS))
        assert gateway._free_replica(state) is scan(gateway, state), call


def test_the_queue_dispatches_to_the_free_replica_the_index_names() -> None:
    """End to end: arrivals fill the slots least loaded first, then wait; a finish frees one."""
    replicas = [ReplicaState(i, "a/east", "primary", capacity=2) for i in range(3)]
    spec = ServingSpec.model_validate({"queue": {"enabled": True}, "routing": {"policy": "round_robin"}})
    gateway = Gateway(spec, replicas, ["a/east"], lambda a, b: 0.0, random.Random(1))
    dispatched = [action for rid in range(7) for action in gateway.on_arrival(rid, 0, "a/east", 0.0)]
    assert [(d.rid, d.replica) for d in dispatched] == [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)]
    assert len(gateway.queue) == 1
    (follow,) = gateway.on_attempt_end(dispatched[1].attempt, "ok", 1.0)[-1:]
    assert (follow.rid, follow.replica) == (6, 1)
