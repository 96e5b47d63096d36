"""An OpenAI-compatible replica server for the built-in engine (FastAPI + uvicorn, 127.0.0.1).

Routes: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming as server-sent
events, or not), ``GET /v1/models``, ``GET /health``, Prometheus ``GET /metrics`` with vLLM's
metric names, the chaos hooks ``GET|POST|DELETE /chaos`` (see :mod:`replica_chaos`) and the
weights switch ``GET|POST /weights`` (see :mod:`testbed.live.replica.control`). Usage reports the prompt
tokens served from the prefix cache as ``prompt_tokens_details.cached_tokens``, as vLLM does. A
prompt may be token ids, and ``return_token_ids: true`` reports the prompt's ids and each chunk's
generated ids in vLLM's fields (``prompt_token_ids``, ``token_ids``): the gateway resumes a broken
stream from them (:mod:`testbed.live.resume`). The official ``openai`` client works against it unchanged.

Every error is an OpenAI-style body with a message that says what was wrong: malformed or
mistyped requests get 400 naming the field, oversize bodies 413, a prompt beyond the context
400 with the numbers, an unknown model 404, a passed deadline 504, a stopped engine 503.

A client may bound a request with the ``X-Request-Timeout`` header (seconds), an
``X-Request-Deadline`` (Unix time) or a body ``timeout`` — checked by the gateway's own
:func:`~testbed.live.requests.deadline_in`, so a bad value gets the same 400 and a deadline
already past the same 504 whether the replica is reached directly or through the gateway. Past
its deadline a request leaves the batch and answers 504 (or, mid-stream, an error event). A plain (non-streamed) answer
carries ``X-TTFT``: seconds from the request's receipt to its first token, which the gateway
records as the request's time to first token.

Run one replica::

    python -m testbed.live.replica.server --model tiny --port 0 --name r0

It prints exactly one line, ``READY name=r0 url=http://127.0.0.1:PORT``, once it serves, and
shuts down cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from testbed.live.replica.engine import DeadlineExceeded, Engine, EngineClosed, PrefillInfo
from testbed.live.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    describe_validation_error,
    error_body,
    install_error_handlers,
    parse_request,
)
from testbed.live.replica.chaos import ChaosMiddleware, ChaosPatch, ReplicaChaos
from testbed.live.replica.control import control_router
from testbed.live.replica.prefix_cache import DEFAULT_BLOCK_SIZE, DEFAULT_CAPACITY_BYTES
from testbed.live.replica.metrics import CONTENT_TYPE, ReplicaMetrics
from testbed.live.requests import deadline_in
from testbed.spec import MicroBatching

MAX_BODY_BYTES = 4 * 1024 * 1024
# No tokenizer averages more characters per token than this: a longer text cannot fit the
# context, and is refused before spending time tokenizing it.
MAX_CHARS_PER_TOKEN = 32
TTFT_HEADER = "x-ttft"  # on a plain answer: seconds from the request's receipt to its first token


class _Detokenizer:
    """Token ids in, text deltas out, honouring stop sequences.

    The whole text is re-decoded at each token (byte-level BPE can split a character across
    tokens); text that might be the start of a stop sequence is held back until it is not.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]) -> None:
        self._decode = decode
        self._stops = stops
        self._ids: list[int] = []
        self._text = ""
        self._sent = 0

    def add(self, token: int) -> tuple[str, bool]:
        """The new safe text after ``token``, and whether a stop sequence ended the completion."""
        self._ids.append(token)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return "", False
        self._text = text
        cuts = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if cuts:
            end = min(cuts)
            delta, self._sent = text[self._sent:end], end
            return delta, True
        end = len(text) - self._held_back(text)
        delta, self._sent = text[self._sent:end], max(self._sent, end)
        return delta, False

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        delta, self._sent = self._text[self._sent:], len(self._text)
        return delta


