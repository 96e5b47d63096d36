"""The built-in PyTorch engine: micro-batched generation driven by the shared batching policy.

The batching decisions are made by :class:`testbed.policy.batching.MicroBatcher` — the very
class the simulator drives with simulated time — here driven with ``time.monotonic()``. The
engine is only the I/O around it: requests arrive through :meth:`Engine.generate`, the loop asks
the batcher what to run, runs one model step in a worker thread (so the event loop keeps
accepting and streaming while torch computes) and reports the step back.

One loop turn is one model step: a prefill of a newly formed batch, or one decode step of the
running batch. Tokens go to each request's queue as they are produced. A sequence leaves the
batch when it has its ``max_tokens``, emits EOS, passes its deadline or its consumer goes away;
no new sequence joins until the batch is empty (micro-batching, not continuous batching).

A prefill first looks each prompt up in the replica's prefix cache
(:class:`~testbed.live.replica.prefix_cache.KVPrefixCache`) and computes only what is not cached; the
new full blocks are stored after it. The cache lives as long as the engine: ``start`` begins
cold. :meth:`Engine.set_weights` switches float32 <-> int8 between two steps and empties the
cache, whose keys and values belong to the old weights.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from testbed.live.replica.prefix_cache import DEFAULT_BLOCK_SIZE, DEFAULT_CAPACITY_BYTES, Hit, KVPrefixCache, block_bytes
from testbed.policy.batching import MicroBatcher
from testbed.policy.batching import Sequence as BatchSeq
from testbed.spec import MicroBatching


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before its generation finished."""


class EngineClosed(RuntimeError):
    """The engine is not running (not started yet, or stopped while the request was in flight)."""


@dataclass
class PrefillInfo:
    """What a request's prefill did, for its usage (``cached_tokens``) and for measurements."""

    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    prefill_seconds: float = float("nan")  # wall time of the prefill step its batch ran


@dataclass(eq=False)
class _Request:
    seq: BatchSeq
    prompt: list[int]
    info: PrefillInfo = field(default_factory=PrefillInfo)
    hit: Hit | None = None  # its prefix-cache blocks, held while it is in the batch
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # token ids, then None or an exception
    done: bool = False  # finished or abandoned: the loop drops its row at the next step


@dataclass
class EngineStats:
    """Counters for tests and benchmarks; gauges (queue, batch) are properties of the engine, and
    each batch formed goes to ``batch_listeners`` (the replica's metrics, the benchmark)."""

    steps: int = 0
    tokens: int = 0
    step_seconds: float = 0.0  # time in model steps
    slowdown_seconds: float = 0.0  # time added by the chaos slowdown


BatchListener = Callable[[int, float], None]  # (batch size, seconds its oldest request waited)
CacheListener = Callable[[int, int], None]  # (prompt tokens looked up, of those found cached)


