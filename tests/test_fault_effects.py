"""Every fault kind, in simulation: its effect on the records, and no effect where no traffic goes.

The fleet: two regions of two A100 nodes with two replicas each. Clients sit near ``p/home``
and region-affine routing keeps them there, so ``p/away`` carries traffic only when the policies
fail over to it. A fault in ``p/away`` must therefore leave the records exactly as they were.
"""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.sim import simulate
from testbed.spec import Scenario

HOME, AWAY = "p/home", "p/away"
NODE = f"{HOME}/z/k/node-0"


def scenario(faults: list[dict], serving: dict | None = None, **overrides) -> Scenario:
    racks = [{"name": "k", "device": "A100", "nodes": 2, "devices_per_node": 2}]
    data = {
        "name": "effects",
        "topology": {
            "name": "two-regions",
            "providers": [{"name": "p", "regions": [
                {"name": "home", "zones": [{"name": "z", "racks": racks}]},
                {"name": "away", "zones": [{"name": "z", "racks": racks}]},
            ]}],
            "links": [{"between": [HOME, AWAY], "rtt": "40ms"}],
        },
        "workload": {
            "arrival": {"kind": "poisson", "rate": 20},
            "prompt_tokens": {"kind": "uniform", "low": 100, "high": 400},
            "output_tokens": {"kind": "uniform", "low": 20, "high": 100},
            "client_regions": {HOME: 1.0},
        },
        "serving": {"routing": {"policy": "region_affine"}, **(serving or {})},
        "faults": faults,
        "duration": 120,
        "seed": 11,
    }
    data.update(overrides)
    return Scenario.model_validate(data)


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    return simulate(scenario([])).requests


def during(requests: pd.DataFrame, start: float = 30, end: float = 90) -> pd.DataFrame:
    return requests[(requests["arrival"] >= start) & (requests["arrival"] < end)]


def ttft(requests: pd.DataFrame) -> pd.Series:
    return requests["first_token"] - requests["arrival"]


AWAY_FAULTS = [
    {"kind": "accelerator_failure", "target": f"{AWAY}/z/k/node-0/gpu-0", "at": 30, "duration": 60},
    {"kind": "node_crash", "target": f"{AWAY}/z/k/node-1", "at": 30, "duration": 60},
    {"kind": "node_hang", "target": f"{AWAY}/z/k/node-0", "at": 30, "duration": 60},
    {"kind": "outage", "target": AWAY, "at": 30, "duration": 60},
    {"kind": "capacity_loss", "target": AWAY, "share": 0.5, "at": 30, "duration": 60},
    {"kind": "slowdown", "target": AWAY, "speed": 0.3, "at": 30, "duration": 60},
    {"kind": "memory_pressure", "target": AWAY, "kv_fraction": 0.01, "at": 30, "duration": 60},
    {"kind": "error_injection", "target": AWAY, "rate": 0.5, "at": 30, "duration": 60},
    {"kind": "partition", "between": [f"clients:{AWAY}", AWAY], "at": 30, "duration": 60},
    {"kind": "latency", "between": [f"clients:{AWAY}", AWAY], "delay": "200ms", "at": 30, "duration": 60},
    {"kind": "packet_loss", "between": [f"clients:{AWAY}", AWAY], "loss": 0.5, "at": 30, "duration": 60},
    {"kind": "bandwidth", "between": [f"clients:{AWAY}", AWAY], "limit": "1Mbps", "at": 30, "duration": 60},
]


@pytest.mark.parametrize("fault", AWAY_FAULTS, ids=[f["kind"] for f in AWAY_FAULTS])
def test_a_fault_where_no_traffic_goes_changes_nothing(fault, baseline):
    result = simulate(scenario([fault]))
    assert len(result.faults) == 1
    columns = [c for c in baseline.columns if c != "fault_overlap"]
    pd.testing.assert_frame_equal(result.requests[columns], baseline[columns])
    assert result.requests["fault_overlap"].any()


def test_accelerator_failure_kills_its_replica_and_retries_save_the_requests(baseline):
    result = simulate(scenario([{"kind": "accelerator_failure", "target": f"{NODE}/gpu-0", "at": 30, "duration": 60}]))
    requests = result.requests
    assert (requests["retries"] > 0).any()
    assert (requests["status"] == "ok").all()
    detected = result.faults["detected_at"].iloc[0]
    assert 30 < detected <= 30 + 3 * 5 + 1  # health checks notice within a few periods
    assert not ((requests["replica"] == 0) & (requests["arrival"] > detected) & (requests["arrival"] < 90)).any()


