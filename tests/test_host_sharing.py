"""Co-located replicas share their host's cores: with ``C`` cores and ``k`` replicas working,
each runs at ``min(1, C / k)`` of its profile's speed, re-timed whenever ``k`` changes."""

from __future__ import annotations

import math

import pytest
import simpy

from testbed.policy.batching import MicroBatcher, Sequence
from testbed.sim import simulate
from testbed.sim.host import SharedHost
from testbed.sim.replica import SimReplica
from testbed.spec import Scenario, validate_spec

STEP = 0.01  # seconds per iteration, whatever the batch: the unit under test is the sharing


class FixedStep:
    """A perf model whose every iteration takes STEP (isolates the host from the latency model)."""

    startup_seconds = 0.0

    def iteration_time(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        return STEP

    def decode_stretch_time(self, decode_seqs: int, context_tokens: int, steps: int) -> float:
        return STEP * steps

    def steps_within(self, decode_seqs: int, context_tokens: int, elapsed: float) -> int:
        return math.floor(elapsed / STEP + 1e-9)

    def prefill_charge(self, prefill_tokens: int, prompts: list[int]) -> int:
        return prefill_tokens


def finish_times(cores: float | None, starts: list[float], output_tokens: int = 11) -> list[float]:
    """Each replica gets one request at its start time; when each finished."""
    env = simpy.Environment()
    done: dict[int, float] = {}
    replicas = [
        SimReplica(env, i, "r", MicroBatcher(1, 0.0, 10**6), FixedStep(), lambda s, t: None, lambda s, t, i=i: done.setdefault(i, t))
        for i in range(len(starts))
    ]
    if cores is not None:
        SharedHost(cores, replicas)
    for replica, at in zip(replicas, starts):
        env.timeout(at).callbacks.append(lambda _e, r=replica, at=at: r.submit(Sequence(r.index, 8, output_tokens, at)))
    env.run()
    return [done[i] for i in range(len(starts))]


ALONE = STEP * 11  # a prefill iteration (first token) and ten decode steps


def test_alone_or_within_the_cores_a_replica_runs_at_its_profile_speed():
    assert finish_times(None, [0, 0, 0]) == pytest.approx([ALONE] * 3)
    assert finish_times(2, [0, 0]) == pytest.approx([ALONE] * 2)


def test_more_working_replicas_than_cores_share_them_equally():
    assert finish_times(2, [0, 0, 0]) == pytest.approx([ALONE * 3 / 2] * 3)
    assert finish_times(2, [0, 0, 0, 0]) == pytest.approx([ALONE * 2] * 4)
    assert finish_times(1.5, [0, 0, 0]) == pytest.approx([ALONE * 2] * 3)  # a calibrated, fractional host


def test_a_running_iteration_is_retimed_when_neighbours_start_and_stop():
    # One core. A works alone for 0.05 s (half its work), then B joins: both run at half speed
    # until A finishes its remaining 0.06 s of work at 0.05 + 0.12 = 0.17; B, having done 0.06
    # of its 0.11 by then, finishes the rest alone: 0.17 + 0.05 = 0.22.
    a, b = finish_times(1, [0.0, 0.05])
    assert a == pytest.approx(0.17) and b == pytest.approx(0.22)


def laptop(host_cores: float | None) -> Scenario:
    topology = {
        "name": "laptop",
        "model": "tiny",
        "providers": [{"name": "l", "regions": [{"name": "east", "zones": [{"name": "z", "racks": [{"name": "h", "nodes": 4, "device": "cpu-fp32", "devices_per_node": 1}]}]}]}],
    }
    if host_cores is not None:
        topology["host_cores"] = host_cores
    data = {
        "name": "shared",
        "topology": topology,
        "duration": 30,
        "seed": 5,
        "workload": {"arrival": {"kind": "poisson", "rate": 40}, "prompt_tokens": {"kind": "fixed", "value": 64}, "output_tokens": {"kind": "fixed", "value": 32}},
        "serving": {"batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": 0.01}},
        "sla": [{"metric": "availability", "min": "50%"}],
    }
    return validate_spec(data, Scenario, source="test")


def test_a_simulated_laptop_with_fewer_cores_than_replicas_is_slower():
    e2e = {}
    for cores in (None, 4, 2):
        requests = simulate(laptop(cores)).requests
        e2e[cores] = (requests["finish"] - requests["arrival"]).median()
    assert e2e[4] == e2e[None]  # a core each: exactly the profile
    assert e2e[2] > 1.2 * e2e[None]


def test_live_replay_refuses_more_host_cores_than_the_machine_has():
    """Live, the machine does the sharing: a topology describing a bigger host cannot be replayed here."""
    from testbed.live.replay import run_live
    from testbed.live.sizing import Machine
    from testbed.spec import SpecError

    with pytest.raises(SpecError, match="topology.host_cores: 8 cores described, but this machine gives the live stack 2"):
        run_live(laptop(8), machine=Machine(cores=2, memory_bytes=16e9))
