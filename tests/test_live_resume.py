"""The live gateway's stream resumption (testbed/live/resume.py) on hand-built chunks.

The chunks are what the built-in replica and vLLM send with ``return_token_ids``; the live test
with real replica processes is tests/test_live_migration.py.
"""

from __future__ import annotations

import json

from testbed.live.resume import LiveMigration
from testbed.spec import MigrationSpec

PROMPT = [1, 50, 51, 52]


def request(**fields) -> bytes:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body | fields).encode()


def chunk(text: str, ids: list[int], prompt: list[int] | None = None, id: str = "cmpl-r0-1", finish: str | None = None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "token_ids": ids}
    if prompt is not None:
        choice["prompt_token_ids"] = prompt
    return {"id": id, "object": "text_completion", "model": "tiny", "choices": [choice]}


def usage(prompt: int, completion: int, id: str = "cmpl-r0-1") -> dict:
    return {"id": id, "object": "text_completion", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


def events(lines) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line, _ in lines]


def deliver(stream, attempt, data: dict) -> list:
    """Relay a chunk and forward what comes out, as the gateway does for the winning attempt."""
    out = stream.relay(attempt, data)
    for _, ids in out:
        stream.forwarded(attempt, ids)
    return out


def test_only_streamed_completions_without_stop_sequences_are_tracked():
    migration = LiveMigration(MigrationSpec())
    assert migration.track(0, "/v1/completions", request(), False) is not None
    assert migration.track(1, "/v1/completions", request(stream=False), False) is None
    assert migration.track(2, "/v1/completions", request(stop=["\n"]), False) is None
    assert migration.track(3, "/v1/chat/completions", request(), False) is None
    assert LiveMigration(MigrationSpec(limit=0)).track(4, "/v1/completions", request(), False) is None
    assert LiveMigration(MigrationSpec(enabled=False)).track(5, "/v1/completions", request(), False) is None


def test_a_chunk_without_text_waits_for_the_next_so_the_client_ends_on_a_character():
    stream = LiveMigration(MigrationSpec()).track(0, "/v1/completions", request(), True)
    first = stream.start()
    assert json.loads(stream.body())["return_token_ids"] is True  # asked of the replica on the client's behalf
    out = deliver(stream, first, chunk("ab", [7], prompt=PROMPT))
    assert [e["choices"][0]["text"] for e in events(out)] == ["ab"]
    assert "token_ids" not in events(out)[0]["choices"][0] and "prompt_token_ids" not in events(out)[0]["choices"][0]
    assert deliver(stream, first, chunk("", [8])) == []  # half a character: held
    assert stream.delivered == [7]
    out = deliver(stream, first, chunk("é", [9]))
    assert [ids for _, ids in out] == [(8,), (9,)] and stream.delivered == [7, 8, 9]
    assert stream.prompt_ids == PROMPT


def test_a_broken_stream_resumes_from_the_prompt_and_the_delivered_tokens_and_splices_in():
    migration = LiveMigration(MigrationSpec(limit=2))
    stream = migration.track(0, "/v1/completions", request(), True)
    first = stream.start()
    deliver(stream, first, chunk("a", [7], prompt=PROMPT))
    deliver(stream, first, chunk("b", [8]))
    deliver(stream, first, chunk("", [9]))  # held when the replica died: never reached the client
    resume = stream.migrate(first)
    assert (resume.offset, resume.output_tokens, resume.reprefill_tokens) == (2, 4, 2)
    body = json.loads(stream.body())
    assert body["prompt"] == PROMPT + [7, 8] and body["max_tokens"] == 4 and body["return_token_ids"]

    second = stream.start()
    assert second.offset == 2
    out = deliver(stream, second, chunk("c", [9], prompt=PROMPT + [7, 8], id="cmpl-r1-9"))
    [event] = events(out)
    assert event["id"] == "cmpl-r0-1" and "prompt_token_ids" not in event["choices"][0]  # one stream to the client
    for token in (10, 11, 12):
        deliver(stream, second, chunk("x", [token], id="cmpl-r1-9"))
    deliver(stream, second, chunk("", [], id="cmpl-r1-9", finish="length"))
    assert deliver(stream, second, usage(6, 4, id="cmpl-r1-9")) == []  # the usage chunk the client did not ask for
    stream.ended_ok(second)
    assert stream.delivered == [7, 8, 9, 10, 11, 12]
    assert migration.stats() == {"migrations": 1, "migrated_requests": 1, "migration_check_ok": True,
                                 "migration_tokens_lost": 0, "migration_tokens_duplicated": 0}


