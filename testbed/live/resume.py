"""Live request migration: a stream cut mid-generation resumes on another replica, token for token.

The live gateway's half of :mod:`testbed.policy.migration` (the simulator's is
:mod:`testbed.sim.elastic`): the same :class:`~testbed.policy.migration.MigrationPolicy` decides
whether a broken stream migrates and what its next attempt asks for, and the same
:class:`~testbed.policy.migration.StreamChecker` verifies afterwards that no token was lost or
repeated. What is live-only is how the tokens are known and spliced:

* A migratable request — a streamed ``/v1/completions`` call without stop sequences — goes to
  its replica with ``return_token_ids: true`` (vLLM's extension since 0.10.2; the built-in
  replica speaks it too): the first chunk reports the prompt's token ids (``prompt_token_ids``),
  every chunk the ids of the tokens behind its text (``token_ids``).
* A chunk that carries ids but no text (half of a multi-byte character) is held until a chunk
  with text follows, so the client's text always ends on a character boundary and the ids it
  has are exactly those behind its text; a break discards the held chunk, and the next replica
  generates those tokens again.
* When the stream breaks after ``d`` tokens reached the client, the next attempt is sent the
  prompt's ids followed by those ``d`` ids as its prompt, and ``max_tokens`` minus ``d``. With
  greedy decoding its tokens are the ones the unbroken stream would have sent next. Its chunks
  join the client's stream as if nothing happened: the first attempt's chunk ``id``, usage
  rewritten to the request's (its own prompt, all the tokens), the ids fields dropped unless
  the client asked for them (and ``prompt_token_ids`` always: the client had them).
* A stream that broke after its last token (only the finish chunk was missing) is finished by
  the gateway: every token reached the client.

Stop sequences are not migrated: a replica holds back text that may begin a stop sequence, even
inside a chunk that has text, so what the client has need not end where its ids do. Chat
streams are not migrated either (their resumption would have to go through ``/v1/completions``
and be rewritten into chat chunks); both fail as a broken stream always did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from testbed.policy.migration import MigrationPolicy, Resume, StreamChecker
from testbed.spec import MigrationSpec

MIGRATABLE_PATH = "/v1/completions"
Line = tuple[str, tuple[int, ...]]  # an SSE event for the client, and the token ids behind it


def _event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


@dataclass(slots=True, eq=False)
class AttemptTokens:
    """One attempt's part of a migratable stream."""

    offset: int  # position (in the request's output) of the first token this attempt delivers
    held: list[Line] = field(default_factory=list)  # chunks with ids but no text yet
    count: int = 0  # tokens it delivered to the client
    reported_completion: int | None = None  # completion tokens its replica's usage reported


class LiveMigration:
    """The gateway's migration state: the limit (per request), the checker, what each migrated
    request should have received (for :meth:`stats`)."""

    def __init__(self, spec: MigrationSpec) -> None:
        self.policy = MigrationPolicy.from_spec(spec)
        self.checker = StreamChecker()
        self.expected: dict[int, int] = {}  # migrated request that ended ok -> tokens it should have

    def track(self, rid: int, path: str, body: bytes, strip_usage: bool) -> ResumableStream | None:
        """The stream of request ``rid`` if it can migrate (see the module docstring), else None."""
        if self.policy.limit <= 0 or path != MIGRATABLE_PATH:
            return None
        request = json.loads(body)
        if not request.get("stream") or request.get("stop"):
            return None
        return ResumableStream(self, rid, request, strip_usage)

    def stats(self) -> dict[str, int | bool]:
        """The simulator's migration stats (``Result.stats``), for the live run."""
        verdict = self.checker.check(self.expected)
        return {
            "migrations": self.policy.total,
            "migrated_requests": self.policy.migrated,
            "migration_check_ok": verdict.ok,
            "migration_tokens_lost": verdict.lost,
            "migration_tokens_duplicated": verdict.duplicated,
        }


