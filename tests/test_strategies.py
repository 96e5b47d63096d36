"""Hypothesis strategies: every draw is a valid fault on a real target, and shrinking heads for
fewer, earlier, shorter, narrower, milder faults."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from testbed.faults import REQUIRED_LEVEL, validate_targets
from testbed.spec import Scenario, TopologySpec
from testbed.strategies import (
    DEFAULT_KINDS,
    fault_schedules,
    faults,
    grid_step,
    perturb,
    scenario_perturbations,
    targets,
)
from testbed.topology import Topology

TOPOLOGY = TopologySpec.model_validate(
    {
        "name": "two-regions",
        "providers": [
            {
                "name": "p",
                "regions": [
                    {"name": "east", "zones": [{"name": "z", "racks": [{"name": "k", "nodes": 2, "device": "L4", "devices_per_node": 2}]}]},
                    {"name": "west", "zones": [{"name": "z", "racks": [{"name": "k", "nodes": 1, "device": "L4", "devices_per_node": 1}]}]},
                ],
            }
        ],
    }
)
SCENARIO = Scenario.model_validate(
    {
        "name": "small",
        "topology": TOPOLOGY.model_dump(),
        "workload": {"arrival": {"kind": "poisson", "rate": 2.0}},
        "duration": 120.0,
        "seed": 5,
        "sla": [{"metric": "availability", "min": 0.99}],
    }
)
QUICK = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@QUICK
@given(schedule=fault_schedules(SCENARIO, max_faults=4))
def test_every_drawn_schedule_is_a_valid_scenario_on_the_grid(schedule):
    assert len(schedule) <= 4
    topology = Topology.from_spec(TOPOLOGY)
    validate_targets(schedule, topology)  # raises on an unknown target or a wrong level
    Scenario.model_validate({**SCENARIO.model_dump(by_alias=True), "faults": [f.model_dump() for f in schedule]})
    assert [f.at for f in schedule] == sorted(f.at for f in schedule)
    for fault in schedule:
        assert 0 <= fault.at < SCENARIO.duration
        assert fault.duration is not None and fault.duration >= 1.0
        assert fault.at % 2.0 == 0 and fault.duration % 2.0 == 0  # a 120 s horizon has a 2 s grid
        if fault.kind in REQUIRED_LEVEL:
            assert topology.level(fault.target) == REQUIRED_LEVEL[fault.kind]


@QUICK
@given(fault=faults(TOPOLOGY, kinds=["partition", "latency", "packet_loss", "bandwidth"]))
def test_network_faults_join_two_different_endpoints(fault):
    a, b = fault.between
    assert a != b and {a.removeprefix("clients:"), b.removeprefix("clients:")} <= {"p/east", "p/west"}


def test_shrinking_heads_for_one_early_short_narrow_fault():
    schedule = find(fault_schedules(SCENARIO, max_faults=4), lambda s: len(s) >= 1, settings=QUICK)
    assert len(schedule) == 1
    (fault,) = schedule
    assert (fault.kind, fault.target, fault.at, fault.duration) == ("node_crash", "p/east/z/k/node-0", 0.0, grid_step(120.0))


@pytest.mark.parametrize(
    ("kind", "field", "mildest"),
    [("slowdown", "speed", 0.95), ("error_injection", "rate", 0.05), ("latency", "delay", 0.05), ("bandwidth", "limit", 1.25e9)],
)
def test_parameters_shrink_to_the_mildest_fault(kind, field, mildest):
    schedule = find(fault_schedules(TOPOLOGY, kinds=DEFAULT_KINDS), lambda s: any(f.kind == kind for f in s), settings=QUICK)
    (fault,) = schedule
    assert getattr(fault, field) == pytest.approx(mildest)


def test_an_outage_shrinks_to_the_narrowest_domain_and_a_wide_one_stays_wide():
    rack = find(faults(TOPOLOGY, kinds=["outage"]), lambda f: True, settings=QUICK)
    assert rack.target == "p/east/z/k"
    region = find(faults(TOPOLOGY, kinds=["outage"]), lambda f: f.target.count("/") == 1, settings=QUICK)
    assert region.target == "p/east"


def test_targets_are_listed_narrowest_first():
    topology = Topology.from_spec(TOPOLOGY)
    assert targets(topology, "node_crash") == ["p/east/z/k/node-0", "p/east/z/k/node-1", "p/west/z/k/node-0"]
    assert targets(topology, "outage")[0] == "p/east/z/k" and targets(topology, "outage")[-1] == "p"
    assert targets(topology, "partition")[:2] == ["clients:p/east<->p/east", "clients:p/west<->p/west"]


def test_grid_steps_are_round_numbers_near_a_hundredth_of_the_horizon():
    assert [grid_step(h) for h in (60, 120, 900, 43200, 0.5)] == [1.0, 2.0, 10.0, 500.0, 0.005]


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match=r"unknown fault kind 'node_crsh'; expected some of \['node_crash'"):
        faults(TOPOLOGY, kinds=["node_crsh"])
    with pytest.raises(ValueError, match="kinds is empty"):
        faults(TOPOLOGY, kinds=[])
    with pytest.raises(ValueError, match="min_faults <= max_faults"):
        fault_schedules(TOPOLOGY, min_faults=3, max_faults=2)
    with pytest.raises(ValueError, match="horizon must be positive"):
        faults(TOPOLOGY, horizon=0)
    with pytest.raises(TypeError, match="expected a Topology"):
        faults("topologies/laptop.yaml")


@QUICK
@given(scenario=scenario_perturbations(SCENARIO, max_faults=2, rate_scale=(0.5, 2.0)))
def test_perturbations_are_valid_scenarios_within_the_load_range(scenario):
    assert isinstance(scenario, Scenario)
    assert 1.0 - 1e-9 <= scenario.workload.arrival.rate <= 4.0 + 1e-9
    assert len(scenario.faults) <= 2


def test_perturbations_shrink_back_to_the_scenario_itself():
    smallest = find(scenario_perturbations(SCENARIO), lambda s: True, settings=QUICK)
    assert smallest.model_dump() == SCENARIO.model_dump()
    louder = find(scenario_perturbations(SCENARIO), lambda s: s.workload.arrival.rate > 3.0, settings=QUICK)
    assert louder.workload.arrival.rate == pytest.approx(3.1) and louder.seed == SCENARIO.seed and not louder.faults


def test_perturb_scales_step_rates_and_trace_time():
    stepped = SCENARIO.model_copy(
        update={"workload": SCENARIO.workload.model_validate({"arrival": {"kind": "step", "rate": 2, "steps": [{"at": 10, "rate": 6}]}})}
    )
    doubled = perturb(stepped, 2.0, seed=9, added=[])
    assert (doubled.workload.arrival.rate, doubled.workload.arrival.steps[0].rate, doubled.seed) == (4.0, 12.0, 9)


@given(st.data())
@settings(max_examples=5, deadline=None, database=None)
def test_a_bare_topology_gets_a_sixty_second_horizon(data):
    fault = data.draw(faults(Topology.from_spec(TOPOLOGY)))
    assert 0 <= fault.at < 60