class _Completion:
    """One generation: the engine's tokens as text deltas, with timings fed to the metrics."""

    def __init__(self, engine: Engine, metrics: ReplicaMetrics, prompt_ids: list[int], max_tokens: int,
                 stops: list[str], deadline: float | None) -> None:
        self.engine, self.metrics = engine, metrics
        self.prompt_ids, self.max_tokens, self.stops, self.deadline = prompt_ids, max_tokens, stops, deadline
        self.output_tokens = 0
        self.token_ids: list[int] = []
        self.finish_reason = "stop"
        self.received = time.monotonic()
        self.first_token: float | None = None  # seconds from ``received`` to the first token
        self.prefill = PrefillInfo()

    @property
    def timing_headers(self) -> dict[str, str]:
        """``x-ttft`` for a plain answer: its client (the gateway) cannot see when the first token came."""
        return {} if self.first_token is None else {TTFT_HEADER: f"{self.first_token:.6f}"}

    async def deltas(self) -> AsyncIterator[tuple[str, int | None]]:
        """(text delta, token id) per generated token (the delta maybe empty), then any held-back
        tail as (tail, None)."""
        started = last = time.monotonic()
        ttft: float | None = None
        detok = _Detokenizer(self.engine.runner.decode_text, self.stops)
        stopped = False
        generation = self.engine.generate(self.prompt_ids, self.max_tokens, self.deadline, self.prefill)
        async with contextlib.aclosing(generation) as tokens:
            async for token in tokens:
                now = time.monotonic()
                if ttft is None:
                    ttft = now - started
                    self.first_token = now - self.received
                else:
                    self.metrics.observe_token(now - last)
                last = now
                self.output_tokens += 1
                self.token_ids.append(token)
                delta, stopped = detok.add(token)
                yield delta, token
                if stopped:
                    break
        if not stopped:
            yield detok.flush(), None
            self.finish_reason = "length" if self.output_tokens >= self.max_tokens else "stop"
        self.metrics.observe_request(len(self.prompt_ids), self.output_tokens, ttft, time.monotonic() - started,
                                     self.finish_reason)

    @property
    def usage(self) -> dict:
        prompt = len(self.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": self.output_tokens,
                "total_tokens": prompt + self.output_tokens,
                "prompt_tokens_details": {"cached_tokens": self.prefill.cached_tokens}}


def _engine_error(exc: BaseException) -> RequestError:
    """The HTTP answer for a failure inside generation."""
    if isinstance(exc, DeadlineExceeded):
        return RequestError(f"request timed out: {exc}", 504, "timeout", code="deadline_exceeded")
    if isinstance(exc, EngineClosed):
        return RequestError(f"replica unavailable: {exc}", 503, "service_unavailable", code="engine_unavailable")
    return RequestError(f"generation failed: {exc}", 500, "internal_error")


_GENERATION_ERRORS = (DeadlineExceeded, EngineClosed, RuntimeError)


