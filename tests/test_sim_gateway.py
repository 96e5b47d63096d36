"""The simulator carries the gateway's decisions out as the live gateway does.

Each test here pins a behaviour the live plane has too (tests/test_live_policy.py holds the
live twins): retries that never go back to a dead replica while another is up, a refused
connection taking a replica out at once, and health probes on the checker's staggered schedule.
"""

from __future__ import annotations

from testbed.policy.health import HealthChecker
from testbed.sim import simulate
from testbed.spec import Scenario
from testbed.topology import Topology


def scenario(serving: dict, faults: list[dict], devices: int = 2, rate: float = 1.0) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "gateway",
            "topology": {
                "name": "one-node",
                "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                    {"name": "k", "device": "A100", "nodes": 1, "devices_per_node": devices}]}]}]}],
            },
            "workload": {
                "arrival": {"kind": "poisson", "rate": rate},
                "prompt_tokens": {"kind": "fixed", "value": 100},
                "output_tokens": {"kind": "fixed", "value": 10},
            },
            "serving": serving,
            "faults": faults,
            "duration": 60,
            "seed": 3,
        }
    )


def test_least_outstanding_with_a_dead_replica_retries_on_the_live_one():
    """The retry black hole: an idle dead replica is least_outstanding's favourite, and
    re-drawing from that deterministic router sent every attempt of a request back to it."""
    serving = {
        "routing": {"policy": "least_outstanding"},
        "health_check": {"period": "120s"},  # no probe comes to the rescue within the run
        "retries": {"max_attempts": 3},
    }
    result = simulate(scenario(serving, [{"kind": "accelerator_failure", "target": "p/r/z/k/node-0/gpu-0", "at": 20}]))
    requests = result.requests
    after = requests[requests["arrival"] > 20]
    assert len(after) > 10 and (requests["status"] == "ok").all()
    assert (after["replica"] == 1).all()
    dead_tries = result.attempts[(result.attempts["replica"] == 0) & (result.attempts["start"] > 20)]
    assert len(dead_tries) <= 1  # the refused connection took it out at once


def test_probes_follow_the_health_checkers_staggered_schedule():
    """Replica i is probed at i * period / n + k * period, as the live gateway probes it, not
    the whole fleet in one burst each period."""
    spec = {"health_check": {"period": "4s", "unhealthy_threshold": 1}}
    fault = {"kind": "accelerator_failure", "target": "p/r/z/k/node-0/gpu-2", "at": 10.5}
    sc = scenario(spec, [fault], devices=4)
    [index] = [r.index for r in Topology.from_spec(sc.topology).replicas if "p/r/z/k/node-0/gpu-2" in r.devices]
    checker = HealthChecker.from_spec(sc.serving.health_check, 4)
    due = []
    while not due or due[-1] < 10.5:
        at = checker.next_due()
        due += [at] if index in checker.probe_due(at) else []
    result = simulate(sc)
    assert result.faults["detected_at"].iloc[0] == due[-1] == 14.0
