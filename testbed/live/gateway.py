"""The live gateway: an asyncio OpenAI-compatible front over replicas, driven by the policy core.

Every decision — admit or shed, which replica, retry or give up, hedge, breaker, ejection,
health, failover to another region or to the fallback tier — is made by the same sans-IO
:class:`~testbed.policy.gateway.Gateway` the simulator drives; this module only carries its
actions out with httpx and the wall clock (``time.monotonic()`` from the stack's start):

* ``Dispatch`` starts an attempt task that POSTs the client's body to the replica's URL (its
  chaos proxy, so network faults hit the gateway's traffic and its health probes alike), with
  the remaining deadline propagated as ``x-request-timeout`` (seconds, as replicas read it) and the
  attempt's trace context as ``traceparent``;
* ``Cancel`` cancels that task, which closes the upstream connection so the replica stops;
* ``Wake`` is a ``loop.call_later`` back into ``on_timer``; ``Finish`` answers the client.

Cache-aware routers get each request's block chain, computed from the prompt it forwards
(:mod:`testbed.live.prompt_chain`) as the replicas name their cached blocks. With
``serving.queue`` the policy holds requests centrally (late binding); besides the attempt ends
and deadlines that drain it on their own, the driver drains it after every probe and upkeep tick,
as the simulator does after its probe rounds.

Streams pass through line by line. The first line that carries text is the attempt's first
token: it wins any hedge race, and from then on its lines go to the client. A stream that breaks
after that — the connection drops, or the replica ends it with an error event — cannot be
retried without repeating tokens. With migration on (``migration=``, a scenario's
``elastic.migration``) it resumes on another replica from the tokens the client already has, and
the client's stream simply continues (:mod:`testbed.live.resume`); otherwise, or past the
migration limit, the client gets an SSE ``error`` event (the openai client raises it as
``APIError``) and the record says ``failed``.

Replica answers are classified for the policy by :func:`testbed.policy.outcomes.classify`, the
one mapping both planes use: 2xx ``ok``; a 4xx other than 408/429 is ``client_error`` — the
client's fault, passed back to it unchanged, never retried, not held against the replica, and
recorded as ``client_error``; other statuses and broken connections ``failed``. A connection
that cannot be made is ``unavailable``: refused (``ConnectError``), not made within the
connect timeout, or — behind the chaos proxy, which accepts and then resets when its replica
is gone — reset before a single byte of answer came back. Each request
leaves one row in :class:`~testbed.live.records.LiveRecorder` (the simulator's schema), one
OpenTelemetry span with a child per attempt, and Prometheus metrics at ``/metrics``.

A row's ``first_token`` is when the winning attempt's first text line arrived for a stream; a
plain answer arrives whole, so the replica's ``x-ttft`` header dates its first token back from
the attempt's send time (without the header, as from vLLM, it is the answer's arrival). A client
that hangs up before its answer ends is recorded as ``timeout``, as the simulator records a
client that gives up at its deadline; its span carries a "client disconnected" event. (A
separate "client gone" status would need a new outcome in the records' schema and the SLA.)
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from testbed.draw import policy_rng
from testbed.live.records import DuplicateRequestId, LiveRecorder, LiveRow
from testbed.live.openai_schema import RequestError, install_error_handlers
from testbed.live.prompt_chain import PromptChains, model_tokenizer, user_session
from testbed.live.requests import ParsedRequest, parse_request
from testbed.live.resume import AttemptTokens, LiveMigration, ResumableStream
from testbed.policy.prefix_cache import Prefix
from testbed.policy.gateway import Action, Cancel, Dispatch, Finish, Gateway, ReplicaState, Wake
from testbed.policy.outcomes import Outcome, Status, classify
from testbed.spec import MigrationSpec, ServingSpec

MAX_BODY_BYTES = 1 << 20  # a request body larger than this is refused with 413 before it is read
TICK = 0.5  # seconds between upkeep ticks (breakers and ejections expire with time)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
STATUS_CODES = {Status.FAILED: 502, Status.TIMEOUT: 504, Status.SHED: 503}


@dataclass(slots=True)
class Upstream:
    """A replica as the gateway sees it: where to send traffic (its proxy) and where it lives."""

    name: str
    url: str
    region: str
    tier: str = "primary"
    pool: str = "default"
    capacity: int = 8  # concurrent sequences: the admission controller's load unit


class JsonLinesSpanExporter(SpanExporter):
    """Writes each finished span as one line of OTLP-like JSON (``ReadableSpan.to_json``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self._file.write(span.to_json(indent=None) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


@dataclass(eq=False)
class _Attempt:
    key: int
    rid: int
    replica: int
    hedge: bool
    span: trace.Span
    sent: float = 0.0  # when the gateway sent it, seconds from the stack's start
    task: asyncio.Task[None] | None = None
    lines: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # streamed before it won the race
    tokens: AttemptTokens | None = None  # its part of a migratable stream
    body: bytes = b""
    status: int = 0
    error: str = ""
    usage: dict[str, int] | None = None
    text_chunks: int = 0
    saw_done: bool = False


@dataclass(eq=False)
class _Live:
    """A request in flight: what the client sent and how to answer it."""

    row: LiveRow
    path: str
    body: bytes
    stream: bool
    strip_usage: bool  # drop the usage-only chunk the gateway asked for on the client's behalf
    deadline: float  # seconds from the stack's start
    span: trace.Span
    answer: asyncio.Future[Any]  # resolves to a Response, or to the client's stream (a queue of lines)
    attempts: dict[int, _Attempt] = field(default_factory=dict)
    winner: _Attempt | None = None  # the attempt whose lines go to the client now
    out: asyncio.Queue[str | None] | None = None  # the client's stream, once an attempt won
    resumable: ResumableStream | None = None  # set when the stream may migrate
    resuming: bool = False  # the next attempt resumes a broken stream
    last: _Attempt | None = None  # the attempt that ended last: its error explains a failure
    timer: asyncio.TimerHandle | None = None


class Metrics:
    """The gateway's Prometheus metrics, vLLM-style names under ``testbed:gateway_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("testbed:gateway_requests", "Requests ended, by final status", ["status"], registry=r)
        self.attempts = Counter("testbed:gateway_attempts", "Attempts ended, by replica and outcome", ["replica", "outcome"], registry=r)
        self.retries = Counter("testbed:gateway_retries", "Retries sent", registry=r)
        self.hedges = Counter("testbed:gateway_hedges", "Hedged attempts sent", registry=r)
        self.migrations = Counter("testbed:gateway_migrations", "Broken streams resumed on another replica", registry=r)
        self.e2e = Histogram("testbed:gateway_e2e_request_latency_seconds", "End-to-end latency of ok requests", buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("testbed:gateway_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("testbed:gateway_num_requests_running", "Requests in flight", registry=r)
        self.available = Gauge("testbed:gateway_replica_available", "1 if the gateway routes to the replica", ["replica", "region"], registry=r)
        self.health = Counter("testbed:gateway_health_transitions", "Health belief changes", ["replica", "to"], registry=r)


class LiveGateway:
    """The gateway over ``upstreams`` under ``spec``; ``app`` is its FastAPI application.

    ``start`` is the ``time.monotonic()`` value records count from (the stack's start), so the
    gateway, the fault injector and the records share one clock. ``span_exporter`` receives one
    span per request and per attempt (in-memory in tests, :class:`JsonLinesSpanExporter` for
    files). ``migration`` (a scenario's ``elastic.migration``) lets broken streams resume on
    another replica; without it they fail. The app's lifespan opens the HTTP client and starts
    health probing.
    """

    def __init__(
        self,
        spec: ServingSpec,
        upstreams: Sequence[Upstream],
        *,
        models: Sequence[str] = ("tiny",),
        client_regions: Sequence[str] | None = None,
        rtt: Callable[[str, str], float] | None = None,
        seed: int = 0,
        start: float | None = None,
        span_exporter: SpanExporter | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        migration: MigrationSpec | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("the gateway needs at least one upstream replica")
        self.spec = spec
        self.upstreams = list(upstreams)
        self.models = list(models)
        self.start = time.monotonic() if start is None else start
        self.max_body_bytes = max_body_bytes
        primary = [u.region for u in self.upstreams if u.tier == "primary"] or [u.region for u in self.upstreams]
        self.client_regions = list(client_regions or dict.fromkeys(primary))
        views = [ReplicaState(i, u.region, u.tier, u.capacity, pool=u.pool) for i, u in enumerate(self.upstreams)]
        # The simulator's stream for the same seed: the same jitter and the same random picks.
        self.policy = Gateway(spec, views, self.client_regions, rtt or _nominal_rtt, policy_rng(seed))
        # Cache-aware routers (those with choose_for) get each request's chain, in the replicas' blocks.
        routes_by_prefix = any(hasattr(r, "choose_for") for r in self.policy.routers.values())
        self.chains = PromptChains(spec.batching.block_size, model_tokenizer(self.models[0])) if routes_by_prefix else None
        self._classes: dict[str, int] = {}  # request class -> the index the gateway queue takes turns by
        self.timeouts = spec.timeouts  # the deadline and connect timeout this driver applies
        self.migration = LiveMigration(migration) if migration is not None else None
        self.recorder = LiveRecorder(dict.fromkeys(u.region for u in self.upstreams))
        self.metrics = Metrics()
        self.health_events: list[tuple[int, float, str]] = []  # (replica, time, "unhealthy"/"healthy")
        self.tracer_provider = TracerProvider(resource=Resource.create({"service.name": "testbed-gateway"}))
        if span_exporter is not None:
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        self.tracer = self.tracer_provider.get_tracer("testbed.live.gateway")
        self.client: httpx.AsyncClient | None = None
        self._live: dict[int, _Live] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.app = self._build_app()

    def now(self) -> float:
        return time.monotonic() - self.start

    def migration_stats(self) -> dict[str, int | bool]:
        """Migrations so far and the checker's verdict on the migrated requests that ended ok."""
        if self.migration is None:
            return {"migrations": 0, "migrated_requests": 0, "migration_check_ok": True,
                    "migration_tokens_lost": 0, "migration_tokens_duplicated": 0}
        return self.migration.stats()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(limits=limits, timeout=None)
        self._spawn(self._upkeep())
        if self.chains is not None:
            self._spawn(asyncio.to_thread(self.chains.warm))

    async def close(self) -> None:
        """Time out what is still in flight (so every record ends), stop probing, close the client."""
        for rid in list(self._live):
            self._execute(self.policy.on_deadline(rid, self.now()))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
        self.tracer_provider.shutdown()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------------ HTTP surface

    def _build_app(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.open()
            try:
                yield
            finally:
                await self.close()

        app = FastAPI(title="testbed gateway", lifespan=lifespan)
        install_error_handlers(app)  # 404s and 405s in OpenAI's error shape, as the replicas answer

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self.handle(request, "/v1/completions")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self.handle(request, "/v1/chat/completions")

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "testbed"} for m in self.models]}

        @app.get("/health")
        async def health() -> dict[str, Any]:
            available = sum(r.available for r in self.policy.replicas)
            return {"status": "ok", "replicas": len(self.upstreams), "available": available}

        @app.get("/metrics")
        async def metrics() -> Response:
            for view, upstream in zip(self.policy.replicas, self.upstreams):
                self.metrics.available.labels(upstream.name, upstream.region).set(float(view.available))
            self.metrics.running.set(len(self._live))
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return app

    async def handle(self, request: Request, path: str) -> Response:
        """One client request: validate, hand it to the policy, answer with what it decides."""
        arrival = self.now()
        try:
            raw = await _read_limited(request, self.max_body_bytes)
            parsed = parse_request(path, raw, request.headers, time.time())
        except RequestError as exc:
            return self._refuse(exc)
        prefix = await self._prefix(parsed) if self.chains is not None else None
        deadline = arrival + self.timeouts.request
        if parsed.timeout is not None:
            deadline = min(deadline, arrival + parsed.timeout)
        try:
            row = self.recorder.open(arrival, parsed.request_id, **parsed.record_fields(self.client_regions[0]))
        except DuplicateRequestId as exc:
            return self._refuse(RequestError(str(exc), param="x-request-id"))
        if row.client_region not in self.client_regions:
            self.recorder.close(row, Status.CLIENT_ERROR, arrival)
            known = ", ".join(self.client_regions)
            return self._refuse(RequestError(f"header x-client-region: unknown region {row.client_region!r}; expected one of {known}", param="x-client-region"))
        span = self.tracer.start_span(
            "gateway.request",
            attributes={"testbed.request_id": row.request_id, "http.route": path, "testbed.stream": parsed.stream},
        )
        live = _Live(row, path, parsed.body, parsed.stream, parsed.strip_usage, deadline, span, asyncio.get_running_loop().create_future())
        if self.migration is not None:
            live.resumable = self.migration.track(row.request_id, path, parsed.body, parsed.strip_usage)
        self._live[row.request_id] = live
        live.timer = asyncio.get_running_loop().call_later(max(0.0, deadline - arrival), self._on_deadline, row.request_id)
        request_class = self._classes.setdefault(row.request_class, len(self._classes))
        self._execute(self.policy.on_arrival(row.request_id, row.priority, row.client_region, arrival, parsed.pool,
                                             prefix=prefix, request_class=request_class))
        try:
            answer = await asyncio.shield(live.answer)
        except asyncio.CancelledError:
            self._client_gone(row.request_id)
            raise
        if isinstance(answer, asyncio.Queue):
            return StreamingResponse(self._relay(row.request_id, answer), media_type="text/event-stream")
        return answer

    async def _prefix(self, parsed: ParsedRequest) -> Prefix | None:
        """The request's block chain (:mod:`testbed.live.prompt_chain`); text is tokenized off the loop.

        Computed before the request is recorded: a client gone meanwhile leaves no row, as one
        whose body never arrived."""
        assert self.chains is not None and parsed.content is not None
        session = parsed.session_id if parsed.session_id >= 0 else user_session(parsed.user) if parsed.user else -1
        if self.chains.needs_tokenizer(parsed.content):
            return await asyncio.to_thread(self.chains.prefix, parsed.content, session)
        return self.chains.prefix(parsed.content, session)

    def _refuse(self, error: RequestError) -> JSONResponse:
        """Answer a request the gateway refuses itself: the client's error, counted as one."""
        self.metrics.requests.labels(Status.CLIENT_ERROR.value).inc()
        return JSONResponse(error.body(), status_code=error.status)

    async def _relay(self, rid: int, out: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        """The client's stream — the winning attempt's lines, and a resumed one's — until its request ends."""
        try:
            while (line := await out.get()) is not None:
                yield line
        finally:
            self._client_gone(rid)

    def _client_gone(self, rid: int) -> None:
        """The client went away before its answer ended: stop the work as if its deadline passed."""
        live = self._live.get(rid)
        if live is not None:
            live.span.add_event("client disconnected")
            self._execute(self.policy.on_deadline(rid, self.now()))

    # ------------------------------------------------------------------ carrying out actions

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action)
            elif isinstance(action, Cancel):
                self._cancel(action)
            elif isinstance(action, Wake):
                self._wake(action)
            elif isinstance(action, Finish):
                self._finish(action)

    def _dispatch(self, action: Dispatch) -> None:
        live = self._live[action.rid]
        upstream = self.upstreams[action.replica]
        if action.hedge:
            self.metrics.hedges.inc()
        elif live.resuming:
            live.resuming = False  # a migration (counted as one), not a retry
        elif live.attempts or live.last is not None:
            self.metrics.retries.inc()
        span = self.tracer.start_span(
            "gateway.attempt",
            context=trace.set_span_in_context(live.span),
            attributes={"testbed.replica": upstream.name, "testbed.region": upstream.region, "testbed.hedge": action.hedge},
        )
        attempt = _Attempt(action.attempt, action.rid, action.replica, action.hedge, span, sent=self.now())
        if live.resumable is not None:
            attempt.tokens = live.resumable.start()
            if attempt.tokens.offset:
                span.set_attribute("testbed.resumed_at", attempt.tokens.offset)
        live.attempts[attempt.key] = attempt
        self._attempts[attempt.key] = attempt
        attempt.task = asyncio.get_running_loop().create_task(self._run_attempt(live, attempt, upstream))

    def _cancel(self, action: Cancel) -> None:
        attempt = self._attempts.pop(action.attempt, None)
        if attempt is None:
            return
        live = self._live.get(action.rid)
        if live is not None:
            live.attempts.pop(attempt.key, None)
        attempt.span.set_attribute("testbed.outcome", "cancelled")
        attempt.span.end()
        if attempt.task is not None and attempt.task is not asyncio.current_task():
            attempt.task.cancel()

    def _wake(self, action: Wake) -> None:
        def fire() -> None:
            self._execute(self.policy.on_timer(action.rid, action.tag, self.now()))

        asyncio.get_running_loop().call_later(max(0.0, action.at - self.now()), fire)

    def _on_deadline(self, rid: int) -> None:
        self._execute(self.policy.on_deadline(rid, self.now()))

    def _finish(self, action: Finish) -> None:
        live = self._live.pop(action.rid)
        now = self.now()
        if live.timer is not None:
            live.timer.cancel()
        row = live.row
        row.retries, row.hedged, row.failed_over = action.retries, action.hedged, action.failed_over
        winner = self._attempts.pop(action.attempt, None) if action.attempt is not None else None
        if winner is not None:
            winner.span.end()
        if action.status == Status.OK and winner is not None:
            if live.resumable is not None and winner.tokens is not None:
                live.resumable.ended_ok(winner.tokens)
            upstream = self.upstreams[winner.replica]
            row.replica, row.region, row.fallback = winner.replica, upstream.region, upstream.tier == "fallback"
            usage = winner.usage or {}
            row.prompt_tokens = int(usage.get("prompt_tokens", 0))
            row.output_tokens = int(usage.get("completion_tokens", winner.text_chunks))
            row.cached_tokens = _cached_tokens(usage)
            self.metrics.e2e.observe(now - row.arrival)
        self.recorder.close(row, action.status, now)
        self.metrics.requests.labels(action.status.value).inc()
        live.span.set_attributes(
            {
                "testbed.status": action.status,
                "testbed.retries": action.retries,
                "testbed.hedged": action.hedged,
                "testbed.failed_over": action.failed_over,
                "testbed.fallback": row.fallback,
                "testbed.replica": self.upstreams[row.replica].name if row.replica >= 0 else "",
            }
        )
        live.span.end()
        self._answer(live, action, winner)

    def _answer(self, live: _Live, action: Finish, winner: _Attempt | None) -> None:
        """Resolve the client's answer (or end its stream) with the request's outcome."""
        if live.out is not None:  # the stream is already the client's: end it
            if action.status != Status.OK:
                error = {"error": {"message": self._explain(live, action), "type": "upstream_error", "param": None, "code": action.status}}
                live.out.put_nowait(f"data: {json.dumps(error)}\n\n")
            live.out.put_nowait(None)
            return
        if live.answer.done():
            return
        if action.status == Status.OK and winner is not None:
            response: Response = Response(winner.body, status_code=winner.status, media_type="application/json")
        elif action.status == Status.CLIENT_ERROR and live.last is not None:
            response = Response(live.last.body, status_code=live.last.status, media_type="application/json")
        else:
            status = STATUS_CODES.get(action.status, 502)
            if action.status == "failed" and not live.row.retries and live.last is None:
                status = 503  # no replica could be tried at all
            error_type = {"timeout": "timeout", "shed": "overloaded"}.get(action.status, "upstream_error")
            body = {"error": {"message": self._explain(live, action), "type": error_type, "param": None, "code": action.status}}
            headers = {"retry-after": "1"} if status == 503 else None
            response = JSONResponse(body, status_code=status, headers=headers)
        live.answer.set_result(response)

    def _explain(self, live: _Live, action: Finish) -> str:
        attempts = live.row.retries + 1
        if action.status == "timeout":
            return f"deadline of {live.deadline - live.row.arrival:.3g}s exceeded (request {live.row.request_id}, {attempts} attempt(s))"
        if action.status == "shed":
            return "overloaded: request shed by admission control; retry later"
        if live.last is None:
            return "no replica available to serve the request"
        return f"upstream failed after {attempts} attempt(s); last error: {live.last.error}"

    # ------------------------------------------------------------------ attempts

    async def _run_attempt(self, live: _Live, attempt: _Attempt, upstream: Upstream) -> None:
        """One attempt against ``upstream``; reports its outcome to the policy unless cancelled."""
        assert self.client is not None
        remaining = max(0.001, live.deadline - self.now())
        headers = {"content-type": "application/json", "x-request-timeout": f"{remaining:.6f}"}
        inject(headers, context=trace.set_span_in_context(attempt.span))
        timeout = httpx.Timeout(remaining, connect=min(remaining, self.timeouts.connect))
        body = live.body if live.resumable is None else live.resumable.body()
        try:
            async with self.client.stream("POST", upstream.url + live.path, content=body, headers=headers, timeout=timeout) as response:
                attempt.status = response.status_code
                if response.status_code != 200:
                    attempt.body = await response.aread()
                    attempt.error = f"{upstream.name} answered {response.status_code}: {_error_message(attempt.body)}"
                    self._attempt_ended(live, attempt, classify(response.status_code))
                    return
                if live.stream:
                    await self._read_stream(live, attempt, response)
                else:
                    attempt.body = await response.aread()
                    attempt.usage = _usage(attempt.body)
                    self._first_token(live, attempt, _ttft(response.headers))
                    self._attempt_ended(live, attempt, Outcome.OK)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            attempt.error = f"{upstream.name} unreachable: {type(exc).__name__}"
            self._attempt_ended(live, attempt, Outcome.UNAVAILABLE)
        except httpx.TimeoutException as exc:
            attempt.error = f"{upstream.name} timed out: {type(exc).__name__}"
            self._attempt_ended(live, attempt, Outcome.TIMEOUT, retryable=live.winner is not attempt)
        except httpx.HTTPError as exc:
            if not attempt.status and _reset(exc):
                attempt.error = f"{upstream.name} refused the connection: {type(exc).__name__}"
                self._attempt_ended(live, attempt, Outcome.UNAVAILABLE)
                return
            attempt.error = f"{upstream.name} connection broke: {type(exc).__name__}: {exc}"
            self._attempt_ended(live, attempt, Outcome.FAILED, retryable=live.winner is not attempt)

    async def _read_stream(self, live: _Live, attempt: _Attempt, response: httpx.Response) -> None:
        resumable = live.resumable
        outcome = Outcome.FAILED
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                if resumable is None:
                    self._emit(live, attempt, line + "\n")  # a migratable stream's events are re-framed whole
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                attempt.saw_done = True
                if resumable is not None and attempt.tokens is not None:
                    for held in resumable.release(attempt.tokens):
                        self._emit(live, attempt, *held)
                self._emit(live, attempt, line + "\n\n")
                break  # end the request now: the client may hang up as soon as it reads [DONE]
            data = _json(payload)
            error = _stream_error(data)
            if error is not None:  # the replica's generation failed mid-stream: the stream is broken
                attempt.error = f"{self.upstreams[attempt.replica].name} ended its stream with an error: {error[0]}"
                outcome = Outcome.TIMEOUT if error[1] == "timeout" else Outcome.FAILED
                break
            if resumable is None or attempt.tokens is None:
                out = [(line + "\n", ())]
            elif isinstance(data, dict):
                out = resumable.relay(attempt.tokens, data)
            else:
                out = [(line + "\n\n", ())]
            usage, text, choices = _chunk(data)
            attempt.usage = usage or attempt.usage
            if text:
                attempt.text_chunks += 1
                if live.winner is None:
                    self._first_token(live, attempt)
            elif resumable is None and usage is not None and not choices and live.strip_usage:
                continue  # the usage chunk the gateway asked for; the client did not
            for event, ids in out:
                self._emit(live, attempt, event, ids)
        if not attempt.saw_done:
            attempt.error = attempt.error or "stream ended without [DONE]"
            self._attempt_ended(live, attempt, outcome, retryable=live.winner is not attempt)
            return
        if live.winner is None:  # a stream without any text still answers
            self._first_token(live, attempt)
        self._attempt_ended(live, attempt, Outcome.OK)

    def _emit(self, live: _Live, attempt: _Attempt, line: str, ids: tuple[int, ...] = ()) -> None:
        """A line of ``attempt``'s stream: to the client if it is the winner, else kept until it wins."""
        if live.winner is not attempt or live.out is None:
            attempt.lines.append((line, ids))
            return
        live.out.put_nowait(line)
        if ids and live.resumable is not None and attempt.tokens is not None:
            live.resumable.forwarded(attempt.tokens, ids)

    def _first_token(self, live: _Live, attempt: _Attempt, ttft: float | None = None) -> None:
        """``attempt`` produced its first token; if it is the first of its request, it wins.

        A plain answer arrives whole, so the gateway learns of its first token only now; the
        replica's ``x-ttft`` (seconds from its receipt) dates it back, from the attempt's send
        time. Without it (vLLM), the first token is recorded when the answer arrived.
        """
        if attempt.key not in self._attempts or live.winner is not None:
            return
        now = self.now()
        if math.isnan(live.row.first_token):  # a resumed attempt's first token is not the request's
            first = now if ttft is None else min(now, attempt.sent + ttft)
            live.row.first_token = first
            self.metrics.ttft.observe(first - live.row.arrival)
            self._execute(self.policy.on_first_token(attempt.key, now))
        if live.stream:
            live.winner = attempt
            if live.out is None:
                live.out = asyncio.Queue()
                live.answer.set_result(live.out)
            lines, attempt.lines = attempt.lines, []
            for line, ids in lines:
                self._emit(live, attempt, line, ids)

    def _attempt_ended(self, live: _Live, attempt: _Attempt, outcome: Outcome, retryable: bool = True) -> None:
        if attempt.key not in self._attempts:
            return  # cancelled: the policy already accounted for it
        if outcome == Outcome.FAILED and not retryable and live.resumable is not None and attempt.tokens is not None:
            ending = live.resumable.complete()
            if ending is not None:  # every token reached the client: only the end was missing
                for event in ending:
                    self._emit(live, attempt, event)
                attempt.usage = live.resumable.usage()
                outcome = Outcome.OK
            elif self._migrate(live, attempt):
                return
        upstream = self.upstreams[attempt.replica]
        self.metrics.attempts.labels(upstream.name, outcome).inc()
        attempt.span.set_attribute("testbed.outcome", outcome)
        if attempt.status:
            attempt.span.set_attribute("http.response.status_code", attempt.status)
        if outcome != Outcome.OK:
            self._attempts.pop(attempt.key)
            attempt.span.end()
        live.attempts.pop(attempt.key, None)
        live.last = attempt
        self._execute(self.policy.on_attempt_end(attempt.key, outcome, self.now(), retryable))

    def _migrate(self, live: _Live, attempt: _Attempt) -> bool:
        """Resume ``attempt``'s broken stream on another replica, if the migration policy allows."""
        assert live.resumable is not None and attempt.tokens is not None
        resume = live.resumable.migrate(attempt.tokens)
        if resume is None:
            if live.resumable.prompt_ids is None:
                attempt.error += " (not resumed: the replica reported no token ids)"
            return False
        upstream = self.upstreams[attempt.replica]
        self.metrics.attempts.labels(upstream.name, Outcome.FAILED).inc()
        self.metrics.migrations.inc()
        attempt.span.set_attributes({"testbed.outcome": Outcome.FAILED, "testbed.migrated_at": resume.offset})
        attempt.span.end()
        self._attempts.pop(attempt.key)
        live.attempts.pop(attempt.key, None)
        live.last, live.winner, live.resuming = attempt, None, True
        self._execute(self.policy.on_migrate(attempt.key, self.now()))
        return True

    # ------------------------------------------------------------------ health

    async def _upkeep(self) -> None:
        """Probe replicas when the health checker says they are due; tick the policies."""
        checker = self.policy.health
        enabled = self.spec.health_check.enabled
        while True:
            now = self.now()
            due = checker.next_due() if enabled else None
            wait = TICK if due is None else min(TICK, max(0.0, due - now))
            await asyncio.sleep(wait)
            now = self.now()
            if enabled:
                for replica in checker.probe_due(now):
                    self._spawn(self._probe(replica))
            self.policy.on_tick(now)
            self._execute(self.policy.drain(now))  # replicas back in rotation take queued requests

    async def _probe(self, replica: int) -> None:
        assert self.client is not None
        spec = self.spec.health_check
        url = self.upstreams[replica].url
        try:
            # httpx's timeout bounds each read, not the whole probe: a replica that trickles
            # bytes (or a proxy that accepted for a stopped one) must still fail it in time.
            async with asyncio.timeout(spec.timeout):
                if spec.deep:
                    body = {"model": self.models[0], "prompt": "ping", "max_tokens": 1}
                    response = await self.client.post(url + "/v1/completions", json=body, timeout=spec.timeout)
                else:
                    response = await self.client.get(url + "/health", timeout=spec.timeout)
            ok = response.status_code == 200
        except (httpx.HTTPError, TimeoutError):
            ok = False
        now = self.now()
        change = self.policy.on_probe(replica, ok, now)
        if change is not None:
            self.health_events.append((replica, now, change))
            self.metrics.health.labels(self.upstreams[replica].name, change).inc()
        self._execute(self.policy.drain(now))


def _nominal_rtt(a: str, b: str) -> float:
    """Without a topology, regions are equally far apart and a region is near itself."""
    return 0.0 if a == b else 0.05


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one larger than ``limit`` without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes exceeds the limit of {limit} bytes", status=413, code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes", status=413, code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else its first 200 bytes."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace") or "(empty body)"


def _reset(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a connection reset (RST), anywhere in its chain of causes."""
    while exc is not None:
        if isinstance(exc, ConnectionResetError) or "reset by peer" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _ttft(headers: httpx.Headers) -> float | None:
    """The replica's ``x-ttft`` header, if it sent a usable one."""
    try:
        value = float(headers.get("x-ttft", "nan"))
    except ValueError:
        return None
    return value if 0.0 <= value < float("inf") else None


def _cached_tokens(usage: dict) -> int:
    """Prompt tokens the replica served from its prefix cache (OpenAI's and vLLM's usage field)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return int(cached) if isinstance(cached, int) else 0


def _usage(body: bytes) -> dict[str, int] | None:
    try:
        usage = json.loads(body).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _json(payload: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


def _stream_error(data: Any) -> tuple[str, str] | None:
    """(message, type) of an error event (an OpenAI error body sent as a chunk), else None."""
    if not isinstance(data, dict) or "choices" in data or not isinstance(data.get("error"), dict):
        return None
    error = data["error"]
    return str(error.get("message", "")), str(error.get("type", ""))


def _chunk(data: Any) -> tuple[dict[str, int] | None, bool, bool]:
    """(usage, carries text, has choices) of one streamed chunk; the usage chunk has no choices."""
    if not isinstance(data, dict):
        return None, False, False
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    choices = [c for c in data.get("choices") or () if isinstance(c, dict)]
    for choice in choices:
        delta = choice.get("delta")
        if choice.get("text") or (isinstance(delta, dict) and delta.get("content")):
            return usage, True, True
    return usage, False, bool(choices)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the program embedding the gateway owns Ctrl-C."""

    def capture_signals(self) -> AbstractContextManager[None]:  # type: ignore[override]
        return nullcontext()


@dataclass(eq=False)
class Served:
    """An ASGI app served by uvicorn on this event loop; ``url`` is where it listens."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str

    async def close(self) -> None:
        self.server.should_exit = True
        await self.task


async def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Served:
    """Serve ``app`` in-process (port 0 picks a free port) and return once it accepts requests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
            raise RuntimeError("the gateway server stopped before it started")
        await asyncio.sleep(0.01)
    bound_port = sock.getsockname()[1]
    return Served(server, task, f"http://{host}:{bound_port}")