def create_app(engine: Engine, name: str, model_name: str, chaos: ReplicaChaos | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The replica's ASGI app. Starts ``engine`` with the app's lifespan unless it already runs."""
    chaos = chaos if chaos is not None else ReplicaChaos(engine)
    metrics = ReplicaMetrics(engine, model_name)
    request_ids = itertools.count()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = not engine.running
        if owned:
            await engine.start()
        try:
            yield
        finally:
            if owned:
                await engine.stop()

    app = FastAPI(title=f"testbed replica {name}", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine, app.state.chaos, app.state.metrics = engine, chaos, metrics
    app.add_middleware(ChaosMiddleware, chaos=chaos)
    app.include_router(control_router(engine))

    install_error_handlers(app)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error"),
                            status_code=500)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(f"the request body is {int(declared):,} bytes; the limit is {max_body_bytes:,}",
                               413, code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise RequestError(f"the request body exceeds the limit of {max_body_bytes:,} bytes",
                                   413, code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != model_name:
            raise RequestError(f"the model `{requested}` does not exist; this replica serves `{model_name}`",
                               404, param="model", code="model_not_found")

    def deadline_of(request: Request, raw: bytes) -> float | None:
        """The request's deadline (monotonic), checked exactly as the gateway checks it: the
        body's ``timeout`` and the deadline headers; one already past answers 504 at once."""
        seconds = deadline_in(json.loads(raw), request.headers, time.time())
        if seconds is None:
            return None
        if seconds <= 0:
            raise RequestError("request timed out: its deadline had passed when it arrived", 504, "timeout",
                               code="deadline_exceeded")
        return time.monotonic() + seconds

    def check_length(chars: int, param: str) -> None:
        limit = engine.runner.max_context
        if chars > limit * MAX_CHARS_PER_TOKEN:
            raise RequestError(f"{param} is {chars:,} characters, far beyond this model's maximum context "
                               f"length of {limit} tokens", param=param, code="context_length_exceeded")

    def check_context(prompt_ids: list[int], max_tokens: int, param: str) -> None:
        try:
            engine.check_request(len(prompt_ids), max_tokens)
        except ValueError as exc:
            raise RequestError(str(exc), param=param, code="context_length_exceeded") from None

    async def run(request: Request, prompt_ids: list[int], budget: int, req, chat: bool,
                  deadline: float | None) -> Response:
        """Generate and answer: a JSON body, or an SSE stream once the first token exists."""
        completion = _Completion(engine, metrics, prompt_ids, budget, req.stop_sequences, deadline)
        kind = "chatcmpl" if chat else "cmpl"
        head = {"id": f"{kind}-{name}-{next(request_ids)}", "created": int(time.time()), "model": model_name}
        deltas = completion.deltas()
        ids = TokenIds(prompt_ids, chat) if req.return_token_ids else None
        if not req.stream:
            text = await _join_unless_disconnected(request, deltas)
            if text is None:
                return Response(status_code=499)  # nobody is listening; the sequence left the batch
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                          "finish_reason": completion.finish_reason}
                body = {**head, "object": "chat.completion", "choices": [choice], "usage": completion.usage}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": completion.finish_reason}
                body = {**head, "object": "text_completion", "choices": [choice], "usage": completion.usage}
            if ids is not None:
                ids.attach(body, completion.token_ids)
            return JSONResponse(body, headers=completion.timing_headers)
        try:
            first = await anext(deltas, None)  # errors before the first token are HTTP errors
        except _GENERATION_ERRORS as exc:
            await deltas.aclose()
            raise _engine_error(exc) from None
        stream = _sse(head, chat, first, deltas, completion, req.include_usage, ids)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        raw = await read_body(request)
        req = parse_request(CompletionRequest, raw)
        deadline = deadline_of(request, raw)
        check_model(req.model)
        text = req.prompt_text
        if text is None:
            prompt_ids = list(req.prompt)
            vocab = engine.runner.model.config.vocab_size
            bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise RequestError(f"prompt: token id {bad} is outside the vocabulary (0..{vocab - 1})",
                                   param="prompt")
        else:
            check_length(len(text), "prompt")
            prompt_ids = engine.runner.encode(text)
        check_context(prompt_ids, req.max_tokens, "prompt")
        return await run(request, prompt_ids, req.max_tokens, req, chat=False, deadline=deadline)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await read_body(request)
        req = parse_request(ChatCompletionRequest, raw)
        deadline = deadline_of(request, raw)
        check_model(req.model)
        tokenizer = engine.runner.tokenizer
        if not tokenizer.chat_template:
            raise RequestError(f"the model `{model_name}` has no chat template; use /v1/completions",
                               param="messages")
        messages = [{"role": m.role, "content": m.text} for m in req.messages]
        check_length(sum(len(m["content"]) for m in messages), "messages")
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # templates raise on conversations they do not accept
            raise RequestError(f"messages: the model's chat template rejected them: {exc}",
                               param="messages") from None
        bos = tokenizer.bos_token
        prompt_ids = engine.runner.encode(text, add_special_tokens=not (bos and text.startswith(bos)))
        check_context(prompt_ids, req.token_budget, "messages")
        return await run(request, prompt_ids, req.token_budget, req, chat=True, deadline=deadline)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "testbed",
                "max_model_len": engine.runner.max_context if engine.runner else None}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> Response:
        if not engine.running:
            raise RequestError("the engine is not running", 503, "service_unavailable", code="engine_unavailable")
        return JSONResponse({"status": "ok", "name": name, "model": model_name,
                             "waiting": engine.queued, "running": engine.batch_size,
                             "batching": engine.batching.model_dump(mode="json"),
                             "batching_delay": engine.batching_delay, "startup": engine.startup})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/chaos")
    async def chaos_get() -> dict:
        return chaos.snapshot()

    @app.post("/chaos")
    async def chaos_post(request: Request) -> dict:
        chaos.update(parse_request(ChaosPatch, await read_body(request)))
        return chaos.snapshot()

    @app.delete("/chaos")
    async def chaos_delete() -> dict:
        chaos.clear()
        return chaos.snapshot()

    return app


