"""The fault state: composition rules on hand-built fault lists, and both injectors carrying out
the same state changes (the simulator on simulated replicas, the live plan as actions)."""

from __future__ import annotations

import math

import pytest
import simpy

from testbed.faults import Fault, FaultState, transitions, walk
from testbed.live.injector import plan
from testbed.sim.injector import FaultInjector
from testbed.sim.network import NetworkState
from testbed.spec import TopologySpec
from testbed.topology import Topology

TOPOLOGY = Topology.from_spec(
    TopologySpec.model_validate(
        {
            "name": "two-regions",
            "model": "tiny",
            "providers": [
                {
                    "name": "p",
                    "regions": [
                        {"name": r, "zones": [{"name": "z", "racks": [{"name": "k", "nodes": 2, "device": "cpu-fp32", "devices_per_node": 1}]}]}
                        for r in ("east", "west")
                    ],
                }
            ],
        }
    )
)
NODE0, NODE1, EAST = "p/east/z/k/node-0", "p/east/z/k/node-1", "p/east"


def fault(kind: str, target: str, start: float, end: float = math.inf, **params: float) -> Fault:
    return Fault(kind, target, start, end, tuple(TOPOLOGY.domain_replicas(target)), params)


def state_after(schedule: list[Fault], until: float) -> FaultState:
    state = FaultState(TOPOLOGY)
    for at, sign, index in transitions(schedule):
        if at > until:
            break
        state.apply(schedule[index], sign > 0, at, index)
    return state


def test_repairs_come_before_starts_at_the_same_instant():
    schedule = [fault("node_crash", NODE0, 10, 20), fault("node_crash", NODE0, 0, 10)]
    assert transitions(schedule) == [(0, 1, 1), (10, -1, 1), (10, 1, 0), (20, -1, 0)]
    changes = list(walk(schedule, FaultState(TOPOLOGY)))
    # At 10 the first crash's repair brings the replica up, then the second takes it down again.
    assert [(c.at, c.starting, c.replicas[0][2].down) for c in changes] == [(0, True, True), (10, False, False), (10, True, True), (20, False, False)]


def test_overlapping_crashes_are_counted():
    schedule = [fault("node_crash", NODE0, 0, 10), fault("accelerator_failure", f"{NODE0}/cpu-0", 5, 20)]
    downs = [(c.at, c.replicas[0][2].down, c.replicas[0][2].refusing) for c in walk(schedule, FaultState(TOPOLOGY))]
    # Down from the first start to the last repair; refusing once only the process is gone (host back).
    assert downs == [(0, True, False), (5, True, False), (10, True, True), (20, False, False)]


def test_slowdowns_multiply_error_rates_take_the_max_and_kv_the_min():
    schedule = [
        fault("slowdown", NODE0, 0, 30, speed=0.5),
        fault("slowdown", EAST, 1, 30, speed=0.4),
        fault("error_injection", NODE0, 2, 30, rate=0.1, status=503),
        fault("error_injection", EAST, 3, 30, rate=0.3, status=500),
        fault("memory_pressure", NODE0, 4, 30, kv_fraction=0.5),
        fault("memory_pressure", EAST, 5, 30, kv_fraction=0.25),
    ]
    condition = state_after(schedule, 10).replicas[0]
    assert condition.speed == pytest.approx(0.2)
    assert condition.error == (0.3, 500) and condition.error_rate == 0.3
    assert condition.kv_fraction == 0.25
    other = state_after(schedule, 10).replicas[1]  # only the region-wide ones
    assert (other.speed, other.error, other.kv_fraction) == (pytest.approx(0.4), (0.3, 500), 0.25)
    healed = state_after(schedule, 40).replicas[0]
    assert (healed.speed, healed.error_rate, healed.kv_fraction, healed.down) == (1.0, 0.0, 1.0, False)


def test_a_region_outage_cuts_the_region_and_is_not_a_crash_of_its_own():
    schedule = [fault("outage", EAST, 0, 10), fault("node_crash", NODE0, 5, 15)]
    state = FaultState(TOPOLOGY)
    changes = list(walk(schedule, state))
    assert changes[0].regions == (("p/east", 0, 1),)
    node0 = changes[1].replicas[0][2]
    assert node0.down and node0.outages == 1 and node0.crashes == 1
    assert state.cuts == {"p/east": 0} and all(not c.down for c in state.replicas)


def test_network_faults_are_listed_not_composed_per_replica():
    partition = Fault("partition", "clients:p/east<->p/east", 0, 5, (), {}, endpoints=("clients:p/east", "p/east"))
    state = FaultState(TOPOLOGY)
    first = state.apply(partition, True)
    assert first.replicas == () and state.network == [partition]
    state.apply(partition, False)
    assert state.network == []


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="no fault state"):
        FaultState(TOPOLOGY).apply(fault("meteor", NODE0, 0), True)


# ---------------------------------------------------------------------- both injectors


class _Batcher:
    kv_capacity = 1000

    def __init__(self, log: list, index: int) -> None:
        self.log, self.index = log, index

    def set_kv_capacity(self, tokens: int) -> None:
        self.log.append(("kv", self.index, tokens))


class _Replica:
    """Records what the simulator's injector asks of a replica (isolates the injector)."""

    def __init__(self, env: simpy.Environment, index: int, log: list) -> None:
        self.env, self.index, self.log = env, index, log
        self.batcher = _Batcher(log, index)
        self.refusing = False

    def crash(self, refusing: bool = False) -> list:
        self.log.append((self.env.now, "kill", self.index))
        return []

    def restart(self) -> None:
        self.log.append((self.env.now, "restart", self.index))

    def hang(self) -> None:
        self.log.append((self.env.now, "pause", self.index))

    def resume(self) -> None:
        self.log.append((self.env.now, "resume", self.index))

    def set_speed(self, speed: float) -> None:
        self.log.append((self.env.now, "slowdown", self.index, round(1 / speed, 9)))


def test_both_injectors_carry_out_the_same_changes():
    schedule = sorted(
        [
            fault("node_crash", NODE0, 2, 10),
            fault("accelerator_failure", f"{NODE0}/cpu-0", 5, 12),
            fault("node_hang", NODE1, 3, 8),
            fault("node_hang", EAST, 4, 6),
            fault("slowdown", EAST, 1, 9, speed=0.5),
            fault("slowdown", NODE1, 2, 4, speed=0.5),
            fault("node_crash", NODE1, 7, 7),  # a crash repaired the instant it starts
        ],
        key=lambda f: (f.start, f.kind, f.target),
    )
    env = simpy.Environment()
    log: list = []
    replicas = [_Replica(env, i, log) for i in range(len(TOPOLOGY.replicas))]
    injector = FaultInjector(env, schedule, TOPOLOGY, replicas, NetworkState(), lambda work, now: None)
    env.process(injector.run())
    env.run()
    simulated = [entry for entry in log if entry[0] != "kv"]
    live = [
        (a.at, "slowdown", a.target, round(a.params["slowdown"], 9)) if a.verb == "hooks" else (a.at, a.verb, a.target)
        for a in plan(schedule, TOPOLOGY)
    ]
    assert simulated == live
    assert ("kill", 0) in [(e[1], e[2]) for e in simulated] and any(e[1] == "pause" for e in simulated)
