"""The gateway state machine driven by hand: events in, actions out, no simulator."""

from __future__ import annotations

import random

from testbed.policy.gateway import Cancel, Dispatch, Finish, Gateway, ReplicaState, Wake
from testbed.spec import ServingSpec


def gateway(serving: dict | None = None, regions=("r/a", "r/a", "r/b")) -> Gateway:
    replicas = [ReplicaState(i, region, "primary", capacity=8) for i, region in enumerate(regions)]
    spec = ServingSpec.model_validate({"routing": {"policy": "round_robin"}, **(serving or {})})
    return Gateway(spec, replicas, ["r/a", "r/b"], lambda a, b: 0.001 if a == b else 0.05, random.Random(0))


def test_a_request_is_dispatched_then_finished_ok():
    g = gateway()
    [dispatch] = g.on_arrival(0, 0, "r/a", 0.0)
    assert isinstance(dispatch, Dispatch) and g.replicas[dispatch.replica].outstanding == 1
    actions = g.on_attempt_end(dispatch.attempt, "ok", 1.0)
    assert actions == [Finish(0, "ok", dispatch.attempt, retries=0, hedged=False, failed_over=False)]
    assert g.outstanding == 0 and not g.requests


def test_a_failure_is_retried_after_a_backoff_on_another_replica():
    g = gateway()
    [first] = g.on_arrival(0, 0, "r/a", 0.0)
    [wake] = g.on_attempt_end(first.attempt, "failed", 0.5)
    assert isinstance(wake, Wake) and wake.tag == "retry" and 0.5 <= wake.at <= 0.5 + 0.05
    [second] = g.on_timer(0, "retry", wake.at)
    assert second.replica != first.replica
    [finish] = g.on_attempt_end(second.attempt, "ok", 2.0)
    assert finish.status == "ok" and finish.retries == 1


def test_retries_run_out_and_the_request_fails():
    g = gateway({"retries": {"max_attempts": 2}})
    [first] = g.on_arrival(0, 0, "r/a", 0.0)
    [wake] = g.on_attempt_end(first.attempt, "failed", 0.1)
    [second] = g.on_timer(0, "retry", wake.at)
    [finish] = g.on_attempt_end(second.attempt, "unavailable", 1.0)
    assert finish.status == "failed" and finish.retries == 1


def test_the_deadline_cancels_live_attempts_and_times_the_request_out():
    g = gateway()
    [dispatch] = g.on_arrival(0, 0, "r/a", 0.0)
    cancel, finish = g.on_deadline(0, 60.0)
    assert cancel == Cancel(0, dispatch.attempt, dispatch.replica)
    assert finish.status == "timeout"
    assert g.on_attempt_end(dispatch.attempt, "ok", 61.0) == []  # a late answer changes nothing


def test_a_hedge_races_the_first_attempt_and_the_loser_is_cancelled():
    g = gateway({"hedging": {"enabled": True, "delay": "200ms"}})
    first, wake = g.on_arrival(0, 0, "r/a", 0.0)
    assert wake == Wake(0, 0.2, "hedge")
    [hedge] = g.on_timer(0, "hedge", 0.2)
    assert hedge.hedge and hedge.replica != first.replica
    [cancel] = g.on_first_token(hedge.attempt, 0.3)
    assert cancel.attempt == first.attempt
    [finish] = g.on_attempt_end(hedge.attempt, "ok", 1.0)
    assert finish.hedged


def test_health_probes_take_a_replica_out_of_routing_and_failover_is_recorded():
    g = gateway({"routing": {"policy": "region_affine"}})
    for replica in (0, 1):
        for t in (1.0, 2.0):
            g.on_probe(replica, False, t)
    assert not g.replicas[0].available and not g.replicas[1].available
    [dispatch] = g.on_arrival(0, 0, "r/a", 3.0)
    assert dispatch.replica == 2
    [finish] = g.on_attempt_end(dispatch.attempt, "ok", 4.0)
    assert finish.failed_over


def test_without_failover_requests_stay_home_and_fail():
    g = gateway({"failover": {"enabled": False}, "retries": {"max_attempts": 1}})
    for replica in (0, 1):
        for t in (1.0, 2.0):
            g.on_probe(replica, False, t)
    [finish] = g.on_arrival(0, 0, "r/a", 3.0)
    assert finish.status == "failed"