def test_without_retries_a_node_crash_fails_the_requests_on_it():
    crash = [{"kind": "node_crash", "target": NODE, "at": 30, "duration": 60}]
    result = simulate(scenario(crash, {"retries": {"max_attempts": 1}}))
    assert (during(result.requests)["status"] == "failed").any()


def test_region_outage_fails_over_when_allowed_and_fails_when_not():
    outage = [{"kind": "outage", "target": HOME, "at": 30, "duration": 60}]
    with_failover = during(simulate(scenario(outage)).requests, 40, 85)
    assert (with_failover["status"] == "ok").all()
    assert (with_failover["region"].astype(str) == AWAY).all()
    assert with_failover["failed_over"].any()
    without = during(simulate(scenario(outage, {"failover": {"enabled": False}})).requests, 40, 85)
    assert (without["status"] != "ok").mean() > 0.9


def test_node_hang_is_missed_by_shallow_checks_and_caught_by_deep_ones():
    hang = [{"kind": "node_hang", "target": NODE, "at": 30, "duration": 60}]
    serving = {"timeouts": {"request": "10s"}, "circuit_breaker": {"enabled": False}, "outlier_ejection": {"enabled": False}}
    shallow = simulate(scenario(hang, serving))
    deep = simulate(scenario(hang, {**serving, "health_check": {"deep": True}}))
    shallow_lost = (during(shallow.requests)["status"] == "timeout").sum()
    deep_lost = (during(deep.requests)["status"] == "timeout").sum()
    assert shallow_lost > 3 * max(deep_lost, 1)
    assert pd.isna(shallow.faults["detected_at"].iloc[0]) and deep.faults["detected_at"].notna().iloc[0]


def test_capacity_loss_withdraws_that_share_of_the_domain():
    result = simulate(scenario([{"kind": "capacity_loss", "target": HOME, "share": 0.5, "at": 30, "duration": 60}]))
    assert result.faults["replicas"].iloc[0] == 2
    served = set(during(result.requests, 50, 90)["replica"])
    assert len(served) == 2 and served <= {0, 1, 2, 3}


def test_slowdown_stretches_decode(baseline):
    result = simulate(scenario([{"kind": "slowdown", "target": HOME, "speed": 0.25, "at": 30, "duration": 60}]))
    tpot = lambda r: ((r["finish"] - r["first_token"]) / (r["output_tokens"] - 1)).median()  # noqa: E731
    assert tpot(during(result.requests, 35, 85)) > 3 * tpot(during(baseline, 35, 85))


def test_memory_pressure_forces_preemptions():
    calm = simulate(scenario([]))
    squeezed = simulate(scenario([{"kind": "memory_pressure", "target": HOME, "kv_fraction": 0.002, "at": 30, "duration": 60}]))
    assert squeezed.stats["preemptions"] > calm.stats["preemptions"]


def test_error_injection_is_retried_and_fails_without_retries():
    errors = [{"kind": "error_injection", "target": HOME, "rate": 0.5, "status": 503, "at": 30, "duration": 60}]
    keep_routing = {"circuit_breaker": {"enabled": False}, "outlier_ejection": {"enabled": False}}
    retried = simulate(scenario(errors, keep_routing)).requests
    assert (during(retried)["retries"] > 0).mean() == pytest.approx(0.5, abs=0.1)
    assert (during(retried)["status"] == "ok").mean() > 0.85  # three attempts: 1 - 0.5^3
    plain = simulate(scenario(errors, {**keep_routing, "retries": {"max_attempts": 1}})).requests
    assert (during(plain)["status"] == "failed").mean() == pytest.approx(0.5, abs=0.1)


def test_outlier_ejection_moves_traffic_off_erroring_replicas():
    errors = [{"kind": "error_injection", "target": HOME, "rate": 0.5, "at": 30, "duration": 60}]
    requests = during(simulate(scenario(errors)).requests, 40, 90)
    assert (requests["region"].astype(str) == AWAY).mean() > 0.5


