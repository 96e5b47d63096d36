"""The elastic-fleet policies driven by hand: autoscaler, lifecycle, capacity, migration, ladder, cost."""

from __future__ import annotations

import random

import pytest

from testbed.cost import CostMeter
from testbed.spec import AutoscalerSpec, CostSpec, DegradationSpec, LifecycleSpec
from testbed.policy.autoscaler import Autoscaler, ScaleDecision
from testbed.policy.capacity import CapacityLedger, SpotMarket, Stockout
from testbed.policy.degradation import DegradationLadder
from testbed.policy.lifecycle import LifecycleTimings, ReplicaLifecycle
from testbed.policy.migration import MigrationPolicy, StreamChecker, check_stream


def scaler(**knobs) -> Autoscaler:
    spec = {"target": 2.0, "min_replicas": 1, "max_replicas": 10, "upscale_delay": 30, "downscale_delay": 60} | knobs
    return Autoscaler.from_spec(AutoscalerSpec.model_validate(spec))


def run(autoscaler: Autoscaler, readings, current: int, interval: float = 10.0):
    """Feed per-replica readings every ``interval`` s with every wanted replica serving; decisions made."""
    decisions = []
    for i, observed in enumerate(readings):
        decision = autoscaler.decide(i * interval, current, current, observed)
        if decision is not None:
            decisions.append(decision)
            current = decision.desired
    return decisions, current


# ---------------------------------------------------------------- autoscaler


def test_a_sustained_rise_scales_up_after_the_delay_by_the_smallest_recommendation():
    decisions, current = run(scaler(), [4.0, 6.0, 5.0, 4.0], current=2)
    # 2 replicas at 4, 6, 5, 4 ongoing each want 4, 6, 5, 4: acted on at t=30 with the minimum
    assert decisions == [ScaleDecision(30.0, 2, 4, "up")] and current == 4


def test_within_tolerance_nothing_changes():
    decisions, _ = run(scaler(), [2.1, 1.9, 2.15, 1.85] * 10, current=3)
    assert decisions == []


def test_an_oscillating_metric_does_not_flap_the_fleet():
    # Load swings between 2x and 0.5x the target every reading: each rise is interrupted before
    # the upscale delay and each fall long before the downscale delay.
    decisions, current = run(scaler(), [4.0, 1.0] * 30, current=3)
    assert decisions == [] and current == 3


def test_without_delays_the_same_oscillation_flaps():
    # The control for the test above: the delays, not the metric, prevent the flapping.
    decisions, _ = run(scaler(upscale_delay=0, downscale_delay=0), [4.0, 1.0] * 5, current=3)
    assert len(decisions) >= 8 and {d.reason for d in decisions} == {"up", "down"}


def test_a_fall_scales_down_to_the_largest_recommendation_of_the_window():
    decisions, current = run(scaler(), [1.0, 0.5, 1.0, 0.5, 0.2, 0.5, 0.5], current=4)
    assert decisions == [ScaleDecision(60.0, 4, 2, "down")] and current == 2


def test_step_limits_bound_each_decision():
    decisions, current = run(scaler(upscale_delay=0, max_step_up=2), [10.0] * 4, current=1)
    assert [d.desired for d in decisions] == [3, 5, 7, 9] and current == 9


def test_bounds_clamp_the_recommendation():
    decisions, current = run(scaler(upscale_delay=0, max_replicas=4), [100.0], current=2)
    assert decisions[0].desired == 4
    decisions, current = run(scaler(downscale_delay=0), [0.0], current=3)
    assert decisions[0].desired == 1


def test_scale_to_zero_and_back_from_it_at_once():
    autoscaler = scaler(min_replicas=0, scale_to_zero=True, downscale_delay=20)
    decisions, current = run(autoscaler, [0.0, 0.0, 0.0], current=1)
    assert current == 0 and decisions[-1].desired == 0
    # At zero there is nothing to average; a waiting request brings one replica without delay.
    assert autoscaler.decide(100.0, 0, 0, 0.0) is None
    assert autoscaler.decide(110.0, 0, 0, 0.0, waiting=3) == ScaleDecision(110.0, 0, 1, "from_zero")