class Engine:
    """Micro-batching generation over a :class:`~testbed.live.replica.runner.ModelRunner`.

    ``slowdown`` (>= 1) stretches every model step by that factor: the chaos hook for a slow or
    throttled replica. ``adaptive`` lets a :class:`DelayController` tune the batching delay
    toward ``latency_target`` seconds of end-to-end latency. The prefix cache holds
    ``prefix_cache_bytes`` of keys and values in blocks of ``block_size`` tokens (0 turns it off).
    """

    def __init__(
        self,
        model_dir: str | Path,
        quantize: str | None = None,
        max_batch_size: int = 8,
        max_delay: float = 0.01,
        adaptive: bool = False,
        threads: int | None = None,
        latency_target: float = 2.0,
        prefix_cache_bytes: int = DEFAULT_CAPACITY_BYTES,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected an integer >= 1, got {max_batch_size}")
        if max_delay < 0:
            raise ValueError(f"max_delay: expected seconds >= 0, got {max_delay}")
        if prefix_cache_bytes < 0:
            raise ValueError(f"prefix_cache_bytes: expected bytes >= 0, got {prefix_cache_bytes}")
        if block_size < 1:
            raise ValueError(f"block_size: expected a number of tokens >= 1, got {block_size}")
        self.model_dir = Path(model_dir)
        self.quantize = quantize
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.adaptive = adaptive
        self.threads = threads
        self.latency_target = latency_target
        # The spec the batcher is built from (testbed.policy.batching.MicroBatcher.from_spec, as
        # in simulation); Engine.from_spec keeps the scenario's own, field for field.
        self.batching = MicroBatching(
            policy="micro", max_batch_size=max_batch_size, max_queue_delay=max_delay, adaptive=adaptive,
            target_latency=latency_target if adaptive else None, prefix_caching=prefix_cache_bytes > 0,
            block_size=block_size,
        )
        self.prefix_cache_bytes = prefix_cache_bytes
        self.block_size = block_size
        self.prefix_cache: KVPrefixCache | None = None
        self.cache_listeners: list[CacheListener] = []
        self.slowdown = 1.0
        self.stats = EngineStats()
        self.batch_listeners: list[BatchListener] = []
        self.runner = None
        self.startup: dict[str, float] = {}  # phases of the last start (see start)
        self._batcher: MicroBatcher | None = None
        self._requests: dict[int, _Request] = {}
        self._keys = itertools.count()
        self._rows: list[_Request] = []
        self._kv = None
        self._next: list[int] = []
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_spec(cls, model_dir: str | Path, batching: MicroBatching, quantize: str | None = None,
                  threads: int | None = None, prefix_cache_bytes: int = DEFAULT_CAPACITY_BYTES) -> Engine:
        """An engine that batches and caches exactly as ``batching`` (a scenario's ``serving.batching``)
        says: its prefix cache is on with ``prefix_caching``, in blocks of its ``block_size``.
        ``prefix_cache_bytes`` is the memory the cache may hold, the replica's, not the scenario's."""
        engine = cls(model_dir, quantize, batching.max_batch_size, batching.max_queue_delay, batching.adaptive,
                     threads, batching.target_latency or 2.0, prefix_cache_bytes if batching.prefix_caching else 0,
                     batching.block_size)
        engine.batching = batching
        return engine

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (in the worker thread), warm it up, and start the scheduling loop."""
        from testbed.live.replica.runner import ModelRunner

        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine-step")
        began = time.perf_counter()
        self.runner = await loop.run_in_executor(
            self._executor, lambda: ModelRunner(self.model_dir, self.quantize, self.threads)
        )
        loaded = time.perf_counter()
        await loop.run_in_executor(self._executor, self._warm_up)
        # What calibration reads from /health: the model load (torch and transformers imports
        # included, as a replica's start pays them) and the warm-up, in seconds.
        self.startup = {"load_seconds": round(loaded - began, 4), "warmup_seconds": round(time.perf_counter() - loaded, 4)}
        blocks = self.prefix_cache_bytes // block_bytes(self.runner.model.config, self.block_size)
        self.prefix_cache = KVPrefixCache(self.block_size, blocks) if blocks else None
        # The batcher decides batches only: the cache it would model is this engine's real one.
        decisions = self.batching.model_copy(update={"prefix_caching": False})
        self._batcher = MicroBatcher.from_spec(decisions, self.max_batch_size * self.runner.max_context)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="engine-loop")

    def _warm_up(self) -> None:
        """One tiny prefill and decode, so the first request does not pay one-time costs."""
        kv, nxt = self.runner.prefill([[self.runner.pad_token_id]])
        self.runner.decode(kv, nxt)

    async def stop(self) -> None:
        """Stop the loop; every request still in flight gets :class:`EngineClosed`."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for req in list(self._requests.values()):
            self._end(req, EngineClosed("the engine stopped"))
        if self._batcher is not None:
            self._batcher.evict_all()
        self._rows, self._kv = [], None
        self.prefix_cache = None  # a restarted engine starts cold, as a restarted replica does
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def set_weights(self, weights: str) -> float:
        """Serve from ``weights`` ("float32" or "int8") from the next step on; return the seconds
        the switch took. It runs in the step thread, so it falls between two steps; a running
        batch carries on under the new weights. The prefix cache is emptied."""
        if self.runner is None or self._executor is None:
            raise EngineClosed("the engine is not running")

        def switch() -> float:
            started = time.perf_counter()
            self.runner.set_weights(weights)
            if self.prefix_cache is not None:
                self.prefix_cache.clear()
            return time.perf_counter() - started

        return await asyncio.get_running_loop().run_in_executor(self._executor, switch)

    @property
    def weights(self) -> str:
        """The weights the model runs on now: "float32" or "int8"."""
        return self.runner.weights if self.runner else ("int8" if self.quantize else "float32")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- gauges ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self._batcher.queued if self._batcher else 0

    @property
    def batch_size(self) -> int:
        """Sequences in the running batch."""
        return self._batcher.running if self._batcher else 0

    @property
    def batching_delay(self) -> float:
        """The current maximum batching delay (moves when ``adaptive``)."""
        return self._batcher.max_queue_delay if self._batcher else self.max_delay

    # -- requests ----------------------------------------------------------------------------

    def check_request(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise ValueError, with the numbers, if a request can never be served."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if prompt_tokens < 1:
            raise ValueError("the prompt is empty: it needs at least one token")
        limit = self.runner.max_context if self.runner else None
        if limit is not None and prompt_tokens + max_tokens > limit:
            raise ValueError(
                f"this model's maximum context length is {limit} tokens, but {prompt_tokens + max_tokens} "
                f"were requested ({prompt_tokens} in the prompt, {max_tokens} for the completion)"
            )

    async def generate(
        self, prompt_ids: Sequence[int], max_tokens: int, deadline: float | None = None,
        info: PrefillInfo | None = None,
    ) -> AsyncIterator[int]:
        """Yield the generated token ids as they are produced (EOS ends the stream, unyielded).

        ``deadline`` is on the ``time.monotonic()`` clock; passing it raises
        :class:`DeadlineExceeded` and frees the request's place in the batch. ``info``, if
        given, is filled in at the request's prefill (cached tokens, prefill time).
        """
        self.check_request(len(prompt_ids), max_tokens)
        if not self.running:
            raise EngineClosed("the engine is not running")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise DeadlineExceeded("the deadline passed before the request was queued")
        req = _Request(BatchSeq(next(self._keys), len(prompt_ids), max_tokens, now), list(prompt_ids),
                       info if info is not None else PrefillInfo())
        self._requests[req.seq.key] = req
        self._batcher.enqueue(req.seq, now)
        self._wake.set()
        try:
            while True:
                item = await self._next_item(req, deadline)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._abandon(req)

    async def _next_item(self, req: _Request, deadline: float | None):
        if not req.out.empty():
            return req.out.get_nowait()
        if deadline is None:
            return await req.out.get()
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(req.out.get(), remaining)
        except TimeoutError:
            raise DeadlineExceeded(
                f"deadline passed after {req.seq.generated} of {req.seq.output_tokens} tokens"
            ) from None

    def _abandon(self, req: _Request) -> None:
        """The consumer is gone (done, deadline, disconnect): take the request out of the batcher."""
        if not req.done:
            req.done = True
            self._batcher.cancel(req.seq)
        self._requests.pop(req.seq.key, None)

    def _end(self, req: _Request, outcome: BaseException | None = None) -> None:
        """Finish ``req``: its consumer sees the end of the stream, or ``outcome`` raised."""
        if not req.done:
            req.done = True
            req.out.put_nowait(outcome)
        self._requests.pop(req.seq.key, None)

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            iteration = self._batcher.next_iteration(now)
            if iteration is None:
                await self._sleep_until(self._batcher.wake_time())
                continue
            try:
                if iteration.prefill:
                    self._rows = [self._requests[s.key] for s in iteration.prefill]
                    self._on_batch(self._rows, now)
                    started = time.perf_counter()
                    self._kv, tokens = await self._step(self._prefill, self._rows)
                    for req in self._rows:
                        req.info.prefill_seconds = time.perf_counter() - started
                else:
                    tokens = await self._step(self.runner.decode, self._kv, self._next)
            except Exception as exc:  # a failed step fails its batch, not the replica
                self._fail_batch(RuntimeError(f"model step failed: {exc}"))
                continue
            progress = self._batcher.complete(iteration, 1, time.monotonic())
            self._deliver(tokens, {s.key for s in progress.finished})

    async def _sleep_until(self, wake: float | None) -> None:
        self._wake.clear()
        timeout = None if wake is None else max(0.0, wake - time.monotonic())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _step(self, fn, *args):
        """Run one model step in the worker thread; with a slowdown, stretch it by sleeping."""
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        elapsed = time.perf_counter() - started
        self.stats.steps += 1
        self.stats.step_seconds += elapsed
        if self.slowdown > 1.0:
            extra = elapsed * (self.slowdown - 1.0)
            self.stats.slowdown_seconds += extra
            await asyncio.sleep(extra)
        return result

    def _prefill(self, rows: list[_Request]):
        """Prefill ``rows`` from whatever the prefix cache holds of them, then cache their blocks."""
        prompts = [r.prompt for r in rows]
        cache = self.prefix_cache
        if cache is None:
            return self.runner.prefill(prompts)
        hits = [cache.acquire(p) for p in prompts]
        for req, hit in zip(rows, hits):
            req.hit = hit
        kv, tokens = self.runner.prefill(prompts, hits)
        for row, (req, hit) in enumerate(zip(rows, hits)):
            req.info.cached_tokens = hit.tokens
            cache.store(req.prompt, hit, lambda start, stop, row=row: kv.prompt_kv(row, start, stop))
            for listener in self.cache_listeners:
                listener(len(req.prompt), hit.tokens)
        return kv, tokens

    def _on_batch(self, rows: list[_Request], now: float) -> None:
        delay = now - min(r.seq.arrival for r in rows)
        for listener in self.batch_listeners:
            listener(len(rows), delay)

    def _deliver(self, tokens: list[int], finished: set[int]) -> None:
        """Hand each row its token; drop rows that finished, hit EOS or were abandoned."""
        eos = self.runner.eos_token_ids
        keep: list[int] = []
        for index, (req, token) in enumerate(zip(self._rows, tokens)):
            if req.done:
                continue
            if token in eos:
                if req.seq.key not in finished:
                    self._batcher.cancel(req.seq)
                self._end(req)
                continue
            req.out.put_nowait(token)
            self.stats.tokens += 1
            if req.seq.key in finished:
                self._end(req)
                continue
            keep.append(index)
        kept = set(keep)
        self._release([req for index, req in enumerate(self._rows) if index not in kept])
        if keep:
            self._kv.keep(keep)
            self._rows = [self._rows[i] for i in keep]
            self._next = [tokens[i] for i in keep]
        else:
            self._rows, self._kv, self._next = [], None, []

    def _fail_batch(self, error: BaseException) -> None:
        for req in self._rows:
            self._batcher.cancel(req.seq)
            self._end(req, error)
        self._release(self._rows)
        self._rows, self._kv, self._next = [], None, []

    def _release(self, rows: list[_Request]) -> None:
        """Rows left the batch: their prefix-cache blocks become evictable."""
        if self.prefix_cache is None:
            return
        for req in rows:
            if req.hit is not None:
                self.prefix_cache.release(req.hit)
                req.hit = None
