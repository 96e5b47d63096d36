"""The gateway queue (late binding): its order and shedding by hand, and M/M/c against Erlang C.

Rules: most important priority first, classes of one priority in turn, FIFO within a class; an
arrival finding the queue full, or a request waiting ``max_wait``, is shed; a request is bound
to a replica only when that replica has a free slot. With c single-slot replicas, Poisson
arrivals and (nearly) exponential service, the fleet is M/M/c: its mean wait must match Erlang
C. Binding on arrival with round robin, the same fleet is c separate M/M/1 queues and waits
longer — which is why the queue exists.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from testbed.policy.gateway import Dispatch, Finish, Gateway, ReplicaState, Wake
from testbed.policy.gateway_queue import GatewayQueue
from testbed.sim import simulate
from testbed.spec import Scenario, ServingSpec


def test_priority_first_then_classes_in_turn_then_fifo():
    queue = GatewayQueue()
    for rid, (priority, cls) in enumerate([(1, 0), (1, 0), (1, 0), (1, 1), (0, 2), (1, 1)]):
        assert queue.push(rid, priority, cls)
    assert [queue.pop() for _ in range(6)] == [4, 0, 3, 1, 5, 2]
    assert queue.pop() is None


def test_full_queue_refuses_and_removal_keeps_the_turns():
    queue = GatewayQueue(max_length=2)
    assert queue.push(0, 0, 0) and queue.push(1, 0, 1)
    assert not queue.push(2, 0, 0)
    assert queue.remove(0) and not queue.remove(0)
    assert queue.pop() == 1 and len(queue) == 0


def test_push_front_gives_the_turn_back():
    queue = GatewayQueue()
    for rid, cls in enumerate([0, 0, 1]):
        queue.push(rid, 0, cls)
    rid = queue.pop()
    queue.push_front(rid, 0, 0)
    assert [queue.pop() for _ in range(3)] == [0, 2, 1]


def gateway(queue: dict, slots: int = 1, replicas: int = 1) -> Gateway:
    views = [ReplicaState(i, "r/a", "primary", capacity=8) for i in range(replicas)]
    spec = ServingSpec.model_validate({"queue": {"enabled": True, "slots_per_replica": slots, **queue}})
    return Gateway(spec, views, ["r/a"], lambda a, b: 0.0, random.Random(0))


def test_the_gateway_holds_requests_until_a_slot_frees():
    g = gateway({})
    [first] = g.on_arrival(0, 1, "r/a", 0.0)
    assert isinstance(first, Dispatch)
    assert g.on_arrival(1, 1, "r/a", 0.1) == [] and g.on_arrival(2, 0, "r/a", 0.2) == []
    assert g.replicas[0].outstanding == 1 and len(g.queue) == 2
    finish, nxt = g.on_attempt_end(first.attempt, "ok", 1.0)
    assert isinstance(finish, Finish) and isinstance(nxt, Dispatch) and nxt.rid == 2  # priority 0 first
    g.on_probe(0, False, 1.5), g.on_probe(0, False, 1.6)  # the replica fails its health checks
    assert not g.replicas[0].available
    [finish] = g.on_attempt_end(nxt.attempt, "ok", 2.0)
    assert finish.rid == 2 and len(g.queue) == 1  # no free slot anywhere: request 1 still waits
    g.on_probe(0, True, 2.5), g.on_probe(0, True, 2.6)
    [late] = g.drain(3.0)
    assert late.rid == 1


def test_a_request_that_waits_max_wait_or_finds_the_queue_full_is_shed():
    g = gateway({"max_wait": "2s", "max_length": 1})
    g.on_arrival(0, 0, "r/a", 0.0)
    [wake] = g.on_arrival(1, 0, "r/a", 0.5)
    assert wake == Wake(1, 2.5, "queue")
    [shed] = g.on_arrival(2, 0, "r/a", 0.6)
    assert shed.status == "shed" and shed.rid == 2
    [expired] = g.on_timer(1, "queue", 2.5)
    assert expired.status == "shed" and len(g.queue) == 0
    cancelled = g.on_deadline(0, 60.0)
    assert cancelled[-1].status == "timeout"


# --------------------------------------------------------------------------- M/M/c in the simulator

REPLICAS = 4
PREFILL_S = 0.001
DECODE_STEP_S = 0.01
Q = 0.98  # output tokens geometric: P(k) = (1 - Q) Q^(k-1)


def erlang_c(c: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load ``offered`` = lambda / mu."""
    rho = offered / c
    top = offered**c / math.factorial(c) / (1 - rho)
    return top / (sum(offered**k / math.factorial(k) for k in range(c)) + top)


