"""The live gateway in front of real replica processes, called with the official openai client.

One stack (two tiny-model replicas, each behind its chaos proxy) serves the whole module. The
fuzz test sends hostile bodies and headers straight over HTTP and checks each gets a 4xx with
a message naming what was wrong, and that gateway and replicas still serve afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from testbed.live.stack import LiveStack, ReplicaPlan, StackThread
from testbed.live.supervisor import group_members
from testbed.spec import ServingSpec

pytestmark = pytest.mark.live

SPEC = ServingSpec.model_validate({"batching": {"policy": "micro", "max_batch_size": 4}, "health_check": {"period": "1s", "timeout": "1s"}})


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def stack(spans):
    plans = [ReplicaPlan("r0", "local/a"), ReplicaPlan("r1", "local/a")]
    with StackThread(LiveStack(SPEC, plans, span_exporter=spans)) as live:
        yield live


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="unused", max_retries=0, timeout=30)


def rows_since(stack: LiveStack, first: int):
    """The records of requests that arrived after the first ``first`` (rows are in arrival order)."""
    return stack.records().iloc[first:]


def test_the_openai_client_works_unchanged_for_completions_chat_and_streams(stack, client):
    first = len(stack.records())
    completion = client.completions.create(model="tiny", prompt="hello there", max_tokens=6)
    assert completion.choices[0].text and completion.usage.completion_tokens == 6
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 5
    chunks = list(client.completions.create(model="tiny", prompt="stream me", max_tokens=7, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) and all(c.usage is None for c in chunks)
    chat_chunks = list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chat_chunks[-1].usage.completion_tokens == 4  # asked for: kept
    assert [m.id for m in client.models.list()] == ["tiny"]

    rows = rows_since(stack, first)
    assert list(rows["status"]) == ["ok"] * 4
    assert (rows["first_token"] <= rows["finish"]).all() and (rows["arrival"] <= rows["first_token"]).all()
    assert list(rows["output_tokens"]) == [6, 5, 7, 4]  # streams too: the gateway asked for usage
    assert (rows["prompt_tokens"] > 0).all() and set(rows["region"]) == {"local/a"}


HOSTILE = [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2, 3]", "JSON object"),
    (b'"a string"', "JSON object"),
    (b"[" * 50_000 + b"]" * 50_000, ""),
    (json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": -5}).encode(), "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": "ten"}).encode(), "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 1e300}).encode(), "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": 42}).encode(), "prompt"),
    (json.dumps({"model": "tiny"}).encode(), "prompt"),
    (json.dumps({"model": "tiny", "prompt": "hi", "stream": "yes"}).encode(), "stream"),
    (json.dumps({"model": "tiny", "prompt": "hi", "timeout": -1}).encode(), "timeout"),
    (json.dumps({"model": ["tiny"], "prompt": "hi"}).encode(), "model"),
    (json.dumps({"model": "tiny", "prompt": "\udcff\x00" * 10}).encode(), ""),
]


@pytest.mark.parametrize("body, mentions", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_completion_bodies_get_a_clear_4xx(stack, body, mentions):
    response = httpx.post(stack.gateway_url + "/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]["message"]
    assert mentions.lower() in message.lower() and "Traceback" not in message


def test_huge_prompts_bad_chat_bodies_and_bad_headers_are_refused_and_serving_goes_on(stack, client):
    url = stack.gateway_url
    huge = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x" * (2 << 20)}, timeout=30)
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]
    long_prompt = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "word " * 50_000}, timeout=30)
    assert long_prompt.status_code == 400 and long_prompt.json()["error"]["message"]  # the replica's verdict, passed through
    for bad in ({"model": "tiny", "messages": "hi"}, {"model": "tiny", "messages": []}, {"model": "tiny", "messages": [{"role": 7}]}):
        answer = httpx.post(url + "/v1/chat/completions", json=bad, timeout=30)
        assert answer.status_code == 400 and "messages" in answer.json()["error"]["message"]
    for header, value in (("x-priority", "high"), ("x-request-deadline", "tomorrow"), ("x-client-region", "mars/base")):
        answer = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi"}, headers={header: value}, timeout=30)
        assert answer.status_code == 400 and header in answer.json()["error"]["message"]
    # The servers keep serving, and the gateway still believes in both replicas.
    assert client.completions.create(model="tiny", prompt="still there?", max_tokens=3).choices[0].text
    for replica_url in stack.replica_urls.values():
        assert httpx.get(replica_url + "/health", timeout=10).status_code == 200
    assert httpx.get(url + "/health", timeout=10).json()["available"] == 2


def test_a_replica_400_is_passed_back_once_and_not_retried(stack):
    first = len(stack.records())
    answer = httpx.post(stack.gateway_url + "/v1/completions", json={"model": "tiny", "prompt": "word " * 50_000}, timeout=30)
    assert answer.status_code == 400
    [row] = rows_since(stack, first).itertuples()
    assert row.status == "client_error" and row.retries == 0
    metrics = httpx.get(stack.gateway_url + "/metrics", timeout=10).text
    assert re.search(r'testbed:gateway_attempts_total\{outcome="client_error",replica="r[01]"\} [1-9]', metrics)


def test_a_deadline_from_the_body_or_a_header_times_the_request_out_with_504(stack, client):
    first = len(stack.records())
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="tiny", prompt="slow", max_tokens=200, extra_body={"timeout": 0.001})
    assert caught.value.status_code == 504 and "deadline" in caught.value.message
    deadline = f"{time.time() + 0.001:.6f}"
    answer = httpx.post(stack.gateway_url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 200}, headers={"x-request-deadline": deadline}, timeout=30)
    assert answer.status_code == 504
    assert list(rows_since(stack, first)["status"]) == ["timeout", "timeout"]


def test_metrics_and_traces_describe_each_request_and_attempt(stack, client, spans):
    client.completions.create(model="tiny", prompt="trace me", max_tokens=2)
    metrics = httpx.get(stack.gateway_url + "/metrics", timeout=10).text
    for name in ("testbed:gateway_requests_total", "testbed:gateway_time_to_first_token_seconds_bucket", "testbed:gateway_replica_available"):
        assert name in metrics
    finished = spans.get_finished_spans()
    requests = [s for s in finished if s.name == "gateway.request" and s.attributes["testbed.status"] == "ok"]
    attempts = {s.parent.span_id: s for s in finished if s.name == "gateway.attempt" and s.parent is not None}
    last = requests[-1]
    assert last.context.span_id in attempts  # each request's attempt is its child span
    assert attempts[last.context.span_id].attributes["testbed.outcome"] == "ok"


def test_a_plain_answer_records_the_replicas_time_to_first_token(stack, client):
    first = len(stack.records())
    for _ in range(3):
        client.completions.create(model="tiny", prompt="first token, then many more", max_tokens=48)
    rows = rows_since(stack, first)
    ttft, e2e = rows["first_token"] - rows["arrival"], rows["finish"] - rows["arrival"]
    # Before x-ttft the first token was the whole answer; 47 decode steps now come after it.
    assert (ttft > 0).all() and (ttft < 0.8 * e2e).all(), list(zip(ttft, e2e))


def test_a_client_request_id_is_recorded_and_a_duplicate_refused(stack, client):
    url, body = stack.gateway_url + "/v1/completions", {"model": "tiny", "prompt": "mine", "max_tokens": 2}
    first = len(stack.records())
    assert httpx.post(url, json=body, headers={"x-request-id": "700001"}, timeout=30).status_code == 200
    again = httpx.post(url, json=body, headers={"x-request-id": "700001"}, timeout=30)
    assert again.status_code == 400 and "x-request-id" in again.json()["error"]["message"] and "700001" in again.json()["error"]["message"]
    for bad in ("abc", "-3"):
        answer = httpx.post(url, json=body, headers={"x-request-id": bad}, timeout=30)
        assert answer.status_code == 400 and "x-request-id" in answer.json()["error"]["message"]
    client.completions.create(**body)  # no id: the gateway picks one nobody has taken
    rows = rows_since(stack, first)
    assert rows["request_id"].iloc[0] == 700001 and len(rows) == 2 and list(rows["status"]) == ["ok", "ok"]
    assert stack.records()["request_id"].is_unique


def test_records_read_from_another_thread_are_copied_on_the_stacks_loop(stack, client, monkeypatch):
    import threading

    copied_on = []
    original = stack._copy_now

    def spy():
        copied_on.append(threading.current_thread().name)
        return original()

    monkeypatch.setattr(stack, "_copy_now", spy)
    client.completions.create(model="tiny", prompt="x", max_tokens=1)
    frame, faults = stack.records(), stack.faults()
    assert copied_on == ["live-stack", "live-stack"] and threading.current_thread().name != "live-stack"
    assert len(frame) > 0 and frame["status"].iloc[-1] == "ok" and len(faults) == 0


def test_serve_prints_endpoints_replica_deaths_and_restarts_and_ctrl_c_leaves_no_process_behind(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trace_file = tmp_path / "spans.jsonl"
    command = [sys.executable, "-m", "testbed", "serve", "--replicas", "1", "--port", "0", "--trace-file", str(trace_file), "--traces", "all"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                break
        text = "".join(lines)
        gateway = re.search(r"gateway\s+(\S+)", text).group(1)
        pid = int(re.search(r"pid=(\d+)", text).group(1))
        client = openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0, timeout=30)
        assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3).choices
        # A crash nobody asked the supervisor for: serve says so, restarts it, says when it is back.
        os.killpg(pid, signal.SIGKILL)
        said = [f"replica r0 died (signal SIGKILL, pid {pid})", "replica r0 restarting", "replica r0 ready again after"]
        for line in proc.stdout:
            lines.append(line)
            if said[-1] in line:
                break
        text = "".join(lines)
        assert all(s in text for s in said), text
        pid = int(re.search(r"ready again after \d+\.\d s \(pid (\d+)\)", text).group(1))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:  # a failed assertion: SIGTERM first, so serve still stops its replicas
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rest = proc.stdout.read()
    assert "stopped" in rest and "died" not in rest  # the teardown is not reported as deaths
    assert group_members(pid) == []  # the restarted replica's whole process group is gone
    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    assert {"gateway.request", "gateway.attempt"} <= {s["name"] for s in spans}
