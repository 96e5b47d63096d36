"""Cache-aware serving live: the gateway routes by the prompts' block chains, holds requests in its
queue, and a prefix-heavy scenario replayed live finds its prefixes cached (real processes).

One stack (two tiny-model replicas with prefix caching, the cache-aware scorer, a gateway queue
of one slot per replica and room for one waiting request) serves the gateway tests. A router's
only evidence of a prefix is the chain the gateway computed from the prompt, so a request that
goes where its prefix went before, against the load-and-index tie-break a cache-blind router
would apply, shows the chain reached the router; the replica's own ``cached_tokens`` shows its
cache agreed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from testbed.live.stack import LiveStack, ReplicaPlan, StackThread
from testbed.spec import Scenario, ServingSpec

pytestmark = pytest.mark.live
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent

SPEC = ServingSpec.model_validate({
    "batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": 0.0, "prefix_caching": True},
    "routing": {"policy": "cache_aware"},
    "queue": {"enabled": True, "slots_per_replica": 1, "max_length": 1},
    "health_check": {"period": "1s", "timeout": "1s"},
})


@pytest.fixture(scope="module")
def stack():
    plans = [ReplicaPlan("r0", "local/a"), ReplicaPlan("r1", "local/a")]
    with StackThread(LiveStack(SPEC, plans)) as live:
        yield live


def post(stack, path: str, body: dict, request_id: int) -> httpx.Response:
    return httpx.post(stack.gateway_url + path, json={"model": "tiny", **body}, headers={"x-request-id": str(request_id)},
                      timeout=30)


def in_background(stack, path: str, body: dict, request_id: int) -> threading.Thread:
    thread = threading.Thread(target=post, args=(stack, path, body, request_id))
    thread.start()
    return thread


def wait_outstanding(stack, count: int) -> None:
    deadline = time.monotonic() + 10
    while sum(r.outstanding for r in stack.gateway.policy.replicas) < count:
        assert time.monotonic() < deadline, "the request never reached a replica"
        time.sleep(0.005)


def test_requests_go_where_their_prefix_is_cached_by_token_ids_and_by_chat_text(stack):
    rng = random.Random(5)
    system = {name: [rng.randrange(16, 2048) for _ in range(128)] for name in "AB"}

    def prompt(name: str) -> dict:
        return {"prompt": system[name] + [rng.randrange(16, 2048) for _ in range(24)], "max_tokens": 4}

    long = {"max_tokens": 64}
    # A first, alone: both replicas idle, the tie goes to r0. B while A runs: nothing believed
    # cached anywhere, so the load sends it to r1.
    first = in_background(stack, "/v1/completions", {**prompt("A"), **long}, 100)
    wait_outstanding(stack, 1)
    post(stack, "/v1/completions", prompt("B"), 101)
    first.join()
    # One at a time, idle fleet: a cache-blind tie-break would pick r0 for all of them.
    for rid, name in zip(range(102, 106), "ABAB"):
        assert post(stack, "/v1/completions", prompt(name), rid).status_code == 200
    # Chat with a text system prompt, tokenized by the gateway as the replica does: the first one
    # while r0 is busy goes to r1; the next, on an idle fleet, follows its prefix there.
    system_text = "You are a careful assistant who answers in exactly one short sentence. " * 3

    def chat(question: str) -> dict:
        return {"messages": [{"role": "system", "content": system_text}, {"role": "user", "content": question}],
                "max_tokens": 4}

    busy = in_background(stack, "/v1/completions", {**prompt("A"), **long}, 106)
    wait_outstanding(stack, 1)
    assert post(stack, "/v1/chat/completions", chat("What is a cache?"), 107).status_code == 200
    busy.join()
    assert post(stack, "/v1/chat/completions", chat("And a prefix?"), 108).status_code == 200

    rows = stack.records().set_index("request_id")
    replica = rows["replica"].to_dict()
    cached = rows["cached_tokens"].to_dict()
    assert (replica[100], replica[101]) == (0, 1)
    assert [replica[i] for i in range(102, 106)] == [0, 1, 0, 1]
    assert all(cached[i] >= 128 for i in range(102, 106))
    assert (replica[107], replica[108]) == (1, 1)
    assert cached[107] == 0 and cached[108] >= 32
    assert (rows["status"] == "ok").all()


def test_the_gateway_queue_binds_late_and_sheds_when_full(stack):
    body = {"prompt": [random.Random(9).randrange(16, 2048) for _ in range(32)], "max_tokens": 96}
    threads = [in_background(stack, "/v1/completions", body, 200 + i) for i in range(4)]
    for thread in threads:
        thread.join()
    rows = stack.records().set_index("request_id").loc[[200, 201, 202, 203]]
    assert sorted(rows["status"].astype(str)) == ["ok", "ok", "ok", "shed"]
    ok = rows[rows["status"] == "ok"].sort_values("first_token")
    # The one that waited started only when one of the first two had finished: one slot each.
    assert ok["first_token"].iloc[2] >= ok["finish"].iloc[:2].min() - 0.01


def test_a_prefix_heavy_scenario_replayed_live_finds_its_prefixes_cached(tmp_path):
    """faults/live-prefix-cache.yaml, halved to two replicas and shortened: the cache-aware
    scorer keeps conversations where their context is, and the records say what was cached."""
    from testbed.live.fidelity import compare
    from testbed.live.replay import run_live
    from testbed.live.sizing import scale
    from testbed.sim import simulate

    scenario = scale(Scenario.from_yaml(ROOT / "faults" / "live-prefix-cache.yaml"), 0.5)
    scenario = scenario.model_copy(update={"duration": 12.0, "drain": 10.0})
    live = run_live(scenario)
    records = live.requests
    ok = records[records["status"] == "ok"]
    assert str(records["cached_tokens"].dtype) == "int32" and len(ok) > 0.95 * len(records)
    hit_rate = ok["cached_tokens"].sum() / ok["prompt_tokens"].sum()
    assert hit_rate > 0.4, hit_rate
    assert (ok["cached_tokens"] <= ok["prompt_tokens"] - 1).all()
    # Both planes route the same prompts with the same scorer; what differs is which requests
    # meet in a batch and how loaded each replica is when a turn comes, which moves a few turns.
    rates = compare(simulate(scenario), live).metrics.set_index("metric").loc["cache hit rate"]
    assert abs(rates["sim"] - rates["live"]) < 0.15, rates
