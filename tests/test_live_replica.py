"""The replica server as a real process on 127.0.0.1, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("torch")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from testbed.live.replica.models import ensure_model  # noqa: E402

pytestmark = pytest.mark.live

READY = re.compile(r"^READY name=(\S+) url=(http://127\.0\.0\.1:\d+)$")


def start_replica(*args: str, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.live.replica.server", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            match = READY.match(line.strip())
            assert match, f"unexpected first line {line!r}; stderr: {proc.stderr.read() if proc.poll() else ''}"
            return proc, match.group(2)
        if proc.poll() is not None:
            raise AssertionError(f"replica exited with {proc.returncode}: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("replica did not print READY in time")


@pytest.fixture(scope="module")
def replica():
    ensure_model("tiny")  # build outside the server's start-up timeout
    proc, url = start_replica("--model", "tiny", "--name", "r7", "--threads", "1", "--max-delay", "0.005")
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stdout.read() == ""  # exactly one line on stdout


@pytest.fixture(scope="module")
def client(replica):
    return openai.OpenAI(base_url=replica + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture()
def http(replica):
    with httpx.Client(base_url=replica, timeout=30) as c:
        yield c
        c.delete("/chaos")


PROMPT = "the server request timed out and the replica"


def test_models_and_health(client, http):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["name"] == "r7"
    startup = health["startup"]  # what calibration feeds back into the profile
    assert startup["load_seconds"] > 0 and startup["warmup_seconds"] > 0


def test_completion_streaming_and_not_agree(client):
    full = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12)
    choice = full.choices[0]
    assert choice.finish_reason == "length" and choice.text
    assert full.usage.completion_tokens == 12 and full.usage.prompt_tokens > 5
    assert full.id.startswith("cmpl-r7-")
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_a_plain_answer_says_when_its_first_token_came(http):
    for path, body in (("/v1/completions", {"prompt": PROMPT}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        started = time.monotonic()
        answer = http.post(path, json={"model": "tiny", "max_tokens": 40, **body})
        elapsed = time.monotonic() - started
        assert answer.status_code == 200
        assert 0 < float(answer.headers["x-ttft"]) < elapsed
    with http.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 2, "stream": True}) as streamed:
        assert "x-ttft" not in streamed.headers  # a stream shows its first token itself
        streamed.read()


def test_chat_streaming_and_not_agree(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why did the GPU fail?"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10)
    assert full.choices[0].message.role == "assistant" and full.choices[0].message.content
    assert full.usage.completion_tokens == 10
    stream = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=10, stream=True)
    deltas = [c.choices[0].delta for c in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == full.choices[0].message.content


def sse_events(http, path: str, body: dict) -> list[dict]:
    with http.stream("POST", path, json={"model": "tiny", "stream": True, **body}) as response:
        assert response.status_code == 200
        lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_token_ids_are_reported_as_vllm_does_and_a_prompt_of_ids_continues_the_generation(http):
    """``return_token_ids``: the prompt's ids once, each chunk's generated ids; sending the prompt's
    ids plus the first k generated ones as the prompt yields exactly the rest (greedy decoding)."""
    plain = http.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "return_token_ids": True}).json()
    choice = plain["choices"][0]
    prompt_ids, generated = choice["prompt_token_ids"], choice["token_ids"]
    assert len(generated) == 24 and len(prompt_ids) == plain["usage"]["prompt_tokens"]

    events = sse_events(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": 24, "return_token_ids": True})
    choices = [e["choices"][0] for e in events if e["choices"]]
    assert choices[0]["prompt_token_ids"] == prompt_ids and all("prompt_token_ids" not in c for c in choices[1:])
    assert [t for c in choices for t in c["token_ids"]] == generated
    assert "".join(c["text"] for c in choices) == choice["text"]

    token_chunks = [c for c in choices if c["token_ids"]]  # one per token
    k = next(i for i in range(9, 24) if token_chunks[i - 1]["text"])  # a cut on a character boundary
    rest = sse_events(http, "/v1/completions", {"prompt": prompt_ids + generated[:k], "max_tokens": 24 - k, "return_token_ids": True})
    rest_choices = [e["choices"][0] for e in rest if e["choices"]]
    assert rest_choices[0]["prompt_token_ids"] == prompt_ids + generated[:k]
    assert [t for c in rest_choices for t in c["token_ids"]] == generated[k:]
    head = "".join(c["text"] for c in token_chunks[:k])
    assert head + "".join(c["text"] for c in rest_choices) == choice["text"]

    chat = sse_events(http, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                                                      "return_token_ids": True})
    assert isinstance(chat[0]["prompt_token_ids"], list)  # chat: on the response, as vLLM puts it
    assert sum(len(e["choices"][0]["token_ids"]) for e in chat if e["choices"]) == 5
    without = sse_events(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3})
    assert all("token_ids" not in e["choices"][0] for e in without if e["choices"])  # only when asked


def test_stop_sequence_cuts_the_text(client):
    text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16).choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    expected = text[: text.index(stop)]
    for stream in (False, True):
        if stream:
            got = "".join(c.choices[0].text for c in client.completions.create(
                model="tiny", prompt=PROMPT, max_tokens=16, stop=[stop], stream=True))
        else:
            got = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, stop=stop).choices[0].text
        assert got == expected


def test_errors_are_openai_style_and_name_the_problem(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens: Input should be greater than or equal to 1"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=-5)
    with pytest.raises(openai.BadRequestError, match=r"maximum context length is 512 tokens.*for the completion"):
        client.completions.create(model="tiny", prompt="word " * 600, max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="the model `gpt-4` does not exist"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}])


def metric(http, name: str) -> float:
    text = http.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_metrics_use_vllm_names_and_count_tokens(client, http):
    before = metric(http, "vllm:generation_tokens_total")
    prompt_before = metric(http, "vllm:prompt_tokens_total")
    usage = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=7).usage
    assert metric(http, "vllm:generation_tokens_total") - before == usage.completion_tokens == 7
    assert metric(http, "vllm:prompt_tokens_total") - prompt_before == usage.prompt_tokens
    text = http.get("/metrics").text
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_count",
                 "vllm:time_per_output_token_seconds_count", "vllm:e2e_request_latency_seconds_count",
                 "testbed:batch_size_count", "testbed:batching_delay_seconds_count"]:
        assert name in text
    assert metric(http, "testbed:batch_size_count") >= 1


def test_request_timeout_header_answers_504_and_serving_continues(client, http):
    http.post("/chaos", json={"slowdown": 20.0})
    r = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 400},
                  headers={"x-request-timeout": "0.3"})
    assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
    http.delete("/chaos")
    assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3).usage.completion_tokens == 3
    bad = http.post("/v1/completions", json={"prompt": "x"}, headers={"x-request-timeout": "soon"})
    assert bad.status_code == 400 and "x-request-timeout" in bad.json()["error"]["message"]


def test_a_client_that_hangs_up_frees_its_place_in_the_batch(http, replica):
    """400 tokens take many seconds at this slowdown; the place must be free well before."""
    http.post("/chaos", json={"slowdown": 5.0})
    body = {"prompt": PROMPT, "max_tokens": 400}

    def running_within(seconds: float, running: int) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if http.get("/health").json()["running"] == running:
                return True
            time.sleep(0.05)
        return False

    def freed_within(seconds: float) -> bool:
        return running_within(seconds, 0)

    with pytest.raises(httpx.ReadTimeout):  # a plain request: the client gives up waiting
        httpx.post(replica + "/v1/completions", json=body, timeout=0.5)
    assert freed_within(3.0)
    with httpx.stream("POST", replica + "/v1/completions", json={**body, "stream": True}, timeout=30) as r:
        chunks = r.iter_lines()
        for _ in range(3):  # tokens are flowing; leaving the block hangs up
            assert next(chunks).startswith("data: ") and next(chunks) == ""
        assert running_within(3.0, 1)
    assert freed_within(3.0)


def test_chaos_error_injection_uses_the_chosen_statuses(replica, http):
    assert http.post("/chaos", json={"error_rate": 1.0, "error_status": [500, 429]}).status_code == 200
    assert http.get("/chaos").json() == {"slowdown": 1.0, "error_rate": 1.0, "error_status": [500, 429],
                                         "hang": False}
    raw = openai.OpenAI(base_url=replica + "/v1", api_key="unused", max_retries=0)
    statuses = set()
    for _ in range(12):
        with pytest.raises(openai.APIStatusError) as err:
            raw.completions.create(model="tiny", prompt="hi", max_tokens=2)
        statuses.add(err.value.status_code)
        assert "injected error" in err.value.message
    assert statuses == {500, 429}
    assert http.get("/health").status_code == 200  # health stays shallow: a gray failure
    http.delete("/chaos")
    assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


def test_chaos_hang_stalls_requests_and_health_until_cleared(http, replica):
    http.post("/chaos", json={"hang": True})
    with pytest.raises(httpx.ReadTimeout):
        http.get("/health", timeout=0.5)
    answers: list[int] = []
    waiter = threading.Thread(target=lambda: answers.append(
        httpx.post(replica + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30).status_code))
    waiter.start()
    time.sleep(0.5)
    assert answers == [] and http.get("/chaos").json()["hang"] is True
    http.delete("/chaos")
    waiter.join(timeout=20)
    assert answers == [200]
    assert http.get("/health").status_code == 200


def test_chaos_bodies_are_validated(http):
    r = http.post("/chaos", json={"slowdown": 0.5})
    assert r.status_code == 400 and "slowdown" in r.json()["error"]["message"]
    r = http.post("/chaos", json={"hang": True, "hnag": True})
    assert r.status_code == 400 and "hnag" in r.json()["error"]["message"]
    assert http.get("/chaos").json()["hang"] is False  # a rejected patch changes nothing


HOSTILE = [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2, 3]", 400, "JSON object"),
    (b"[" * 5000 + b"]" * 5000, 400, ""),
    (json.dumps({"prompt": "hi", "max_tokens": -1}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "hi", "max_tokens": 1.5}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "hi", "max_tokens": "10"}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": {"text": "hi"}}).encode(), 400, "prompt"),
    (json.dumps({"prompt": []}).encode(), 400, "prompt"),
    (json.dumps({"prompt": [1, 99999]}).encode(), 400, "outside the vocabulary"),
    (json.dumps({"prompt": [5] * 600}).encode(), 400, "maximum context length"),
    (json.dumps({"prompt": "hi", "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"prompt": "hi", "n": 3}).encode(), 400, "n:"),
    (json.dumps({"prompt": "hi", "stop": ["a"] * 9}).encode(), 400, "stop"),
    (json.dumps({"prompt": "hi", "temperature": 9}).encode(), 400, "temperature"),
    (json.dumps({"prompt": "x" * 200_000}).encode(), 400, "characters"),
    (json.dumps({"prompt": "x" * 5_000_000}).encode(), 413, "limit"),
    (json.dumps({"prompt": "\ud800 hi"}).encode(), 400, "not valid JSON"),  # a lone surrogate
    (json.dumps({"prompt": "\u0000 \U0001f525 \u202e hi"}).encode(), 200, ""),
]


@pytest.mark.parametrize("body,status,needle", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_completion_bodies_get_clear_answers(http, body, status, needle):
    r = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:300]
    if status >= 400:
        error = r.json()["error"]
        assert needle in error["message"] and error["type"]
    assert http.get("/health").status_code == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       fields=st.dictionaries(st.sampled_from(["prompt", "messages", "max_tokens", "stream", "stop", "model",
                                                "temperature", "n", "max_completion_tokens", "stream_options"]),
                              json_values, max_size=5))
def test_fuzzed_bodies_never_break_the_server(http, path, fields):
    r = http.post(path, json=fields)
    assert r.status_code < 500, r.text[:300]
    if r.status_code >= 400:
        assert r.json()["error"]["message"]


def test_server_still_serves_after_the_abuse(client):
    assert client.completions.create(model="tiny", prompt="hello", max_tokens=2).usage.completion_tokens == 2


def test_cli_bad_model_is_one_clear_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "testbed.live.replica.server", "--model", "/no/such/dir"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "model '/no/such/dir'" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
