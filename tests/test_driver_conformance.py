"""One scripted run of replica events, two drivers, the same gateway decisions.

Both planes hand every decision to :class:`testbed.policy.gateway.Gateway`; what could still
drift is each driver's adapter — how it turns what a replica did (answered, refused the
connection, answered 400 or 503, passed or failed a probe) into the policy's events, and how it
carries out the actions. This test plays one script through the simulator's adapter (a real
``_Run`` in SimPy time, replicas served by its perf model) and through the live gateway's (its
FastAPI app in-process, replicas answered by an httpx transport), records every call into the
policy and every action it returned, and requires the two records to be equal — outcomes,
replicas, retries and backoff delays drawn from the same named random stream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from testbed.draw import draw  # noqa: E402
from testbed.live.gateway import LiveGateway, Upstream  # noqa: E402
from testbed.policy.gateway import Cancel, Dispatch, Finish, Wake  # noqa: E402
from testbed.sim.engine import _Run  # noqa: E402
from testbed.spec import Scenario  # noqa: E402

SEED = 7
REGION = "p/r"
SERVING = {
    "routing": {"policy": "least_outstanding"},
    "retries": {"max_attempts": 3, "backoff": "20ms", "budget_min_per_s": 100},
    "health_check": {"period": "1h", "unhealthy_threshold": 2, "healthy_threshold": 1},
    "circuit_breaker": {"consecutive_failures": 5},
}
STEP = 5.0  # simulated seconds between requests: each settles (retries included) well within it
ERROR_AT = 4 * STEP  # the fifth request meets an error injection on replica 0
# (what each replica does with the next request, or a probe): "ok", "refuse", "too_long", "error".
SCRIPT: list[tuple[str, Any]] = [
    ("request", {0: "ok", 1: "ok"}),
    ("request", {0: "refuse", 1: "ok"}),  # refused: retried on r1, r0 out until a probe passes
    ("request", {0: "ok", 1: "ok"}),
    ("probe", (0, True)),
    ("request", {0: "too_long", 1: "ok"}),  # the client's error: not retried
    ("request", {0: "error", 1: "ok"}),  # a 503: retried elsewhere
    ("probe", (1, False)),
    ("probe", (1, False)),  # r1 unhealthy
    ("request", {0: "ok", 1: "ok"}),
]


class Recorder:
    """Wraps a policy Gateway: logs each event (without its time) and the actions it returned."""

    EVENTS = ("on_arrival", "on_first_token", "on_attempt_end", "on_timer", "on_deadline", "on_probe")

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self.log: list[tuple] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._policy, name)
        if name not in self.EVENTS:
            return target

        def call(*args: Any, **options: Any) -> Any:
            *fields, now = args[:_TIME_AT[name] + 1]
            result = target(*args, **options)
            actions = [_normal(a, now) for a in result] if isinstance(result, list) else result
            self.log.append((name, *fields, *sorted(options.items()), actions))
            return result

        return call


_TIME_AT = {"on_arrival": 3, "on_first_token": 1, "on_attempt_end": 2, "on_timer": 2, "on_deadline": 1, "on_probe": 2}


def _normal(action: Any, now: float) -> tuple:
    if isinstance(action, Wake):
        return ("wake", action.rid, action.tag, round(action.at - now, 9))
    if isinstance(action, Dispatch):
        return ("dispatch", action.rid, action.attempt, action.replica, action.hedge)
    if isinstance(action, Cancel):
        return ("cancel", action.rid, action.attempt, action.replica)
    assert isinstance(action, Finish)
    return ("finish", action.rid, str(action.status), action.attempt, action.retries)


def scenario() -> Scenario:
    return Scenario.model_validate({
        "name": "script",
        "topology": {"name": "two", "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
            {"name": "k", "device": "A100", "nodes": 1, "devices_per_node": 2}]}]}]}]},
        "workload": {"arrival": {"kind": "poisson", "rate": 1}, "prompt_tokens": {"kind": "fixed", "value": 50},
                     "output_tokens": {"kind": "fixed", "value": 4}},
        "serving": SERVING,
        "faults": [{"kind": "error_injection", "target": "p/r/z/k/node-0/gpu-0", "rate": 1.0, "status": 503,
                    "at": ERROR_AT - 0.1, "duration": 0.2}],
        "duration": 60,
        "seed": SEED,
    })


def run_sim() -> list[tuple]:
    run = _Run(draw(scenario(), SEED), None)
    recorder = Recorder(run.gateway)
    run.gateway = recorder  # type: ignore[assignment]
    env, rid = run.env, 0
    env.process(run.injector.run())  # the scenario's error injection answers the "error" step
    for step, what in SCRIPT:
        if step == "probe":
            run._probe(*what)
            continue
        for index, does in what.items():
            replica = run.replicas[index]
            replica.alive, replica.refusing = does != "refuse", does == "refuse"
        run._prompt_tokens[rid] = 10**7 if "too_long" in what.values() else 50
        assert ("error" in what.values()) == (env.now == ERROR_AT)
        run._execute(run._arrive(rid, env.now))
        env.run(until=env.now + STEP)
        rid += 1
    return recorder.log


def run_live() -> list[tuple]:
    upstreams = [Upstream(f"r{i}", f"http://replica-{i}", REGION) for i in range(2)]
    gateway = LiveGateway(scenario().serving, upstreams, client_regions=[REGION], seed=SEED)
    recorder = Recorder(gateway.policy)
    gateway.policy = recorder  # type: ignore[assignment]
    behaviour: dict[int, str] = {0: "ok", 1: "ok"}
    probe_ok: dict[int, bool] = {}

    def replica(request: httpx.Request) -> httpx.Response:
        index = int(request.url.host.rsplit("-", 1)[1])
        if request.url.path == "/health":
            return httpx.Response(200 if probe_ok[index] else 503)
        does = behaviour[index]
        if does == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if does == "too_long":
            return httpx.Response(400, json={"error": {"message": "prompt too long", "type": "invalid_request_error", "param": "prompt", "code": "context_length_exceeded"}})
        if does == "error":
            return httpx.Response(503, json={"error": {"message": "injected", "type": "service_unavailable", "param": None, "code": None}})
        body = {"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}], "usage": {"prompt_tokens": 50, "completion_tokens": 4}}
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"x-ttft": "0.001"})

    async def play() -> None:
        gateway.client = httpx.AsyncClient(transport=httpx.MockTransport(replica))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway") as client:
            for step, what in SCRIPT:
                if step == "probe":
                    index, ok = what
                    probe_ok[index] = ok
                    await gateway._probe(index)
                    continue
                behaviour.update(what)
                await client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
        await gateway.client.aclose()

    asyncio.run(play())
    return recorder.log


def test_the_same_replica_events_give_the_same_gateway_actions_in_both_drivers():
    sim, live = run_sim(), run_live()
    assert any(entry[0] == "on_attempt_end" and entry[2] == "unavailable" for entry in sim)
    assert any(entry[0] == "on_attempt_end" and entry[2] == "client_error" for entry in sim)
    assert sum(entry[0] == "on_timer" for entry in sim) == 2  # two retries, after drawn backoffs
    assert live == sim