def test_pending_replicas_do_not_count_as_serving():
    autoscaler = scaler(upscale_delay=0)
    # 4 wanted, 2 serving at twice the target: the two serving ones ask for 4 in all — no more.
    assert autoscaler.decide(0.0, 4, 2, 4.0) is None


def test_spec_refuses_inconsistent_bounds():
    with pytest.raises(ValueError, match="min_replicas 0 needs scale_to_zero"):
        AutoscalerSpec(target=1, min_replicas=0, max_replicas=2)
    with pytest.raises(ValueError, match="above max_replicas"):
        AutoscalerSpec(target=1, min_replicas=3, max_replicas=2)


# ---------------------------------------------------------------- lifecycle


def test_the_cold_start_chain_is_node_image_weights_warmup():
    timings = LifecycleTimings.for_replica("aws", weight_bytes=16e9, cpu_host=False)
    assert timings.provisioning == 180 + 45  # AWS node + image pull (testbed/cloud.py)
    assert timings.loading == 16.0  # 16 GB at 1 GB/s
    assert timings.warmup == 20.0
    assert timings.cold_start() == 261.0 and timings.restart() == 36.0
    fast = LifecycleTimings.for_replica("gcp", 16e9, False, LifecycleSpec(storage_bandwidth="32Gbps", warmup="5s"))
    assert fast.provisioning == 150 + 45 and fast.loading == 4.0 and fast.warmup == 5.0


def test_a_measured_start_replaces_the_modelled_loading_and_warm_up_and_overrides_still_win():
    measured = LifecycleTimings.for_replica("local", 16e9, True, measured=(5.5, 0.5))  # calibrated: 5.5 s, 0.5 of it warm-up
    assert measured.provisioning == 30 + 45  # no node to measure on a laptop: still the constants
    assert (measured.loading, measured.warmup) == (5.0, 0.5) and measured.restart() == 5.5
    overridden = LifecycleTimings.for_replica("local", 16e9, True, LifecycleSpec(warmup="3s"), measured=(5.5, 0.5))
    assert (overridden.loading, overridden.warmup) == (5.0, 3.0)
    streamed = LifecycleTimings.for_replica("local", 16e9, True, LifecycleSpec(storage_bandwidth="32Gbps"), measured=(5.5, 0.5))
    assert (streamed.loading, streamed.warmup) == (4.0, 0.5)


def test_a_replica_walks_its_phases_in_order():
    life = ReplicaLifecycle(LifecycleTimings(10.0, 4.0, 2.0, drain_timeout=30.0), requested_at=1.0)
    assert life.granted(5.0) == 15.0
    assert life.on_timer(15.0) == 19.0 and life.phase == "loading"
    assert life.on_timer(19.0) == 21.0 and life.phase == "warming"
    assert life.on_timer(21.0) is None and life.phase == "serving"
    assert life.drain(100.0) == 130.0
    life.gone(120.0)
    assert [p for _, p in life.history] == ["requested", "provisioning", "loading", "warming", "serving", "draining", "gone"]
    assert life.billed_since == 5.0


