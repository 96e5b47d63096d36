"""Both planes start from the same draw: for one scenario and seed, the simulation and the live
replay face the same requests, the same fault schedule and the same gateway-policy randomness.

Each plane is read through the path it really runs — the simulator's records from
:func:`testbed.sim.simulate`, the live plane's :func:`testbed.live.replay.prepare` and the
gateway a live stack builds — never by calling :func:`testbed.draw.draw` twice.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from testbed.faults import faults_frame
from testbed.live.gateway import LiveGateway, Upstream
from testbed.live.replay import prepare
from testbed.policy import gateway as policy_gateway
from testbed.sim import simulate
from testbed.spec import Scenario, validate_spec

TOPOLOGY = {
    "name": "two-regions",
    "model": "tiny",
    "providers": [
        {
            "name": "local",
            "regions": [
                {"name": region, "zones": [{"name": "z", "racks": [{"name": "host", "nodes": 2, "device": "cpu-fp32", "devices_per_node": 1}]}]}
                for region in ("east", "west")
            ],
        }
    ],
}


def scenario(seed: int) -> Scenario:
    """Random arrivals and lengths, a random failure process and a scripted fault: much to draw."""
    data = {
        "name": "conformance",
        "topology": TOPOLOGY,
        "duration": 30,
        "drain": 10,
        "seed": seed,
        "workload": {
            "arrival": {"kind": "poisson", "rate": 5},
            "prompt_tokens": {"kind": "uniform", "low": 16, "high": 64},
            "output_tokens": {"kind": "uniform", "low": 4, "high": 12},
            "classes": [{"name": "chat", "share": 0.75}, {"name": "batch", "share": 0.25, "priority": 1}],
        },
        "serving": {"batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": 0.01}, "routing": {"policy": "power_of_two"}},
        "faults": [
            {"kind": "failure_process", "level": "node", "effect": "node_crash", "mtbf": 20, "mttr": 4},
            {"kind": "slowdown", "target": "local/west/z/host/node-1", "speed": 0.5, "at": 5, "duration": 10},
        ],
        "sla": [{"metric": "availability", "min": "50%"}],
    }
    return validate_spec(data, Scenario, source="test")


@pytest.fixture(params=[3, 11])
def planes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """(scenario, the simulation's result, the live replay plan, each plane's policy RNG)."""
    spec = scenario(request.param)
    seen: list[random.Random] = []
    original = policy_gateway.Gateway.__init__

    def capture(self, spec, replicas, client_regions, rtt, rng):  # the rng each plane hands the policy
        seen.append(_copy(rng))
        original(self, spec, replicas, client_regions, rtt, rng)

    monkeypatch.setattr(policy_gateway.Gateway, "__init__", capture)
    sim = simulate(spec)
    replay = prepare(spec)
    # The live stack builds its gateway with the replay's seed (LiveStack -> LiveGateway).
    upstreams = [Upstream(r.name, f"http://127.0.0.1:{9 + i}", r.region, r.tier, r.pool) for i, r in enumerate(replay.topology.replicas)]
    LiveGateway(spec.serving, upstreams, client_regions=replay.arrivals.region_names, seed=replay.seed)
    assert len(seen) == 2
    return spec, sim, replay, seen[0], seen[1]


def _copy(rng: random.Random) -> random.Random:
    twin = random.Random()
    twin.setstate(rng.getstate())
    return twin


def test_both_planes_send_the_same_requests(planes) -> None:
    _, sim, replay, _, _ = planes
    arrivals, rows = replay.arrivals, sim.requests
    assert len(rows) == len(arrivals) > 50
    assert np.array_equal(rows["arrival"].to_numpy(), arrivals.time)
    assert np.array_equal(rows["prompt_tokens"].to_numpy(), arrivals.prompt_tokens)
    assert np.array_equal(rows["output_tokens"].to_numpy(), arrivals.output_tokens)
    assert np.array_equal(rows["priority"].to_numpy(), arrivals.priority)
    assert rows["client_region"].astype(str).tolist() == [arrivals.region_names[i] for i in arrivals.client_region]
    assert rows["request_class"].astype(str).tolist() == [arrivals.class_names[i] for i in arrivals.request_class]
    assert len(set(arrivals.class_names[i] for i in arrivals.request_class)) == 2  # the draw had something to agree on


def test_both_planes_inject_the_same_schedule(planes) -> None:
    _, sim, replay, _, _ = planes
    live = faults_frame(replay.schedule)
    assert len(live) >= 2 and (live["source"] != "scripted").any()  # the failure process drew something
    pd.testing.assert_frame_equal(sim.faults[list(live.columns)], live)
    # Every fault the live plane will carry out is one of the schedule's, at the schedule's time.
    for action in replay.actions:
        fault = replay.schedule[action.fault]
        assert action.at in (fault.start, fault.end)


def test_both_planes_give_the_gateway_policy_the_same_random_stream(planes) -> None:
    _, _, _, sim_rng, live_rng = planes
    assert [sim_rng.random() for _ in range(50)] == [live_rng.random() for _ in range(50)]


def test_a_different_seed_is_a_different_draw() -> None:
    """The checks above could pass on a constant draw; two seeds must differ in every part."""
    a, b = prepare(scenario(3)), prepare(scenario(11))
    assert not np.array_equal(a.arrivals.time[:10], b.arrivals.time[:10])
    assert [f.start for f in a.schedule] != [f.start for f in b.schedule]
    assert a.draw.policy_rng().random() != b.draw.policy_rng().random()