def test_usage_of_a_resumed_stream_is_the_requests_own():
    stream = LiveMigration(MigrationSpec()).track(0, "/v1/completions", request(), False)
    first = stream.start()
    deliver(stream, first, chunk("a", [7], prompt=PROMPT))
    stream.migrate(first)
    second = stream.start()
    deliver(stream, second, chunk("b", [8], prompt=PROMPT + [7]))
    [event] = events(deliver(stream, second, usage(5, 5)))
    assert event["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


def test_the_checker_catches_a_resumption_from_the_wrong_tokens_and_a_dropped_chunk():
    migration = LiveMigration(MigrationSpec())
    wrong = migration.track(0, "/v1/completions", request(), True)
    first = wrong.start()
    deliver(wrong, first, chunk("a", [7], prompt=PROMPT))
    deliver(wrong, first, chunk("b", [8]))
    wrong.migrate(first)
    second = wrong.start()
    deliver(wrong, second, chunk("c", [9], prompt=PROMPT + [7]))  # the replica continued after 7 only: 8 lost
    deliver(wrong, second, usage(5, 1))
    wrong.ended_ok(second)

    dropped = migration.track(1, "/v1/completions", request(), True)
    first = dropped.start()
    deliver(dropped, first, chunk("a", [7], prompt=PROMPT))
    dropped.migrate(first)
    second = dropped.start()
    deliver(dropped, second, chunk("b", [8], prompt=PROMPT + [7]))
    dropped.relay(second, chunk("c", [9]))  # relayed but never forwarded to the client
    deliver(dropped, second, usage(5, 2))
    dropped.ended_ok(second)

    stats = migration.stats()
    assert not stats["migration_check_ok"] and stats["migration_tokens_lost"] == 2
    assert migration.checker.check(migration.expected).bad == (0, 1)


def test_the_limit_ends_migrations_and_a_replica_without_token_ids_cannot_be_resumed():
    migration = LiveMigration(MigrationSpec(limit=1))
    stream = migration.track(0, "/v1/completions", request(), True)
    first = stream.start()
    deliver(stream, first, chunk("a", [7], prompt=PROMPT))
    assert stream.migrate(first) is not None
    second = stream.start()
    deliver(stream, second, chunk("b", [8], prompt=PROMPT + [7]))
    assert stream.migrate(second) is None  # one migration per request at most

    blind = migration.track(1, "/v1/completions", request(), True)
    attempt = blind.start()
    plain = chunk("a", [])
    del plain["choices"][0]["token_ids"]
    deliver(blind, attempt, plain)
    assert blind.migrate(attempt) is None and blind.prompt_ids is None


def test_a_stream_that_broke_after_its_last_token_is_finished_by_the_gateway():
    stream = LiveMigration(MigrationSpec()).track(0, "/v1/completions", request(max_tokens=2), False)
    first = stream.start()
    deliver(stream, first, chunk("a", [7], prompt=PROMPT))
    assert stream.complete() is None  # a token is still missing: that is a migration
    deliver(stream, first, chunk("b", [8]))
    ending = stream.complete()
    assert ending[-1] == "data: [DONE]\n\n"
    finish, totals = (json.loads(e[len("data: "):]) for e in ending[:2])
    assert finish["choices"][0]["finish_reason"] == "length" and finish["id"] == "cmpl-r0-1"
    assert totals["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