def test_admission_sheds_less_important_requests_when_the_fleet_is_loaded():
    g = gateway({"admission": {"shed_thresholds": {1: 0.1}}})
    for rid in range(3):
        g.on_arrival(rid, 0, "r/a", 0.0)  # 3 of 24 slots busy: load 0.125
    [shed] = g.on_arrival(9, 1, "r/a", 0.0)
    assert shed.status == "shed"
    [admitted] = g.on_arrival(10, 0, "r/a", 0.0)
    assert isinstance(admitted, Dispatch)


def test_a_client_error_is_not_retried_and_does_not_count_against_the_replica():
    g = gateway({"circuit_breaker": {"consecutive_failures": 1}, "outlier_ejection": {"consecutive_errors": 1}})
    [dispatch] = g.on_arrival(0, 0, "r/a", 0.0)
    [finish] = g.on_attempt_end(dispatch.attempt, "client_error", 0.1)
    assert finish.status == "client_error" and finish.retries == 0
    assert g.replicas[dispatch.replica].available  # one "failure" would have opened the breaker


def test_retries_never_go_back_to_a_replica_this_request_tried_while_another_is_available():
    """The retry black hole: a dead replica has nothing outstanding, so least_outstanding likes
    it best; re-drawing from a deterministic router returned it on every attempt."""
    g = gateway({"routing": {"policy": "least_outstanding"}, "retries": {"max_attempts": 3}}, regions=("r/a", "r/a"))
    [first] = g.on_arrival(0, 0, "r/a", 0.0)
    g.on_arrival(1, 0, "r/a", 0.0)  # the other replica now has more outstanding work
    [wake] = g.on_attempt_end(first.attempt, "failed", 0.1)
    [second] = g.on_timer(0, "retry", wake.at)
    assert second.replica != first.replica


def test_a_refused_connection_takes_the_replica_out_at_once_until_a_probe_passes():
    g = gateway({"routing": {"policy": "least_outstanding"}}, regions=("r/a", "r/a"))
    [first] = g.on_arrival(0, 0, "r/a", 0.0)
    [wake] = g.on_attempt_end(first.attempt, "unavailable", 0.01)
    assert not g.replicas[first.replica].available  # no breaker threshold, no probe needed
    [second] = g.on_timer(0, "retry", wake.at)
    assert second.replica != first.replica
    [later] = g.on_arrival(1, 0, "r/a", 0.2)  # a new request does not try the refusing replica
    assert later.replica != first.replica
    g.on_probe(first.replica, True, 1.0)
    assert g.replicas[first.replica].available


def test_with_every_replica_tried_a_retry_goes_back_rather_than_failing():
    g = gateway({"retries": {"max_attempts": 2}}, regions=("r/a",))
    [first] = g.on_arrival(0, 0, "r/a", 0.0)
    [wake] = g.on_attempt_end(first.attempt, "failed", 0.1)
    [second] = g.on_timer(0, "retry", wake.at)
    assert isinstance(second, Dispatch) and second.replica == first.replica


def test_a_broken_stream_is_not_retried_but_counts_against_the_replica():
    g = gateway({"circuit_breaker": {"consecutive_failures": 1}})
    [dispatch] = g.on_arrival(0, 0, "r/a", 0.0)
    g.on_first_token(dispatch.attempt, 0.1)
    [finish] = g.on_attempt_end(dispatch.attempt, "failed", 0.2, retryable=False)
    assert finish.status == "failed" and finish.retries == 0
    assert not g.replicas[dispatch.replica].available


def test_a_half_open_breaker_without_trials_left_joins_the_exclusion():
    g = gateway({"routing": {"policy": "least_outstanding"}, "circuit_breaker": {"consecutive_failures": 1, "open_for": "1s"}},
                regions=("r/a", "r/a"))
    [first] = g.on_arrival(0, 0, "r/a", 0.0)
    g.on_attempt_end(first.attempt, "failed", 0.1)  # opens replica 0's breaker; request 0 retries later
    for rid in (10, 11):
        assert g.on_arrival(rid, 0, "r/a", 0.5)[0].replica == 1  # replica 1 is now the busier one
    g.on_tick(1.2)  # open_for has passed: half-open, available again
    [trial] = g.on_arrival(1, 0, "r/a", 1.2)  # its one trial request goes through
    assert trial.replica == 0
    [other] = g.on_arrival(2, 0, "r/a", 1.3)  # the router's pick, but no trial left: excluded
    assert other.replica == 1