def test_partition_between_clients_and_their_region_fails_over_after_connect_timeouts():
    cut = [{"kind": "partition", "between": [f"clients:{HOME}", HOME], "at": 30, "duration": 60}]
    requests = during(simulate(scenario(cut)).requests, 30, 89)
    assert (requests["status"] == "ok").all()
    assert requests["failed_over"].mean() > 0.5
    assert (requests["region"].astype(str) == AWAY).mean() > 0.8
    assert ttft(during(requests, 30, 31)).min() > 1.0  # the first ones spend the connect timeout


def test_added_latency_and_bandwidth_limits_delay_first_tokens(baseline):
    slow = simulate(scenario([{"kind": "latency", "between": [f"clients:{HOME}", HOME], "delay": "300ms", "at": 30, "duration": 60}]))
    assert ttft(during(slow.requests)).median() - ttft(during(baseline)).median() > 0.25
    thin = simulate(scenario([{"kind": "bandwidth", "between": [f"clients:{HOME}", HOME], "limit": "100kbps", "at": 30, "duration": 60}]))
    assert ttft(during(thin.requests)).median() - ttft(during(baseline)).median() > 0.05


def test_packet_loss_costs_retries():
    lossy = simulate(scenario([{"kind": "packet_loss", "between": [f"clients:{HOME}", HOME], "loss": 0.3, "at": 30, "duration": 60}]))
    assert (during(lossy.requests)["retries"] > 0).mean() > 0.15


def test_failure_processes_are_deterministic_and_leave_arrivals_alone(baseline):
    process = [{"kind": "failure_process", "level": "node", "mtbf": "60s", "mttr": "20s", "effect": "node_crash"}]
    first, second = simulate(scenario(process)), simulate(scenario(process))
    assert len(first.faults) > 2
    pd.testing.assert_frame_equal(first.faults, second.faults)
    pd.testing.assert_frame_equal(first.requests, second.requests)
    assert first.requests["arrival"].equals(baseline["arrival"])


def test_hedging_rescues_requests_stuck_on_a_straggler():
    straggler = [{"kind": "slowdown", "target": NODE, "speed": 0.02, "at": 30, "duration": 60}]
    keep_routing = {"circuit_breaker": {"enabled": False}, "outlier_ejection": {"enabled": False}}
    plain = during(simulate(scenario(straggler, keep_routing)).requests)
    hedged = during(simulate(scenario(straggler, {**keep_routing, "hedging": {"enabled": True, "delay": "300ms"}})).requests)
    assert hedged["hedged"].any() and not plain["hedged"].any()
    assert ttft(hedged).quantile(0.9) < ttft(plain).quantile(0.9) / 2


NODES = [NODE, f"{AWAY}/z/k/node-1"]
DOMAINS = [HOME, AWAY, "p", *NODES]
starts, durations = st.floats(0, 100), st.none() | st.floats(1, 60)
scripted_faults = st.one_of(
    st.builds(lambda t, at, d: {"kind": "outage", "target": t, "at": at, "duration": d}, st.sampled_from(DOMAINS), starts, durations),
    st.builds(lambda t, at, d: {"kind": "node_hang", "target": t, "at": at, "duration": d}, st.sampled_from(NODES), starts, durations),
    st.builds(lambda at, d: {"kind": "accelerator_failure", "target": f"{NODE}/gpu-1", "at": at, "duration": d}, starts, durations),
    st.builds(
        lambda t, speed, at: {"kind": "slowdown", "target": t, "speed": speed, "at": at, "duration": 30},
        st.sampled_from(DOMAINS), st.floats(0.05, 1), starts,
    ),
    st.builds(lambda rate, at: {"kind": "error_injection", "target": HOME, "rate": rate, "at": at, "duration": 30}, st.floats(0, 1), starts),
    st.builds(lambda at: {"kind": "partition", "between": [f"clients:{HOME}", HOME], "at": at, "duration": 20}, starts),
    st.builds(lambda at: {"kind": "packet_loss", "between": [f"clients:{HOME}", HOME], "loss": 0.5, "at": at, "duration": 20}, starts),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=st.lists(scripted_faults, max_size=6), seed=st.integers(0, 1000))
def test_requests_are_conserved_under_random_fault_schedules(faults, seed):
    result = simulate(scenario(faults, duration=60, drain=30), seed=seed)
    statuses = result.requests["status"].astype(str)
    assert not (statuses == "pending").any()
    assert len(result.requests) == result.stats["requests"]
    again = simulate(scenario(faults, duration=60, drain=30), seed=seed)
    pd.testing.assert_frame_equal(result.requests, again.requests)  # same seed, same records