def test_illegal_transitions_are_refused():
    life = ReplicaLifecycle(LifecycleTimings(1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        life.drain(0.0)
    with pytest.raises(ValueError):
        life.on_timer(0.0)
    life.gone(0.0)  # a request abandoned before any grant
    with pytest.raises(ValueError):
        life.gone(1.0)


# ---------------------------------------------------------------- capacity


def test_quota_and_stockout_refuse_grants():
    ledger = CapacityLedger({("aws/us-east-1", "H100"): 8}, [Stockout("aws/us-east-1", "H100", 100.0, 200.0)])
    assert ledger.refusal("aws/us-east-1", "H100", 8, "on_demand", 0.0) is None
    ledger.grant("aws/us-east-1", "H100", 8)
    assert ledger.refusal("aws/us-east-1", "H100", 1, "on_demand", 0.0) == "quota"
    ledger.release("aws/us-east-1", "H100", 4)
    assert ledger.refusal("aws/us-east-1", "H100", 4, "on_demand", 150.0) == "stockout"
    assert ledger.refusal("aws/us-east-1", "H100", 4, "on_demand", 200.0) is None  # the stockout is over
    assert ledger.refusal("aws/us-east-1", "A100", 99, "on_demand", 150.0) is None  # other kinds unaffected
    with pytest.raises(ValueError):
        ledger.release("aws/us-east-1", "A100", 1)


def test_a_spot_only_stockout_leaves_on_demand_available():
    ledger = CapacityLedger(stockouts=[Stockout("gcp/us-central1", None, 0.0, 60.0, market="spot")])
    assert ledger.refusal("gcp/us-central1", "L4", 1, "spot", 10.0) == "stockout"
    assert ledger.refusal("gcp/us-central1", "L4", 1, "on_demand", 10.0) is None


def test_spot_falls_back_to_on_demand_after_a_preemption_for_the_hold():
    market = SpotMarket(share=1.0, rate_per_s=1 / 3600, notice=None, fallback=True, hold=600.0, rng=random.Random(1))
    assert market.choose("r", 0, 0, 0.0) == "spot"
    market.on_preempted("r", 100.0)
    assert market.choose("r", 0, 1, 200.0) == "on_demand"
    assert market.choose("other", 0, 1, 200.0) == "spot"
    assert market.choose("r", 0, 1, 700.0) == "spot"
    assert market.on_spot_refused("r", 800.0) == "on_demand"
    no_fallback = SpotMarket(1.0, 1 / 3600, None, False, 600.0, random.Random(1))
    assert no_fallback.on_spot_refused("r", 0.0) is None


def test_spot_share_and_preemption_lifetimes():
    market = SpotMarket(share=0.5, rate_per_s=2 / 3600, notice=None, fallback=True, hold=0.0, rng=random.Random(7))
    assert market.choose("r", 0, 0, 0.0) == "spot" and market.choose("r", 1, 1, 0.0) == "on_demand"
    assert market.wants_spot(1, 2) and not market.wants_spot(2, 3)
    lifetimes = [market.lifetime() for _ in range(4000)]
    assert 1700 < sum(lifetimes) / len(lifetimes) < 1900  # exponential with a mean of 1800 s
    assert market.notice_for(120.0) == 120.0


# ---------------------------------------------------------------- migration


def test_a_broken_stream_resumes_with_its_tokens_as_prompt_up_to_the_limit():
    policy = MigrationPolicy(limit=2)
    first = policy.resume(7, prompt_tokens=100, output_tokens=50, delivered=20)
    assert (first.prompt_tokens, first.output_tokens, first.offset, first.reprefill_tokens) == (120, 30, 20, 20)
    second = policy.resume(7, 100, 50, delivered=35)
    assert second.prompt_tokens == 135 and second.output_tokens == 15
    assert policy.resume(7, 100, 50, delivered=40) is None  # the limit
    assert policy.resume(8, 100, 50, delivered=0) is None  # nothing reached the client: a retry, not a migration
    assert policy.migrated == 1 and policy.total == 2
    assert MigrationPolicy(limit=3, enabled=False).resume(1, 10, 10, 5) is None


def test_the_checker_finds_lost_and_duplicated_positions():
    checker = StreamChecker()
    checker.delivered(1, 0, 20)
    checker.delivered(1, 20, 30)  # a clean migration at 20
    checker.delivered(2, 0, 20)
    checker.delivered(2, 18, 32)  # resumed from the wrong offset: 18 and 19 twice
    checker.delivered(3, 0, 10)
    checker.delivered(3, 12, 38)  # two tokens never sent
    verdict = checker.check({1: 50, 2: 50, 3: 50})
    assert not verdict.ok and verdict.bad == (2, 3) and verdict.duplicated == 2 and verdict.lost == 2
    assert checker.check({1: 50}).ok


def test_check_stream_compares_token_ids_with_an_unbroken_run():
    reference = [5, 9, 2, 7, 7, 1, 3]
    assert check_stream(reference, reference).ok
    doubled = check_stream([5, 9, 2, 7, 2, 7, 7, 1, 3], reference)
    assert not doubled.ok and doubled.duplicated == 2 and doubled.lost == 0
    dropped = check_stream([5, 9, 7, 1, 3], reference)
    assert dropped.lost == 2 and dropped.duplicated == 0


# ---------------------------------------------------------------- degradation ladder


def ladder(**knobs) -> DegradationLadder:
    steps = [{"action": "quantize"}, {"action": "cap_max_tokens", "max_tokens": 64}]
    return DegradationLadder.from_spec(DegradationSpec.model_validate({"steps": steps, "hold": 20} | knobs))


def test_the_ladder_climbs_one_step_per_hold_and_descends_with_hysteresis():
    lad = ladder()
    levels = []
    for t, load in enumerate([1.2, 1.2, 1.2, 1.2, 1.2, 0.7, 0.7, 0.7, 0.4, 0.4, 0.4, 0.4, 0.4]):
        lad.observe(t * 10.0, load)
        levels.append(lad.level)
    # over at 0: level 1 at 20, level 2 at 40; 0.7 sits between exit and enter: hold; under from 80
    assert levels == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 1, 1, 0]
    assert lad.active == []


def test_an_oscillating_load_does_not_move_the_ladder():
    lad = ladder()
    for t, load in enumerate([1.2, 0.4] * 20):
        assert lad.observe(t * 10.0, load) is None
    assert lad.level == 0


def test_the_ladder_spec_requires_hysteresis():
    with pytest.raises(ValueError, match="flaps"):
        DegradationSpec.model_validate({"steps": [{"action": "quantize"}], "enter_load": 0.8, "exit_load": 0.8})


# ---------------------------------------------------------------- cost


def test_cost_counts_devices_from_grant_to_gone_at_spot_or_on_demand_prices():
    meter = CostMeter(CostSpec(prices={"H100": 10.0}, spot_price_factor=0.5))
    meter.start(0, 0.0, "H100", 2, "on_demand")
    meter.start(1, 0.0, "H100", 2, "spot")
    meter.stop(0, 1800.0)
    meter.close(3600.0)
    assert meter.device_hours == pytest.approx(1.0 + 2.0)
    assert meter.dollars == pytest.approx(1.0 * 10 + 2.0 * 5)
    assert CostMeter().price("L4", "on_demand") == pytest.approx(0.805)


def test_the_checker_holds_each_seam_to_the_prompt_and_the_tokens_delivered_before_it():
    checker = StreamChecker()
    prompt = (1, 2, 3)
    for rid, resumed_from in ((1, (1, 2, 3, 10, 11)), (2, (1, 2, 3, 10)), (3, (1, 2, 3, 10, 11, 11))):
        checker.began(rid, prompt)
        checker.delivered(rid, 0, 2, [10, 11])
        checker.resumed(rid, 2, resumed_from)
        checker.delivered(rid, 2, 3, [12, 13, 14])
    verdict = checker.check({1: 5, 2: 5, 3: 5})
    # Every position arrived once for all three, but 2 continued as if 11 had not been sent (it
    # would repeat it) and 3 as if it had been sent twice (it would skip a token).
    assert verdict.bad == (2, 3) and verdict.lost == 1 and verdict.duplicated == 1
    assert checker.check({1: 5}).ok