async def _join_unless_disconnected(request: Request, deltas: AsyncIterator[tuple[str, int | None]]) -> str | None:
    """The whole text, or None if the client hung up first (a lost hedge, a client timeout).

    Streams are cancelled by Starlette when their client goes; a plain response is not, so
    without this a departed client's sequence would keep its place in the batch to the end.
    """

    async def join() -> str:
        async with contextlib.aclosing(deltas):
            return "".join([d async for d, _ in deltas])

    async def hung_up() -> bool:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return True

    work, watch = asyncio.ensure_future(join()), asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        raise
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, *_GENERATION_ERRORS):
            await work
        return None
    try:
        return work.result()
    except _GENERATION_ERRORS as exc:
        raise _engine_error(exc) from None


def _data(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class TokenIds:
    """``return_token_ids`` as vLLM answers it: the prompt's ids once (a completion choice's
    ``prompt_token_ids``; for chat, the response's), and the generated ids in ``token_ids``
    (per chunk, when streamed: the ids behind that chunk's text)."""

    def __init__(self, prompt_ids: list[int], chat: bool) -> None:
        self.prompt_ids, self.chat = prompt_ids, chat
        self.sent_prompt = False

    def attach(self, body: dict, token_ids: list[int]) -> dict:
        choice = body["choices"][0]
        choice["token_ids"] = list(token_ids)
        if not self.sent_prompt:
            self.sent_prompt = True
            (body if self.chat else choice)["prompt_token_ids"] = list(self.prompt_ids)
        return body


async def _sse(head: dict, chat: bool, first: tuple[str, int | None] | None,
               deltas: AsyncIterator[tuple[str, int | None]], completion: _Completion, include_usage: bool,
               ids: TokenIds | None = None) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.

    A token whose text is held back (half a character, or what may begin a stop sequence) sends
    no chunk, unless token ids were asked for: then its chunk carries its id and no text.
    """
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, token: int | None = None, finish: str | None = None) -> dict:
        if chat:
            body = {} if delta is None else {"content": delta}
            choice = {"index": 0, "delta": body, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        data = {**head, "object": obj, "choices": [choice]}
        return data if ids is None else ids.attach(data, [] if token is None else [token])

    async with contextlib.aclosing(deltas):
        try:
            if chat:
                role = {**head, "object": obj, "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
                yield _data(role if ids is None else ids.attach(role, []))
            if first is not None and (first[0] or (ids is not None and first[1] is not None)):
                yield _data(chunk(*first))
            async for delta, token in deltas:
                if delta or (ids is not None and token is not None):
                    yield _data(chunk(delta, token))
            yield _data(chunk(None, None, completion.finish_reason))
            if include_usage:
                yield _data({**head, "object": obj, "choices": [], "usage": completion.usage})
        except _GENERATION_ERRORS as exc:
            err = _engine_error(exc)
            yield _data(err.body())
    yield _data("[DONE]")


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGTERM/SIGINT just start a graceful exit.

    uvicorn re-raises a captured signal after shutting down, which would kill the process before
    the engine stops; this replica exits 0 after a clean shutdown instead.
    """

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def serve(engine: Engine, name: str, model_name: str, host: str = "127.0.0.1", port: int = 0) -> None:
    """Start the engine, serve until a signal, stop the engine. Prints the READY line."""
    await engine.start()
    try:
        app = create_app(engine, name, model_name)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                                lifespan="on")
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        bound = sock.getsockname()[1]
        print(f"READY name={name} url=http://{host}:{bound}", flush=True)
        await task
    finally:
        await engine.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.live.replica.server",
                                     description="An OpenAI-compatible replica of the built-in PyTorch engine.")
    parser.add_argument("--model", default="tiny", help="tiny, small, or a local Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    parser.add_argument("--name", default="r0", help="replica name, in the READY line and response ids")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 (the CPU fallback tier)")
    parser.add_argument("--batching", default=None, metavar="JSON",
                        help="a serving.batching spec as JSON (policy: micro), as the live stack passes it whole, "
                             "prefix_caching and block_size included; excludes the three flags below and --block-size")
    parser.add_argument("--max-batch-size", type=int, default=None, help="default 8")
    parser.add_argument("--max-delay", type=float, default=None, help="seconds a batch may wait to fill (default 0.01)")
    parser.add_argument("--adaptive", action="store_true", help="tune the batching delay toward a 2 s latency target")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--prefix-cache-bytes", type=int, default=DEFAULT_CAPACITY_BYTES,
                        help="memory for the prefix cache's keys and values (0 turns it off)")
    parser.add_argument("--block-size", type=int, default=None,
                        help=f"prefix cache block, in tokens (default {DEFAULT_BLOCK_SIZE})")
    args = parser.parse_args(argv)
    from testbed.live.replica.models import resolve_model

    try:
        batching = _batching(args)
        model_dir = resolve_model(args.model)
        engine = Engine.from_spec(model_dir, batching, args.quantize, args.threads, args.prefix_cache_bytes)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"replica server: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(engine, args.name, args.model, args.host, args.port))
    return 0


