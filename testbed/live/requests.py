"""What the gateway reads from a client request before spending a replica on it.

The body is validated with the replicas' own models (:mod:`testbed.live.openai_schema`), so a
bad request gets the same OpenAI-style 400 from the gateway as from a replica, naming the field,
and no attempt (let alone a retry) is wasted on it. A replica's deeper checks (the context
length its tokenizer measures) still answer 4xx, which the gateway passes back unchanged.

Streams are forwarded with ``stream_options.include_usage`` set, so the record gets the token
counts the replica measured; when the client did not ask for them, the gateway drops that last
usage-only chunk again (``strip_usage``).

Headers the gateway understands (all optional):

* ``x-request-deadline`` — absolute Unix time in seconds by which the answer is useless, or
  ``x-request-timeout`` — seconds from now (what the gateway itself sends replicas);
* ``x-priority`` (int, 0 = most important), ``x-request-class``, ``x-client-region``,
  ``x-pool`` (replica pool), and for agent calls ``x-session-id``, ``x-turn``, ``x-stage``,
  ``x-degraded`` — they go to the admission policy, the router and the request record;
* ``x-session-id`` is also the session a ``session_affinity`` router keeps together; without it,
  the body's ``user`` (what OpenAI clients send) is (:mod:`testbed.live.prompt_chain`);
* ``x-request-id`` (0 <= id < 2**63: the record's int64) — the client's own id for the request,
  recorded as its ``request_id`` so a replay can join records to its workload row for row. Ids
  stay unique: a request reusing an id the gateway has already recorded is refused with 400.
  Requests without one get the lowest id not yet taken.

Integer headers are bounded by their record column's type (``x-priority`` int16, ``x-turn``
int32, ``x-session-id`` int64): a value that does not fit is refused, never wrapped.

A body field ``timeout`` (seconds) also bounds the request. :func:`deadline_in` is the one
check of the body's ``timeout`` and the deadline headers: a replica reached directly applies it
too, so a bad ``timeout`` or a deadline already past gets the same answer from either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from testbed.live.openai_schema import ChatCompletionRequest, CompletionRequest, RequestError, parse_request as parse_body


INT16_MAX, INT32_MAX, INT64_MAX = 2**15 - 1, 2**31 - 1, 2**63 - 1


@dataclass(slots=True)
class ParsedRequest:
    body: bytes  # what the replica receives
    stream: bool
    strip_usage: bool  # the gateway asked for the usage chunk; the client did not
    timeout: float | None  # seconds from arrival, from the body's ``timeout`` or the deadline header
    pool: str
    priority: int
    request_class: str
    client_region: str | None
    session_id: int
    turn: int
    stage: str
    degraded: bool
    request_id: int | None = None  # the client's id (``x-request-id``), if it sent one
    content: CompletionRequest | ChatCompletionRequest | None = None  # the validated body
    user: str | None = None  # the body's ``user``: the end user OpenAI clients tag requests with

    def record_fields(self, default_region: str) -> dict[str, object]:
        """The request record's fields this request fills in when it arrives."""
        return {
            "request_class": self.request_class,
            "priority": self.priority,
            "client_region": self.client_region or default_region,
            "session_id": self.session_id,
            "turn": self.turn,
            "stage": self.stage,
            "degraded": self.degraded,
        }


def parse_request(path: str, raw: bytes, headers: Mapping[str, str], wall_now: float) -> ParsedRequest:
    """Check ``raw`` (the body of a POST to ``path``) and the headers; raise :class:`RequestError`."""
    model = ChatCompletionRequest if path.endswith("/chat/completions") else CompletionRequest
    request = parse_body(model, raw)
    body: dict[str, object] = json.loads(raw)  # valid: the model parsed it
    timeout = deadline_in(body, headers, wall_now)
    strip_usage = request.stream and not request.include_usage
    if strip_usage:
        raw = json.dumps({**body, "stream_options": {"include_usage": True}}).encode()
    return ParsedRequest(
        body=raw,
        stream=request.stream,
        strip_usage=strip_usage,
        timeout=timeout,
        pool=headers.get("x-pool", "default"),
        priority=_int_header(headers, "x-priority", 0, minimum=0, maximum=INT16_MAX),
        request_class=headers.get("x-request-class", "default"),
        client_region=headers.get("x-client-region"),
        session_id=_int_header(headers, "x-session-id", -1, minimum=-1, maximum=INT64_MAX),
        turn=_int_header(headers, "x-turn", -1, minimum=-1, maximum=INT32_MAX),
        stage=headers.get("x-stage", ""),
        degraded=headers.get("x-degraded", "").lower() in ("1", "true", "yes"),
        request_id=_int_header(headers, "x-request-id", -1, minimum=0, maximum=INT64_MAX) if "x-request-id" in headers else None,
        content=request,
        user=body["user"] if isinstance(body.get("user"), str) else None,
    )


def deadline_in(body: Mapping[str, Any], headers: Mapping[str, str], wall_now: float) -> float | None:
    """The tightest of the body's ``timeout`` and the deadline headers, in seconds from now (0 for
    a deadline already past); None if the request names none. Raises :class:`RequestError`."""
    limits = []
    value = body.get("timeout")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise RequestError(f"timeout: expected a positive number of seconds, got {value!r:.60}", param="timeout")
        limits.append(float(value))
    header = headers.get("x-request-deadline")
    if header is not None:
        try:
            deadline = float(header)
        except ValueError:
            raise RequestError(f"header x-request-deadline: expected a Unix time in seconds, got {header[:40]!r}", param="x-request-deadline") from None
        if not deadline == deadline:  # NaN
            raise RequestError("header x-request-deadline: expected a Unix time in seconds, got NaN", param="x-request-deadline")
        limits.append(max(0.0, deadline - wall_now))
    relative = headers.get("x-request-timeout")
    if relative is not None:
        try:
            seconds = float(relative)
        except ValueError:
            seconds = math.nan
        if not seconds > 0:
            raise RequestError(f"header x-request-timeout: expected a positive number of seconds, got {relative[:40]!r}", param="x-request-timeout")
        limits.append(seconds)
    return min(limits) if limits else None


def _int_header(headers: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    value = headers.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise RequestError(f"header {name}: expected an integer, got {value[:40]!r}", param=name) from None
    if not minimum <= number <= maximum:
        raise RequestError(f"header {name}: expected an integer from {minimum} to {maximum}, got {value[:40]}", param=name)
    return number