def mmc_scenario(tmp_path: Path, rate: float, queue: bool, duration: float) -> Scenario:
    profile = {
        "device": "flat",
        "model": "llama-3-8b",
        "prefill": {"tokens": [1, 100_000], "seconds": [PREFILL_S, PREFILL_S]},
        "decode": {"batch_sizes": [1, 4096], "context_tokens": [1, 100_000],
                   "seconds": [[DECODE_STEP_S, DECODE_STEP_S], [DECODE_STEP_S, DECODE_STEP_S]]},
    }
    (tmp_path / "flat.json").write_text(json.dumps(profile))
    values = list(range(1, 801))
    data = {
        "name": "mmc",
        "topology": {
            "name": "c-servers",
            "devices": {"flat": {"peak_flops": 1e15, "memory_bandwidth": 1e12, "memory_bytes": 1e12}},
            "profiles": {"flat": "flat.json"},
            "intra_region_rtt": 0,
            "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                {"name": "k", "device": "flat", "devices_per_node": REPLICAS}]}]}]}],
        },
        "workload": {
            "arrival": {"kind": "poisson", "rate": rate},
            "prompt_tokens": {"kind": "fixed", "value": 16},
            "output_tokens": {"kind": "empirical", "values": values, "weights": [Q ** (k - 1) for k in values]},
        },
        "serving": {
            "batching": {"policy": "continuous", "max_num_seqs": 1},
            "routing": {"policy": "round_robin"},
            "queue": {"enabled": queue, "slots_per_replica": 1},
            "timeouts": {"request": "1h"},
            "health_check": {"enabled": False},
        },
        "duration": duration,
        "warmup": duration / 20,
        "seed": 11,
    }
    return Scenario.model_validate(data, context={"base_dir": str(tmp_path)})


def test_the_gateway_queue_is_m_m_c_and_matches_erlang_c(tmp_path):
    k = np.arange(1, 801)
    weights = Q ** (k - 1)
    service = PREFILL_S + (k - 1) * DECODE_STEP_S
    mean_s = float((weights * service).sum() / weights.sum())
    cv2 = float((weights * service**2).sum() / weights.sum()) / mean_s**2 - 1
    rho = 0.8
    rate = rho * REPLICAS / mean_s
    duration = 15_000 / rate

    def wait(queue: bool) -> float:
        result = simulate(mmc_scenario(tmp_path, rate, queue, duration))
        steady = result.requests[result.requests["arrival"] >= result.scenario.warmup]
        assert (steady["status"] == "ok").all()
        return float((steady["finish"] - steady["arrival"]).mean()) - mean_s

    # Service is geometric, CV^2 = 1.02, not exactly exponential: the Allen-Cunneen factor
    # (1 + CV^2) / 2 (exact for c = 1) carries Erlang C over.
    expected = erlang_c(REPLICAS, rate * mean_s) / (REPLICAS / mean_s - rate) * (1 + cv2) / 2
    assert wait(True) == pytest.approx(expected, rel=0.08)
    # Bound on arrival, round robin: four M/G/1 queues, each at rho (Pollaczek-Khinchine).
    separate = rho * mean_s * (1 + cv2) / (2 * (1 - rho))
    assert separate > 1.5 * expected
    assert wait(False) > 1.3 * expected


def test_classes_of_one_priority_take_turns_in_the_simulated_queue(tmp_path):
    """A flood of one class cannot starve another of the same priority: with the fleet
    overloaded, the rare class waits far less than the flood it arrives among."""
    k = np.arange(1, 801)
    weights = Q ** (k - 1)
    mean_s = float((weights * (PREFILL_S + (k - 1) * DECODE_STEP_S)).sum() / weights.sum())
    spec = mmc_scenario(tmp_path, 1.1 * REPLICAS / mean_s, True, 300.0)
    data = spec.model_dump(mode="json", by_alias=True)
    data["workload"]["classes"] = [{"name": "flood", "share": 0.9}, {"name": "rare", "share": 0.1}]
    result = simulate(Scenario.model_validate(data, context={"base_dir": str(tmp_path)}))
    served = result.requests[result.requests["status"] == "ok"]
    waited = (served["first_token"] - served["arrival"]).groupby(served["request_class"].astype(str)).mean()
    assert waited["rare"] < 0.2 * waited["flood"], waited
