"""The prefix cache and the weights switch seen from outside: a real replica process over HTTP.

A repeated prefix is reported as ``prompt_tokens_details.cached_tokens`` (OpenAI's and vLLM's
field) with the same text, the ``vllm:prefix_cache_*`` counters agree with the usage, a
restarted replica process starts cold, and ``POST /weights`` switches float32 <-> int8 live.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

pytest.importorskip("torch")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from testbed.live.replica.models import ensure_model  # noqa: E402
from test_live_replica import start_replica  # noqa: E402  (pytest puts tests/ on the path)

pytestmark = pytest.mark.live

PREFIX = "you are a careful assistant for the server team: answer the question about the replica " * 3


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def replica():
    ensure_model("tiny")
    proc, url = start_replica("--model", "tiny", "--name", "c0", "--threads", "1", "--max-delay", "0")
    yield proc, url
    if proc.poll() is None:
        stop(proc)


def complete(url: str, prompt: str, tokens: int = 8):
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as client:
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=tokens, temperature=0)


def cached(answer) -> int:
    return answer.usage.prompt_tokens_details.cached_tokens


def counter(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf'^{re.escape(name)}{{model_name="tiny"}} (\S+)$', text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_a_repeated_prefix_reports_cached_tokens_and_the_counters_agree(replica):
    _, url = replica
    queries, hits = counter(url, "vllm:prefix_cache_queries_total"), counter(url, "vllm:prefix_cache_hits_total")
    first = complete(url, PREFIX + "what failed?")
    second = complete(url, PREFIX + "what failed?")
    other = complete(url, PREFIX + "which region?")
    assert cached(first) == 0
    assert cached(second) > 0 and cached(second) % 16 == 0 and cached(second) < second.usage.prompt_tokens
    assert cached(other) > 0  # the shared system prefix, not the question
    assert second.choices[0].text == first.choices[0].text
    asked = sum(a.usage.prompt_tokens for a in (first, second, other))
    assert counter(url, "vllm:prefix_cache_queries_total") - queries == asked
    assert counter(url, "vllm:prefix_cache_hits_total") - hits == cached(second) + cached(other)


def test_the_weights_switch_goes_to_int8_and_back_exactly(replica):
    _, url = replica
    prompt = "hello world, the batch queue"
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/weights").json() == {"weights": "float32"}
        reference = complete(url, prompt, 12).choices[0].text
        switched = http.post("/weights", json={"weights": "int8"})
        assert switched.status_code == 200 and switched.json()["weights"] == "int8"
        assert switched.json()["switch_seconds"] >= 0
        assert counter(url, "testbed:weights_int8") == 1.0
        quantized = complete(url, prompt, 12)
        assert quantized.usage.completion_tokens == 12 and isinstance(quantized.choices[0].text, str)
        bad = http.post("/weights", json={"weights": "int4"})
        assert bad.status_code == 400 and "weights" in bad.json()["error"]["message"]
        assert http.post("/weights", json={"weights": "float32"}).json()["weights"] == "float32"
        assert counter(url, "testbed:weights_int8") == 0.0
    assert complete(url, prompt, 12).choices[0].text == reference


def test_a_restarted_replica_process_starts_cold(replica):
    proc, url = replica
    prompt = PREFIX + "restart?"
    complete(url, prompt)
    assert cached(complete(url, prompt)) > 0
    stop(proc)
    again, url = start_replica("--model", "tiny", "--name", "c0", "--threads", "1", "--max-delay", "0")
    try:
        assert cached(complete(url, prompt)) == 0
        assert cached(complete(url, prompt)) > 0
    finally:
        stop(again)


def test_a_bad_cache_setting_is_one_clear_line_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "testbed.live.replica.server", "--model", "tiny", "--block-size", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "replica server: block_size: expected a number of tokens >= 1, got 0"
