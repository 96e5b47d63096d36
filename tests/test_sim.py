"""The simulator end to end: conservation, determinism, and the policies' effects on records."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.records.schema import REQUEST_COLUMNS
from testbed.sim import ConservationError, simulate
from testbed.sim.replica import SimReplica
from testbed.spec import Scenario

ROOT = Path(__file__).resolve().parents[1]


def small(**overrides) -> Scenario:
    """Two L4 replicas serving Llama 3 8B: small enough to overload on purpose."""
    data = {
        "name": "small",
        "topology": {
            "name": "two-l4",
            "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                {"name": "k", "device": "L4", "nodes": 1, "devices_per_node": 2}]}]}]}],
        },
        "workload": {
            "arrival": {"kind": "poisson", "rate": 4},
            "prompt_tokens": {"kind": "uniform", "low": 64, "high": 512},
            "output_tokens": {"kind": "uniform", "low": 16, "high": 128},
        },
        "sla": [{"metric": "ttft", "percentile": 99, "max": "2s"}, {"metric": "availability", "min": 0.99}],
        "duration": 60,
        "seed": 5,
    }
    for key, value in overrides.items():
        data[key] = value
    return Scenario.model_validate(data)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def test_records_have_the_schema_and_every_request_ends_once():
    result = simulate(small())
    assert list(result.requests.columns) == list(REQUEST_COLUMNS)
    assert len(result.requests) == result.stats["requests"] > 100
    assert set(result.requests["status"].unique()) <= {"ok", "failed", "timeout", "shed"}
    ok = result.requests[result.requests["status"] == "ok"]
    assert (ok["arrival"] <= ok["first_token"]).all() and (ok["first_token"] <= ok["finish"]).all()
    assert result.passed


def test_same_seed_gives_byte_identical_records_and_another_seed_does_not():
    first, second = simulate(small()), simulate(small())
    assert parquet_bytes(first.requests) == parquet_bytes(second.requests)
    assert parquet_bytes(first.timeseries) == parquet_bytes(second.timeseries)
    other = simulate(small(), seed=6)
    assert not other.requests["arrival"].equals(first.requests["arrival"])


def test_changing_serving_policy_keeps_the_same_arrivals():
    """Common random numbers: an A/B of policies sees the very same requests."""
    a = simulate(small())
    b = simulate(small(serving={"batching": {"policy": "micro", "max_batch_size": 4}, "routing": {"policy": "round_robin"}}))
    for column in ("arrival", "prompt_tokens", "output_tokens", "request_class"):
        assert a.requests[column].equals(b.requests[column])


def test_overload_ends_in_timeouts_that_violate_the_sla_and_still_conserves():
    result = simulate(small(workload={"arrival": {"kind": "poisson", "rate": 400}}, drain=5))
    statuses = result.requests["status"].value_counts()
    assert statuses["timeout"] > 0 and statuses.get("pending", 0) == 0
    assert statuses.sum() == len(result.requests)
    assert not result.passed
    assert {v.metric: v.passed for v in result.sla}["availability"] is False


def test_a_prompt_longer_than_the_kv_cache_fails_cleanly():
    scenario = small(
        workload={"arrival": {"kind": "poisson", "rate": 2}, "prompt_tokens": {"kind": "fixed", "value": 5000}},
        serving={"batching": {"policy": "continuous", "kv_cache_tokens": 4096}},
    )
    result = simulate(scenario)
    assert (result.requests["status"] == "failed").all()
    assert (result.requests["replica"] == -1).all()


def test_continuous_batching_beats_static_micro_batching_at_the_same_load():
    load = {"arrival": {"kind": "poisson", "rate": 12}, "output_tokens": {"kind": "uniform", "low": 8, "high": 256}}
    continuous = simulate(small(workload=load))
    micro = simulate(small(workload=load, serving={"batching": {"policy": "micro", "max_batch_size": 16, "max_queue_delay": "50ms"}}))
    e2e = lambda r: (r.requests["finish"] - r.requests["arrival"]).quantile(0.9)  # noqa: E731
    assert e2e(continuous) < e2e(micro)


def test_region_affine_keeps_traffic_local_and_never_touches_the_fallback_tier():
    scenario = Scenario.from_yaml(ROOT / "faults" / "baseline.yaml").model_copy(deep=True)
    data = scenario.model_dump(by_alias=True)
    data["topology"] = str(ROOT / "topologies" / "multi-cloud.yaml")
    data["workload"]["arrival"] = {"kind": "poisson", "rate": 50}
    data["workload"]["client_regions"] = {"aws/us-east-1": 0.5, "aws/eu-west-1": 0.5}
    data["serving"]["routing"] = {"policy": "region_affine"}
    data["duration"] = 30
    data["warmup"] = 0
    result = simulate(Scenario.model_validate(data))
    requests = result.requests
    assert (requests["region"].astype(str) == requests["client_region"].astype(str)).all()
    assert "onprem/cpu-fallback" not in set(requests["region"].astype(str))
    # Intra-region RTT only: the first token arrives within a millisecond of the replica's.
    assert requests["first_token"].notna().all()


def test_timeseries_samples_every_replica_each_interval():
    result = simulate(small(timeseries_interval=5))
    series = result.timeseries
    assert set(series["replica"]) == {0, 1}
    assert series["utilisation"].between(0, 1 + 1e-9).all()
    assert series["completed"].sum() == (result.requests["status"] == "ok").sum()


def test_a_replica_that_stops_working_is_reported_not_hidden(monkeypatch):
    monkeypatch.setattr(SimReplica, "_start_next", lambda self: setattr(self, "_iteration", None))
    with pytest.raises(ConservationError, match="stopped working"):
        simulate(small(duration=10, drain=5))


def test_a_lost_request_is_reported(monkeypatch):
    """A request the gateway finished but the records never closed is caught, not hidden."""
    from testbed.sim import engine

    original = engine._Run._finish

    def drop_request_7(self, action):
        if action.rid != 7:
            original(self, action)

    monkeypatch.setattr(engine._Run, "_finish", drop_request_7)
    with pytest.raises(ConservationError, match="1 requests were lost"):
        simulate(small(duration=10, drain=30))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.floats(0.5, 60),
    batching=st.sampled_from(
        [
            {"policy": "continuous", "max_num_seqs": 8, "kv_cache_tokens": 3000},
            {"policy": "continuous"},
            {"policy": "micro", "max_batch_size": 4, "max_queue_delay": "20ms"},
            {"policy": "micro", "adaptive": True, "target_latency": "3s"},
        ]
    ),
    routing=st.sampled_from(["round_robin", "least_outstanding", "power_of_two", "region_affine"]),
    seed=st.integers(0, 2**16),
)
def test_conservation_holds_for_any_load_and_policy(rate, batching, routing, seed):
    scenario = small(
        workload={"arrival": {"kind": "gamma", "rate": rate, "cv": 2}, "output_tokens": {"kind": "uniform", "low": 1, "high": 64}},
        serving={"batching": batching, "routing": {"policy": routing}},
        duration=20,
        drain=10,
    )
    result = simulate(scenario, seed=seed)
    statuses = result.requests["status"].astype(str)
    assert not (statuses == "pending").any()
    assert len(result.requests) == result.stats["requests"]


def test_priority_shedding_refuses_the_less_important_class_first_under_overload():
    workload = {
        "arrival": {"kind": "poisson", "rate": 60},
        "classes": [{"name": "interactive", "share": 0.5, "priority": 0}, {"name": "batch", "share": 0.5, "priority": 1}],
    }
    serving = {"admission": {"shed_thresholds": {1: 0.3}}, "batching": {"policy": "continuous", "max_num_seqs": 16}}
    result = simulate(small(workload=workload, serving=serving, sla=[]))
    shed = result.requests[result.requests["status"] == "shed"]
    assert len(shed) > 0
    assert set(shed["request_class"].astype(str)) == {"batch"}
