"""The live twins of the simulator's policy tests, on real replica processes behind the gateway.

One stack serves the module: two tiny-model replicas, ``least_outstanding`` routing and adaptive
micro-batching, with health checks too slow to matter within the module, so what the tests see
is the gateway's passive decisions. The SIGKILL test runs last: it kills a replica.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from testbed.live.stack import LiveStack, ReplicaPlan, StackThread
from testbed.sla import evaluate
from testbed.spec import Objective, ServingSpec

pytestmark = pytest.mark.live

SPEC = ServingSpec.model_validate(
    {
        "batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": "5ms", "adaptive": True, "target_latency": "500ms"},
        "routing": {"policy": "least_outstanding"},
        "timeouts": {"request": "20s", "connect": "500ms"},
        "retries": {"max_attempts": 3, "backoff": "20ms", "budget_min_per_s": 100},
        "health_check": {"period": "120s"},
        "circuit_breaker": {"consecutive_failures": 3},
        "outlier_ejection": {"consecutive_errors": 3},
    }
)
LONG = {"model": "tiny", "prompt": "word " * 50_000}


@pytest.fixture(scope="module")
def runner():
    thread = StackThread(LiveStack(SPEC, [ReplicaPlan("r0", "local/a"), ReplicaPlan("r1", "local/a")]))
    with thread:
        yield thread


@pytest.fixture(scope="module")
def stack(runner) -> LiveStack:
    return runner.stack


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client


def test_the_scenarios_adaptive_batching_runs_on_each_replica(stack, http):
    """The batching spec reaches the replica process whole: adaptive and its target included."""
    for url in stack.replica_urls.values():
        assert httpx.get(url + "/health", timeout=10).json()["batching"] == SPEC.batching.model_dump(mode="json")
    for _ in range(4):
        assert http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}).status_code == 200
    delays = [httpx.get(url + "/health", timeout=10).json()["batching_delay"] for url in stack.replica_urls.values()]
    assert max(delays) > SPEC.batching.max_queue_delay  # the controller moved it: well under target


def test_five_over_long_prompts_are_client_errors_that_leave_the_replicas_in_service(stack, http):
    first = len(stack.records())
    for _ in range(5):
        answer = http.post("/v1/completions", json=LONG)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "context_length_exceeded"
    rows = stack.records().iloc[first:]
    assert list(rows["status"]) == ["client_error"] * 5 and (rows["retries"] == 0).all()
    [availability] = evaluate([Objective(metric="availability", min=0.99)], rows, (0, float("inf")))
    assert availability.observed != availability.observed  # NaN: nothing the stack could have served
    assert http.get("/health").json()["available"] == 2
    metrics = http.get("/metrics").text
    assert re.search(r'testbed:gateway_requests_total\{status="client_error"\} [5-9]', metrics)
    assert not re.search(r'testbed:gateway_requests_total\{status="failed"\}', metrics)


def test_errors_from_the_gateway_are_openai_shaped_and_count_as_client_errors(stack, http):
    for method, path, status in (("GET", "/no/such/path", 404), ("GET", "/v1/completions", 405)):
        answer = http.request(method, path)
        assert answer.status_code == status and set(answer.json()["error"]) == {"message", "type", "param", "code"}
    huge_id = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi"}, headers={"x-request-id": str(2**63)})
    assert huge_id.status_code == 400 and "x-request-id" in huge_id.json()["error"]["message"]
    for message in ({"role": "user"}, {"role": "user", "content": None}):
        for base in (stack.gateway_url, *stack.replica_urls.values()):
            answer = httpx.post(base + "/v1/chat/completions", json={"model": "tiny", "messages": [message]}, timeout=30)
            assert answer.status_code == 400 and "messages[0].content" in answer.json()["error"]["message"]
    first = len(stack.records())
    unknown = http.post("/v1/completions", json={"model": "gpt-7", "prompt": "hi"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert list(stack.records().iloc[first:]["status"]) == ["client_error"]
    assert not re.search(r'testbed:gateway_requests_total\{status="failed"\}', http.get("/metrics").text)


def test_a_replica_reached_directly_checks_timeouts_as_the_gateway_does(stack, http):
    replica = next(iter(stack.replica_urls.values()))
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    past = {"x-request-deadline": f"{time.time() - 5:.3f}"}
    for base in (stack.gateway_url, replica):
        bad = httpx.post(base + "/v1/completions", json={**body, "timeout": "soon"}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "timeout", base
        late = httpx.post(base + "/v1/completions", json=body, headers=past, timeout=30)
        assert late.status_code == 504, base


def test_after_a_sigkill_the_next_request_is_served_by_the_live_replica(runner, stack, http):
    """The retry black hole, live: a real SIGKILL of a real replica process, and the very next
    request (least_outstanding likes the idle dead replica best) still gets its answer."""
    runner.run(stack.kill("r0"))
    first = len(stack.records())
    answer = http.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 3})
    assert answer.status_code == 200, answer.text
    later = http.post("/v1/completions", json={"model": "tiny", "prompt": "again", "max_tokens": 3})
    assert later.status_code == 200
    rows = stack.records().iloc[first:]
    assert list(rows["replica"]) == [1, 1] and list(rows["retries"]) == [1, 0]  # then r0 is known gone
