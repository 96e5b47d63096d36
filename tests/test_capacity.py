"""The analytic capacity estimate: loads below it are sustained, loads well above it are not."""

from __future__ import annotations

import pytest

from testbed.capacity import fleet_capacity, mean_length
from testbed.sim import simulate
from testbed.spec import EmpiricalLength, LognormalLength, Scenario, UniformLength


def scenario(rate: float, nodes: int = 1) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "capacity",
            "topology": {
                "name": "l4",
                "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                    {"name": "k", "device": "L4", "nodes": nodes, "devices_per_node": 2}]}]}]}],
            },
            "workload": {
                "arrival": {"kind": "poisson", "rate": rate},
                "prompt_tokens": {"kind": "fixed", "value": 256},
                "output_tokens": {"kind": "uniform", "low": 32, "high": 160},
            },
            "serving": {"batching": {"policy": "continuous", "max_num_seqs": 16}, "routing": {"policy": "least_outstanding"}},
            "duration": 300,
            "drain": 30,
            "seed": 4,
        }
    )


def test_capacity_scales_with_the_fleet():
    assert fleet_capacity(scenario(1, nodes=2)) == pytest.approx(2 * fleet_capacity(scenario(1, nodes=1)))


def test_mean_lengths():
    assert mean_length(UniformLength(kind="uniform", low=10, high=20)) == 15
    assert mean_length(EmpiricalLength(kind="empirical", values=[1, 3], weights=[3, 1])) == 1.5
    assert mean_length(LognormalLength(kind="lognormal", median=100, sigma=0.5)) == pytest.approx(113.3, rel=1e-3)


def test_seventy_percent_of_capacity_is_sustained_and_double_is_not():
    capacity = fleet_capacity(scenario(1))
    calm = simulate(scenario(0.7 * capacity)).requests
    e2e = calm["finish"] - calm["arrival"]
    late = e2e[calm["arrival"] > 200].median()
    early = e2e[(calm["arrival"] > 20) & (calm["arrival"] < 100)].median()
    assert (calm["status"] == "ok").all() and late < 1.5 * early  # no queue building up
    overloaded = simulate(scenario(2.0 * capacity)).requests
    assert (overloaded["status"] != "ok").mean() > 0.2