class ResumableStream:
    """One migratable request: the token ids the client has, and how to ask for the rest."""

    def __init__(self, owner: LiveMigration, rid: int, request: dict[str, Any], strip_usage: bool) -> None:
        self.owner, self.rid, self.request, self.strip_usage = owner, rid, request, strip_usage
        self.client_ids = bool(request.get("return_token_ids"))
        self.max_tokens = int(request.get("max_tokens", 16))
        prompt = request.get("prompt")
        self.prompt_ids: list[int] | None = list(prompt) if isinstance(prompt, list) and all(type(t) is int for t in prompt) else None
        self.delivered: list[int] = []  # token ids that reached the client, in order
        self.resume: Resume | None = None  # set once the request has migrated
        self.chunk_id: str | None = None  # the id every chunk the client gets carries

    def start(self) -> AttemptTokens:
        """A new attempt: it delivers from wherever the client's stream stands."""
        return AttemptTokens(len(self.delivered))

    def body(self) -> bytes:
        """What the next attempt sends: the client's request, or its resumption after a migration."""
        body = {**self.request, "return_token_ids": True}
        if self.resume is not None:
            assert self.prompt_ids is not None
            body["prompt"] = self.prompt_ids + self.delivered
            body["max_tokens"] = self.resume.output_tokens
        return json.dumps(body).encode()

    def relay(self, attempt: AttemptTokens, data: dict[str, Any]) -> list[Line]:
        """One chunk of ``attempt``'s stream in, what may go to the client now out (see the module docstring)."""
        choices = [c for c in data.get("choices") or () if isinstance(c, dict)]
        choice = choices[0] if choices else {}
        ids = tuple(t for t in choice.get("token_ids") or () if type(t) is int)
        reported = choice.get("prompt_token_ids")
        if isinstance(reported, list):
            self._reported(attempt, reported)
        if not self.client_ids:
            choice.pop("token_ids", None)
        if not self.client_ids or attempt.offset:
            choice.pop("prompt_token_ids", None)
        self.chunk_id = self.chunk_id or data.get("id")
        if self.chunk_id is not None:
            data["id"] = self.chunk_id
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage(attempt, usage)
            if not choices and self.strip_usage:
                return self.release(attempt)  # the usage chunk the gateway asked for, not the client
        line = (_event(data), ids)
        if ids and not choice.get("text"):
            attempt.held.append(line)
            return []
        return self.release(attempt) + [line]

    @staticmethod
    def release(attempt: AttemptTokens) -> list[Line]:
        held, attempt.held = attempt.held, []
        return held

    def forwarded(self, attempt: AttemptTokens, ids: tuple[int, ...]) -> None:
        """``attempt``'s tokens ``ids`` went to the client."""
        self.delivered.extend(ids)
        attempt.count += len(ids)

    def _reported(self, attempt: AttemptTokens, prompt: list[int]) -> None:
        if attempt.offset == 0:
            if self.prompt_ids is None:
                self.prompt_ids = [int(t) for t in prompt]
        else:
            self.owner.checker.resumed(self.rid, attempt.offset, prompt)

    def _usage(self, attempt: AttemptTokens, usage: dict[str, Any]) -> None:
        """Usage as the client's request sees it: its own prompt, every token of its answer."""
        completion = usage.get("completion_tokens")
        attempt.reported_completion = completion if isinstance(completion, int) else None
        if not attempt.offset or self.prompt_ids is None:
            return
        prompt = len(self.prompt_ids)
        total = attempt.offset + (attempt.reported_completion or 0)
        usage.update(prompt_tokens=prompt, completion_tokens=total, total_tokens=prompt + total)
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            details["cached_tokens"] = min(details["cached_tokens"], prompt)

    # ------------------------------------------------------------------ the stream broke

    def migrate(self, attempt: AttemptTokens) -> Resume | None:
        """``attempt``'s stream broke: the resumption the policy allows, or None (it fails)."""
        if self.prompt_ids is None:
            return None  # the replica reported no token ids: nothing to resume from
        resume = self.owner.policy.resume(self.rid, len(self.prompt_ids), self.max_tokens, len(self.delivered))
        if resume is None:
            return None
        checker = self.owner.checker
        checker.began(self.rid, self.prompt_ids)
        checker.delivered(self.rid, attempt.offset, attempt.count, self.delivered[attempt.offset:])
        self.resume = resume
        return resume

    def complete(self) -> list[str] | None:
        """The events that end the client's stream when every token already reached it (the break
        came before only the finish chunk), else None."""
        if len(self.delivered) < self.max_tokens or self.prompt_ids is None:
            return None
        chunk = {"id": self.chunk_id, "object": "text_completion", "model": self.request.get("model"),
                 "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]}
        events = [_event(chunk)]
        if not self.strip_usage:
            events.append(_event({"id": self.chunk_id, "object": "text_completion", "model": self.request.get("model"),
                                  "choices": [], "usage": self.usage()}))
        return events + [_event("[DONE]")]

    def usage(self) -> dict[str, int]:
        prompt = len(self.prompt_ids or ())
        return {"prompt_tokens": prompt, "completion_tokens": len(self.delivered), "total_tokens": prompt + len(self.delivered)}

    def ended_ok(self, attempt: AttemptTokens) -> None:
        """The request ended ok with ``attempt`` answering: a migrated one is checked at the end."""
        if self.resume is None:
            return
        ids = self.delivered[attempt.offset:]
        self.owner.checker.delivered(self.rid, attempt.offset, attempt.count, ids)
        reported = attempt.reported_completion
        self.owner.expected[self.rid] = attempt.offset + (attempt.count if reported is None else reported)
