"""Resilience policies driven by hand with explicit times: no simulator, pinned seeds."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from testbed.policy.admission import AdmissionController
from testbed.policy.breaker import CircuitBreaker, OutlierDetector
from testbed.policy.health import HealthChecker
from testbed.policy.hedging import MIN_SAMPLES, HedgePolicy
from testbed.policy.retry import RetryBudget, RetryPolicy
from testbed.spec import (
    AdmissionSpec,
    CircuitBreakerSpec,
    HealthCheckSpec,
    HedgingSpec,
    OutlierEjectionSpec,
    RetrySpec,
    ServingSpec,
)

# --------------------------------------------------------------------------- retry


def test_should_retry_respects_attempts_and_outcomes() -> None:
    policy = RetryPolicy.from_spec(RetrySpec(max_attempts=3, on=["failed", "unavailable"]))
    assert policy.should_retry(1, "failed")
    assert policy.should_retry(2, "unavailable")
    assert not policy.should_retry(3, "failed")  # the third attempt was the last
    assert not policy.should_retry(1, "timeout")  # not retryable
    assert not RetryPolicy.from_spec(RetrySpec(max_attempts=1)).should_retry(1, "failed")


def test_backoff_without_jitter_doubles_then_caps() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=0.05, max_backoff=0.3, jitter="none")
    rng = random.Random(0)
    assert [policy.backoff(a, rng) for a in range(1, 7)] == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3, 0.3])
    assert policy.backoff(5000, rng) == 0.3  # a huge attempt number does not overflow


@pytest.mark.parametrize(("jitter", "low_share"), [("full", 0.0), ("equal", 0.5)])
def test_jitter_bounds(jitter: str, low_share: float) -> None:
    policy = RetryPolicy(max_attempts=10, backoff=0.1, max_backoff=1.0, jitter=jitter)
    rng = random.Random(42)
    for attempt, ceiling in [(1, 0.1), (3, 0.4), (8, 1.0)]:
        draws = [policy.backoff(attempt, rng) for _ in range(2000)]
        assert min(draws) >= low_share * ceiling
        assert max(draws) <= ceiling
        # spread over the whole allowed range, not stuck at one end
        assert min(draws) < low_share * ceiling + 0.05 * ceiling
        assert max(draws) > 0.95 * ceiling


def test_budget_allows_ratio_of_requests_and_refuses_beyond() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=0.0, window=10.0)
    for i in range(1000):
        budget.on_request(i * 0.005)  # 1000 requests in 5 s
    spent = sum(budget.try_spend(5.0) for _ in range(500))
    assert spent == 200
    assert not budget.try_spend(5.0)


def test_budget_floor_lets_low_traffic_retry() -> None:
    budget = RetryBudget(ratio=0.0, min_per_s=1.0, window=10.0)
    budget.on_request(0.0)
    assert sum(budget.try_spend(0.0) for _ in range(50)) == 10  # 1/s over a 10 s window


def test_budget_recovers_as_window_slides() -> None:
    budget = RetryBudget.from_spec(RetrySpec(budget_ratio=0.1, budget_min_per_s=0.0), window=10.0)
    for i in range(100):
        budget.on_request(i * 0.01)
    assert sum(budget.try_spend(1.0) for _ in range(50)) == 10
    assert not budget.try_spend(5.0)  # still inside the window
    # after the window the old requests and retries have both expired; new traffic earns anew
    for i in range(100):
        budget.on_request(20.0 + i * 0.01)
    assert sum(budget.try_spend(21.0) for _ in range(50)) == 10


# --------------------------------------------------------------------------- hedging


def test_hedging_disabled_never_hedges() -> None:
    policy = HedgePolicy.from_spec(HedgingSpec(enabled=False, delay=0.5))
    assert policy.max_hedges == 0
    assert policy.hedge_delay() is None


def test_fixed_hedge_delay() -> None:
    policy = HedgePolicy.from_spec(HedgingSpec(enabled=True, delay="200ms", max_hedges=2))
    assert policy.hedge_delay() == pytest.approx(0.2)
    assert policy.max_hedges == 2


def test_adaptive_hedge_delay_tracks_percentile_of_recent_ttfts() -> None:
    policy = HedgePolicy(enabled=True, delay=None, percentile=95, window=100)
    for i in range(MIN_SAMPLES - 1):
        policy.observe(float(i))
    assert policy.hedge_delay() is None  # too few samples to trust a percentile
    for i in range(MIN_SAMPLES - 1, 100):
        policy.observe(float(i))
    assert policy.hedge_delay() == 95.0  # TTFTs 0..99
    for _ in range(100):
        policy.observe(1.0)  # load fell: the window forgets the old, slow samples
    assert policy.hedge_delay() == 1.0


# --------------------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_consecutive_failures_and_success_resets() -> None:
    breaker = CircuitBreaker.from_spec(CircuitBreakerSpec(consecutive_failures=3, open_for=10))
    breaker.on_failure(0.0)
    breaker.on_failure(0.1)
    breaker.on_success(0.2)  # not consecutive any more
    breaker.on_failure(0.3)
    breaker.on_failure(0.4)
    assert breaker.state == "closed" and breaker.allow(0.4)
    breaker.on_failure(0.5)
    assert breaker.state == "open"
    assert not breaker.allow(5.0)
    assert not breaker.allow_peek(10.49)


def test_breaker_half_open_success_closes() -> None:
    breaker = CircuitBreaker(consecutive_failures=1, open_for=10.0, half_open_probes=2)
    breaker.on_failure(0.0)
    assert breaker.allow_peek(10.0) and breaker.state == "half_open"
    assert breaker.allow(10.0) and breaker.allow(10.0)
    assert not breaker.allow(10.0)  # both probes are out
    breaker.on_success(10.5)
    assert breaker.state == "half_open"
    breaker.on_success(10.6)
    assert breaker.state == "closed" and breaker.allow(10.7)


def test_breaker_half_open_failure_reopens() -> None:
    breaker = CircuitBreaker(consecutive_failures=1, open_for=10.0)
    breaker.on_failure(0.0)
    assert breaker.allow(12.0)
    breaker.on_failure(12.5)
    assert breaker.state == "open"
    assert not breaker.allow(22.0)  # open_for counts from the new opening
    assert breaker.allow(22.5)


# --------------------------------------------------------------------------- outlier ejection


def test_outlier_ejection_durations_grow() -> None:
    detector = OutlierDetector.from_spec(OutlierEjectionSpec(consecutive_errors=3, base_ejection=30), n=4)
    now = 0.0
    for expected in (30.0, 60.0, 90.0):
        for _ in range(3):
            detector.on_result(0, ok=False, now=now)
        assert detector.is_ejected(0, now)
        assert detector.ejected_until(0) == pytest.approx(now + expected)
        assert not detector.is_ejected(0, now + expected)
        now += expected
    assert detector.times_ejected[0] == 3


def test_outlier_success_resets_and_ejected_results_are_ignored() -> None:
    detector = OutlierDetector(n=4, consecutive_errors=2, base_ejection=10.0, max_ejected_share=0.5)
    detector.on_result(1, ok=False, now=0.0)
    detector.on_result(1, ok=True, now=0.1)
    detector.on_result(1, ok=False, now=0.2)
    assert not detector.is_ejected(1, 0.2)
    detector.on_result(1, ok=False, now=0.3)
    assert detector.is_ejected(1, 0.3)
    detector.on_result(1, ok=False, now=1.0)  # a late answer from before the ejection
    detector.on_result(1, ok=False, now=2.0)
    assert detector.times_ejected[1] == 1


def test_outlier_max_share_caps_ejections() -> None:
    detector = OutlierDetector(n=5, consecutive_errors=1, base_ejection=10.0, max_ejected_share=0.5)
    for replica in range(5):
        detector.on_result(replica, ok=False, now=0.0)
    assert detector.ejected_count(0.0) == 2  # floor(0.5 * 5): the share is never exceeded
    assert [detector.is_ejected(r, 0.0) for r in range(5)] == [True, True, False, False, False]
    detector.on_result(2, ok=False, now=10.0)  # the first two have returned: room again
    assert detector.is_ejected(2, 10.0) and detector.ejected_count(10.0) == 1
    assert OutlierDetector(n=1, consecutive_errors=1, base_ejection=1.0, max_ejected_share=0.5).max_ejected == 0


# --------------------------------------------------------------------------- health checks


def test_health_thresholds_and_detection_time() -> None:
    spec = HealthCheckSpec(period=5, unhealthy_threshold=3, healthy_threshold=2)
    checker = HealthChecker.from_spec(spec, n=1)
    failed_at = 0.5  # the replica dies just after a probe at 0
    assert checker.probe_due(0.0) == [0]
    assert checker.on_probe(0, ok=True, now=0.0) is None
    changes = []
    while (at := checker.next_due()) is not None and at < 100:
        for replica in checker.probe_due(at):
            changes.append(checker.on_probe(replica, ok=at < failed_at, now=at))
        if "unhealthy" in changes:
            break
    assert changes == [None, None, "unhealthy"]
    assert not checker.healthy(0)
    detected = checker.detected_at(0)
    assert detected == 15.0 and detected - failed_at <= spec.period * spec.unhealthy_threshold
    assert checker.on_probe(0, ok=True, now=20.0) is None
    assert checker.on_probe(0, ok=False, now=25.0) is None  # the pass streak is broken
    assert checker.on_probe(0, ok=True, now=30.0) is None
    assert checker.on_probe(0, ok=True, now=35.0) == "healthy"
    assert checker.healthy(0) and checker.detected_at(0) == 15.0


def test_health_probes_are_staggered_across_the_period() -> None:
    checker = HealthChecker(n=4, period=4.0, timeout=1.0, unhealthy_threshold=1, healthy_threshold=1)
    assert checker.probe_due(0.0) == [0]
    assert checker.probe_due(2.5) == [1, 2]
    assert checker.next_due() == 3.0
    assert checker.probe_due(4.0) == [3, 0]


def test_a_late_driver_probes_each_replica_once_and_keeps_the_stagger() -> None:
    """The live gateway starts seconds after the clock's zero: a catch-up burst of one probe per
    missed period timed out on a busy host and marked both healthy replicas down."""
    checker = HealthChecker(n=2, period=1.0, timeout=1.0, unhealthy_threshold=2, healthy_threshold=1)
    assert checker.probe_due(30.2) == [0, 1]
    assert checker.probe_due(30.2) == []
    assert checker.next_due() == 30.5  # replica 1's slot: k + 1/2
    assert checker.probe_due(31.0) == [1, 0]


# --------------------------------------------------------------------------- admission


def test_admission_sheds_by_priority() -> None:
    controller = AdmissionController.from_spec(AdmissionSpec(shed_thresholds={1: 0.9, 2: 0.8}))
    assert controller.admit(priority=2, fleet_load=0.79, replica_queue=0) is None
    assert controller.admit(priority=2, fleet_load=0.85, replica_queue=0) == "shed_priority"
    assert controller.admit(priority=1, fleet_load=0.85, replica_queue=0) is None
    assert controller.admit(priority=1, fleet_load=0.95, replica_queue=0) == "shed_priority"
    assert controller.admit(priority=3, fleet_load=0.85, replica_queue=0) == "shed_priority"
    assert controller.admit(priority=0, fleet_load=5.0, replica_queue=0) is None


def test_admission_bounds_replica_queue() -> None:
    controller = AdmissionController.from_spec(AdmissionSpec(max_queue_per_replica=8))
    assert controller.admit(priority=0, fleet_load=0.5, replica_queue=7) is None
    assert controller.admit(priority=0, fleet_load=0.5, replica_queue=8) == "queue_full"
    assert AdmissionController.from_spec(AdmissionSpec()).admit(9, 10.0, 10**6) is None


# --------------------------------------------------------------------------- specs


def test_serving_spec_defaults() -> None:
    spec = ServingSpec()
    assert spec.timeouts.request == 60.0 and spec.timeouts.connect == 1.0
    assert spec.retries.max_attempts == 3 and spec.retries.jitter == "full"
    assert set(spec.retries.on) == {"failed", "timeout", "unavailable"}
    assert not spec.hedging.enabled and spec.hedging.delay is None
    assert spec.circuit_breaker.enabled and spec.outlier_ejection.max_ejected_share == 0.5
    assert spec.health_check.period == 5.0 and not spec.health_check.deep
    assert spec.admission.max_queue_per_replica is None and spec.admission.shed_thresholds == {}
    assert spec.failover.enabled and spec.failover.fallback_tier


def test_serving_spec_parses_units_and_yaml_style_keys() -> None:
    spec = ServingSpec.model_validate(
        {
            "retries": {"backoff": "100ms", "max_backoff": "5s", "jitter": "equal"},
            "hedging": {"enabled": True, "delay": "250ms"},
            "admission": {"shed_thresholds": {"2": "80%"}},
            "failover": {"enabled": False},
        }
    )
    assert spec.retries.backoff == pytest.approx(0.1) and spec.hedging.delay == pytest.approx(0.25)
    assert spec.admission.shed_thresholds == {2: 0.8}
    assert not spec.failover.enabled


@pytest.mark.parametrize(
    "data",
    [
        {"retries": {"backoff": -1}},
        {"retries": {"max_attempts": 0}},
        {"retries": {"backoff": "3s", "max_backoff": "1s"}},
        {"retries": {"jitter": "random"}},
        {"retries": {"on": ["ok"]}},
        {"hedging": {"percentile": 100}},
        {"circuit_breaker": {"open_for": 0}},
        {"outlier_ejection": {"max_ejected_share": 1.5}},
        {"health_check": {"unhealthy_threshold": 0}},
        {"admission": {"max_queue_per_replica": 0}},
        {"failover": {"enable": False}},  # typo
    ],
)
def test_bad_resilience_specs_are_rejected(data: dict) -> None:
    with pytest.raises(ValidationError):
        ServingSpec.model_validate(data)
