"""Routing policies against plain replica views: no simulator, just counters updated by hand."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.policy.routing import LeastOutstanding, PowerOfTwo, RegionAffine, RoundRobin, _below, make_router
from testbed.spec import RoutingSpec

POLICIES = ("round_robin", "least_outstanding", "power_of_two", "region_affine")

RTT = {
    frozenset({"a/east", "a/west"}): 0.06,
    frozenset({"a/east", "b/eu"}): 0.09,
    frozenset({"a/west", "b/eu"}): 0.15,
}


def rtt(a: str, b: str) -> float:
    return 0.001 if a == b else RTT.get(frozenset({a, b}), 0.2)


@dataclass(eq=False)
class View:
    index: int
    region: str = "a/east"
    tier: str = "primary"
    outstanding: int = 0
    available: bool = True


def fleet(*regions: str, per_region: int = 4, tier: str = "primary") -> list[View]:
    return numbered([View(0, r, tier) for r in regions for _ in range(per_region)])


def numbered(views: list[View]) -> list[View]:
    for i, view in enumerate(views):
        view.index = i
    return views


def router(policy: str, replicas: list[View], seed: int = 0, spill_threshold: int = 8):
    return make_router(RoutingSpec(policy=policy, spill_threshold=spill_threshold), replicas, rtt, random.Random(seed))


def test_make_router_builds_each_policy() -> None:
    replicas = numbered(fleet("a/east"))
    kinds = {policy: type(router(policy, replicas)) for policy in POLICIES}
    assert kinds == {
        "round_robin": RoundRobin,
        "least_outstanding": LeastOutstanding,
        "power_of_two": PowerOfTwo,
        "region_affine": RegionAffine,
    }


def test_unknown_tier_is_an_error() -> None:
    with pytest.raises(ValueError, match="tier"):
        RoundRobin([View(0, tier="spare")])


# --------------------------------------------------------------------------- round robin


def test_round_robin_is_exactly_fair() -> None:
    replicas = numbered(fleet("a/east", "a/west", per_region=5))
    rr = RoundRobin(replicas)
    counts = Counter(rr.choose("a/east", 0.0).index for _ in range(1000))
    assert counts == {i: 100 for i in range(10)}


def test_round_robin_skipping_a_down_replica_stays_fair() -> None:
    """The replica after a down one must not inherit its turns."""
    replicas = numbered(fleet("a/east", per_region=5))
    replicas[1].available = False
    replicas[3].available = False
    rr = RoundRobin(replicas)
    counts = Counter(rr.choose("a/east", 0.0).index for _ in range(300))
    assert counts == {0: 100, 2: 100, 4: 100}


def test_round_robin_visits_in_index_order() -> None:
    replicas = numbered(fleet("a/east", per_region=4))
    rr = RoundRobin(list(reversed(replicas)))
    assert [rr.choose("a/east", 0.0).index for _ in range(6)] == [0, 1, 2, 3, 0, 1]


# --------------------------------------------------------------------------- least outstanding


def test_least_outstanding_picks_the_minimum_lowest_index_on_ties() -> None:
    replicas = numbered(fleet("a/east", per_region=5))
    for view, load in zip(replicas, [5, 2, 7, 2, 3]):
        view.outstanding = load
    lo = LeastOutstanding(replicas)
    assert lo.choose("a/east", 0.0) is replicas[1]
    replicas[1].available = False
    assert lo.choose("a/east", 0.0) is replicas[3]
    replicas[4].outstanding = 0
    assert lo.choose("a/east", 0.0) is replicas[4]


# --------------------------------------------------------------------------- power of two


def spread_under_load(choose, rng: random.Random, replicas: list[View], steps: int, in_flight: int) -> float:
    """Route ``steps`` arrivals; once ``in_flight`` requests are outstanding, each arrival is
    matched by a uniformly random departure. Returns the mean standard deviation of load."""
    requests: list[View] = []
    spreads = []
    for step in range(steps):
        target = choose()
        target.outstanding += 1
        requests.append(target)
        if len(requests) > in_flight:
            done = requests.pop(rng.randrange(len(requests)))
            done.outstanding -= 1
        if step >= in_flight:
            spreads.append(statistics.pstdev(r.outstanding for r in replicas))
    return statistics.fmean(spreads)


def test_power_of_two_balances_far_better_than_random() -> None:
    random_fleet = numbered(fleet("a/east", per_region=50))
    pick = random.Random(1)
    random_spread = spread_under_load(lambda: pick.choice(random_fleet), random.Random(2), random_fleet, 5000, 500)

    p2c_fleet = numbered(fleet("a/east", per_region=50))
    p2c = PowerOfTwo(p2c_fleet, random.Random(1))
    p2c_spread = spread_under_load(lambda: p2c.choose("a/east", 0.0), random.Random(2), p2c_fleet, 5000, 500)

    assert random_spread > 2.5  # ~sqrt(10): Poisson spread around a mean of 10
    assert p2c_spread < random_spread / 2


def test_power_of_two_takes_the_less_loaded_of_two() -> None:
    replicas = numbered(fleet("a/east", per_region=2))
    replicas[0].outstanding = 9
    p2c = PowerOfTwo(replicas, random.Random(0))
    assert all(p2c.choose("a/east", 0.0) is replicas[1] for _ in range(50))


def test_power_of_two_finds_the_last_live_replica() -> None:
    replicas = numbered(fleet("a/east", per_region=200))
    for view in replicas:
        view.available = False
    replicas[137].available = True
    p2c = PowerOfTwo(replicas, random.Random(0))
    assert all(p2c.choose("a/east", 0.0) is replicas[137] for _ in range(20))


@pytest.mark.parametrize("policy", ["power_of_two", "region_affine"])
def test_seeded_routing_is_deterministic(policy: str) -> None:
    def run(seed: int) -> list[int]:
        replicas = numbered(fleet("a/east", "a/west", per_region=20))
        r = router(policy, replicas, seed=seed, spill_threshold=3)
        picks = []
        for i in range(500):
            view = r.choose("a/east", float(i))
            view.outstanding += 1
            if i % 3 == 0:
                replicas[i % len(replicas)].outstanding = 0
            picks.append(view.index)
        return picks

    assert run(7) == run(7)
    assert run(7) != run(8)


# --------------------------------------------------------------------------- tier rule and availability


@pytest.mark.parametrize("policy", POLICIES)
def test_fallback_tier_only_when_no_primary_is_available(policy: str) -> None:
    replicas = numbered(fleet("a/east", per_region=3) + fleet("a/east", per_region=3, tier="fallback"))
    for view in replicas[3:]:
        view.outstanding = 0
    for view in replicas[:3]:
        view.outstanding = 1000  # overloaded primaries still beat idle fallbacks
    r = router(policy, replicas)
    assert all(r.choose("a/east", 0.0).tier == "primary" for _ in range(30))
    for view in replicas[:3]:
        view.available = False
    assert all(r.choose("a/east", 0.0).tier == "fallback" for _ in range(30))
    for view in replicas[3:]:
        view.available = False
    assert r.choose("a/east", 0.0) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_empty_fleet_routes_nowhere(policy: str) -> None:
    assert router(policy, []).choose("a/east", 0.0) is None


replica_states = st.lists(
    st.tuples(
        st.sampled_from(["a/east", "a/west", "b/eu"]),
        st.sampled_from(["primary", "fallback"]),
        st.integers(0, 12),
        st.booleans(),
    ),
    max_size=30,
)


@given(states=replica_states, policy=st.sampled_from(POLICIES), seed=st.integers(0, 2**32), client=st.sampled_from(["a/east", "b/eu", "c/far"]))
def test_only_available_replicas_are_chosen_and_the_tier_rule_holds(
    states: list[tuple[str, str, int, bool]], policy: str, seed: int, client: str
) -> None:
    replicas = [View(i, region, tier, load, up) for i, (region, tier, load, up) in enumerate(states)]
    r = router(policy, replicas, seed=seed, spill_threshold=6)
    primary_up = any(v.available and v.tier == "primary" for v in replicas)
    any_up = any(v.available for v in replicas)
    for _ in range(20):
        pick = r.choose(client, 0.0)
        if not any_up:
            assert pick is None
            continue
        assert pick is not None and pick.available
        assert pick.tier == ("primary" if primary_up else "fallback")
        pick.outstanding += 1


# --------------------------------------------------------------------------- region affinity


def affine_fleet() -> list[View]:
    return numbered(fleet("a/east", "a/west", "b/eu", per_region=4))


def in_region(replicas: list[View], region: str) -> list[View]:
    return [v for v in replicas if v.region == region]


def test_region_affine_stays_local_under_threshold() -> None:
    replicas = affine_fleet()
    r = RegionAffine(replicas, rtt, random.Random(0), spill_threshold=8)
    for client in ("a/east", "a/west", "b/eu"):
        for _ in range(20):
            assert r.choose(client, 0.0).region == client


def test_region_affine_spills_to_the_nearest_region() -> None:
    replicas = affine_fleet()
    for view in in_region(replicas, "a/east"):
        view.outstanding = 8
    r = RegionAffine(replicas, rtt, random.Random(0), spill_threshold=8)
    # from a/east, a/west (60 ms) is nearer than b/eu (90 ms)
    assert {r.choose("a/east", 0.0).region for _ in range(40)} == {"a/west"}
    for view in in_region(replicas, "a/west"):
        view.outstanding = 8
    assert {r.choose("a/east", 0.0).region for _ in range(40)} == {"b/eu"}


def test_region_affine_overloaded_everywhere_takes_the_least_loaded_pick() -> None:
    replicas = affine_fleet()
    for view in replicas:
        view.outstanding = {"a/east": 20, "a/west": 12, "b/eu": 15}[view.region]
    r = RegionAffine(replicas, rtt, random.Random(0), spill_threshold=8)
    assert {r.choose("a/east", 0.0).region for _ in range(40)} == {"a/west"}
    for view in replicas:
        view.outstanding = 30
    assert {r.choose("b/eu", 0.0).region for _ in range(40)} == {"b/eu"}  # nearest wins ties


def test_region_affine_fails_over_when_the_local_region_is_down() -> None:
    replicas = affine_fleet()
    for view in in_region(replicas, "b/eu"):
        view.available = False
    r = RegionAffine(replicas, rtt, random.Random(0), spill_threshold=8)
    # from b/eu, a/east (90 ms) is nearer than a/west (150 ms)
    assert {r.choose("b/eu", 0.0).region for _ in range(40)} == {"a/east"}


def test_region_affine_balances_within_the_region() -> None:
    replicas = affine_fleet()
    r = RegionAffine(replicas, rtt, random.Random(0), spill_threshold=1000)
    for _ in range(400):
        r.choose("a/west", 0.0).outstanding += 1
    loads = [v.outstanding for v in in_region(replicas, "a/west")]
    assert sum(loads) == 400 and max(loads) - min(loads) <= 2



def test_below_is_randrange_draw_for_draw() -> None:
    """Power-of-two picks draw with ``_below``: the very draws of ``randrange``, or records move."""
    for n in (1, 2, 3, 7, 8, 1_152, 2_304, 10**6 + 3):
        ours, theirs = random.Random(n), random.Random(n)
        assert [_below(ours, n) for _ in range(500)] == [theirs.randrange(n) for _ in range(500)]
        assert ours.random() == theirs.random()  # the streams are left in step too