def _batching(args: argparse.Namespace) -> MicroBatching:
    """The batching spec from ``--batching`` (whole, as the stack sends it) or the loose flags.

    With the loose flags the prefix cache is on unless ``--prefix-cache-bytes 0``; with
    ``--batching`` it is on only if the spec's ``prefix_caching`` says so, as in simulation.
    """
    loose = args.max_batch_size is not None or args.max_delay is not None or args.adaptive or args.block_size is not None
    if args.batching is not None:
        if loose:
            raise ValueError("--batching carries the whole batching spec; drop --max-batch-size, --max-delay, "
                             "--adaptive and --block-size")
        try:
            return MicroBatching.model_validate_json(args.batching)
        except ValidationError as exc:
            message, _ = describe_validation_error(exc)
            raise ValueError(f"--batching: {message}") from None
    block_size = DEFAULT_BLOCK_SIZE if args.block_size is None else args.block_size
    if block_size < 1:
        raise ValueError(f"block_size: expected a number of tokens >= 1, got {block_size}")
    return MicroBatching(policy="micro", max_batch_size=8 if args.max_batch_size is None else args.max_batch_size,
                         max_queue_delay=0.01 if args.max_delay is None else args.max_delay, adaptive=args.adaptive,
                         target_latency=2.0 if args.adaptive else None, prefix_caching=args.prefix_cache_bytes > 0,
                         block_size=block_size)


def _exit_now(code: int) -> None:
    """Exit without interpreter finalization once the replica has shut down cleanly.

    Tearing down torch's and transformers' modules takes seconds on a busy machine, and whoever
    stopped the replica (supervisor, test) waits for that; nothing is left to flush by then.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
