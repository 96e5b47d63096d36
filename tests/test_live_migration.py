"""Live request migration: a replica killed (or drained past its timeout) mid-stream, and the
client's stream completes with exactly the tokens of an unbroken run.

Three tiny-model replica processes behind the gateway, with migration on. Each replica's steps
are slowed (its chaos hook), so a 160-token greedy stream is still being generated when the
client has read its first 40 tokens and the fault strikes. The client asks for the token ids itself (``return_token_ids``), so the test compares
what it received, id for id, with an unbroken run of the same prompt
(:func:`testbed.policy.migration.check_stream`), and the gateway's own checker must agree.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from testbed.live.stack import LiveStack, ReplicaPlan, StackThread
from testbed.policy.migration import check_stream
from testbed.spec import MigrationSpec, ServingSpec

pytestmark = pytest.mark.live

SPEC = ServingSpec.model_validate(
    {
        "batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": "5ms"},
        "routing": {"policy": "least_outstanding"},
        "timeouts": {"request": "60s", "connect": "500ms"},
        "retries": {"max_attempts": 3, "backoff": "50ms"},
        "health_check": {"period": "500ms", "timeout": "500ms"},
    }
)
PLANS = [ReplicaPlan("r0", "local/a"), ReplicaPlan("r1", "local/a"), ReplicaPlan("r2", "local/a")]
BODY = {"model": "tiny", "prompt": "the replica died while it was streaming", "max_tokens": 160, "stream": True,
        "stream_options": {"include_usage": True}, "return_token_ids": True}
CUT_AFTER = 40  # tokens the client has read when the fault strikes
SLOWDOWN = 3.0  # each model step this much longer, so the replica is mid-stream when the fault strikes


@pytest.fixture(scope="module")
def live():
    runner = StackThread(LiveStack(SPEC, PLANS, migration=MigrationSpec(limit=2)))
    with runner as stack:
        for plan in PLANS:
            runner.run(stack.chaos(plan.name, slowdown=SLOWDOWN))
        yield runner, stack


def stream(stack: LiveStack, rid: int, fault=None) -> tuple[list[int], str, list[dict]]:
    """The client's token ids, text and events; ``fault(replica name)`` runs once it has read
    ``CUT_AFTER`` tokens, against the replica serving it then."""
    ids: list[int] = []
    text, events = "", []
    with httpx.Client(timeout=90) as client:
        with client.stream("POST", stack.gateway_url + "/v1/completions", json=BODY, headers={"x-request-id": str(rid)}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: "):])
                events.append(event)
                assert "error" not in event, event
                for choice in event["choices"]:
                    ids += choice["token_ids"]
                    text += choice["text"]
                if fault is not None and len(ids) >= CUT_AFTER:
                    fault(serving(stack, rid))
                    fault = None
    return ids, text, events


def serving(stack: LiveStack, rid: int) -> str:
    """The replica the gateway has request ``rid`` on now (read on the stack's loop)."""

    async def read() -> str:
        [replica] = stack.gateway.policy.requests[rid].live.values()
        return stack.plans[replica].name

    return asyncio.run_coroutine_threadsafe(read(), stack._loop).result(10)


@pytest.fixture(scope="module")
def reference(live):
    _, stack = live
    ids, text, events = stream(stack, 100)
    assert len(ids) == BODY["max_tokens"] and events[-1]["usage"]["completion_tokens"] == len(ids)
    assert stack.gateway.migration_stats()["migrations"] == 0
    return ids, text, events[-1]["usage"]


def check_migrated(stack: LiveStack, rid: int, got: tuple, reference: tuple, victim: str) -> None:
    ids, text, events = got
    ref_ids, ref_text, ref_usage = reference
    verdict = check_stream(ids, ref_ids)
    assert verdict.ok, f"{verdict.lost} tokens lost, {verdict.duplicated} duplicated"
    assert ids == ref_ids and text == ref_text
    assert events[-1]["usage"] == ref_usage  # the request's usage, not the resumed attempt's
    assert len({e["id"] for e in events}) == 1  # one stream, as far as the client can tell
    row = stack.records().set_index("request_id").loc[rid]
    assert row["status"] == "ok" and row["output_tokens"] == len(ref_ids) and row["prompt_tokens"] == ref_usage["prompt_tokens"]
    assert stack.plans[int(row["replica"])].name != victim and row["retries"] == 0


def test_a_replica_killed_mid_stream_leaves_the_client_exactly_the_tokens_of_an_unbroken_run(live, reference):
    runner, stack = live
    victims = []

    def kill(name: str) -> None:
        victims.append(name)
        runner.run(stack.kill(name))

    got = stream(stack, 101, kill)
    check_migrated(stack, 101, got, reference, victims[0])
    stats = stack.gateway.migration_stats()
    assert stats["migrations"] == 1 and stats["migrated_requests"] == 1 and stats["migration_check_ok"]


def test_a_replica_drained_past_its_timeout_hands_its_stream_over(live, reference):
    """Scale-down's path: out of rotation, then SIGTERM; the replica's graceful shutdown gives up
    on the stream after 2 s (slowed further, what it has left would take far longer) and the
    gateway resumes it elsewhere."""
    runner, stack = live
    victims = []

    def drain(name: str) -> None:
        victims.append(name)

        async def out_of_rotation() -> None:
            stack.gateway.policy.set_in_service([p.name for p in stack.plans].index(name), False, stack.now())

        runner.run(out_of_rotation())
        runner.run(stack.chaos(name, slowdown=40.0))
        started = time.monotonic()
        runner.run(asyncio.to_thread(stack.supervisor.stop, name, 10))
        assert time.monotonic() - started < 10  # it went on its own, within its graceful shutdown

    got = stream(stack, 102, drain)
    check_migrated(stack, 102, got, reference, victims[0])
    stats = stack.gateway.migration_stats()
    assert stats["migrations"] == 2 and stats["migrated_requests"] == 2 and stats["migration_check_ok"]
    assert stats["migration_tokens_lost"] == stats["migration_tokens_duplicated"] == 0
