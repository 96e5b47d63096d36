"""Batching policies: which sequences a replica runs in its next engine iteration.

Two families, each a small class with the same event methods so a driver (the SimPy replica or
the live engine loop) can run either:

* :class:`ContinuousBatcher` — iteration-level scheduling in the style of vLLM: new sequences
  join the running batch at any iteration, bounded by ``max_num_seqs``, a prefill token budget
  and the KV-cache capacity; when the cache runs out, the most recently admitted sequence is
  preempted and later recomputed.
* :class:`MicroBatcher` — request-level dynamic batching in the style of Triton's dynamic
  batcher and Ray Serve's ``@serve.batch``: wait up to ``max_queue_delay`` for up to
  ``max_batch_size`` requests, then run that batch to completion before starting another. Its
  adaptive mode tunes the delay against a latency target from observed latencies.

The driver's loop is: ``enqueue`` arrivals; ask ``next_iteration``; time it; report it with
``complete``; repeat. When nothing can run, ``wake_time`` says when to ask again (a batching
delay expiring). To let drivers skip one event per decode step, an :class:`Iteration` may cover
``steps`` identical decode steps: the batch cannot change until one of them finishes — unless a
new arrival asks to cut the stretch short (``enqueue`` returns True).

Both planes build their batcher from the scenario's ``serving.batching`` with
:func:`batcher_from_spec` (each class's ``from_spec``, found by ``policy`` in :data:`BATCHERS`),
so the simulated replica and the live engine cannot read the spec differently; only the KV
capacity, which depends on the device (or the loaded model), comes from the driver.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from testbed.policy.prefix_cache import Prefix, PrefixCache
from testbed.spec import ContinuousBatching, MicroBatching


@dataclass(slots=True, eq=False)
class Sequence:
    """A request as a replica's scheduler sees it.

    ``generated`` is exact whenever the sequence is not running; while it runs, a batcher may
    keep its progress implicitly (see :class:`ContinuousBatcher`) and settle it on exit.
    """

    key: int  # the driver's handle for this unit of work (the simulator uses attempt ids)
    prompt_tokens: int
    output_tokens: int
    arrival: float
    generated: int = 0
    finish_at: int = 0  # batcher-private: the batch clock at which it has all its tokens
    prefix: Prefix | None = None  # its prompt's block chain, when the replica caches prefixes
    cached: int = 0  # prompt tokens its latest prefill found in the prefix cache
    held: int = 0  # batcher-private: prefix-cache blocks it references
    computed: int = 0  # batcher-private, chunked prefill: context tokens prefilled so far

    @property
    def context(self) -> int:
        """KV-cache tokens the sequence holds once (re)prefilled: prompt plus tokens generated."""
        return self.prompt_tokens + self.generated

    @property
    def remaining(self) -> int:
        return self.output_tokens - self.generated


@dataclass(slots=True)
class Iteration:
    """What the engine runs next: prefill some sequences and advance the decoding ones.

    ``prefill`` sequences have their context computed and emit one token; the ``decode_seqs``
    already running emit one token per step. With a prefill the iteration is one step; without
    one it may be a stretch of ``steps`` decode steps over an unchanging batch.

    ``chunks`` are the tokens each prefill computes this iteration (what the perf model charges):
    a sequence's context less its cached prefix, or with chunked prefill one chunk of it, in which
    case a sequence whose last chunk is not yet reached computes without being in ``prefill``.
    Empty means each ``prefill`` sequence computes its whole context.
    """

    prefill: list[Sequence]
    decode_seqs: int
    steps: int
    prefill_tokens: int
    context_tokens: int
    chunks: list[int] = field(default_factory=list)

    @property
    def computes(self) -> bool:
        """Whether the iteration computes prompt tokens (one step) rather than only decoding."""
        return bool(self.prefill or self.chunks)

    def prefill_lengths(self) -> list[int]:
        """Tokens computed per prompt, for the perf model's prefill charge."""
        return self.chunks or [seq.context for seq in self.prefill]


@dataclass(slots=True)
class Progress:
    """What an iteration produced: sequences that emitted their first token, and those done."""

    first_token: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)


class Batcher(Protocol):
    def fits(self, seq: Sequence) -> bool:
        """Whether the replica could ever serve ``seq`` (its full context fits the KV cache)."""

    def enqueue(self, seq: Sequence, now: float) -> bool:
        """Queue ``seq``; True if the driver should cut a running decode stretch short for it."""

    def next_iteration(self, now: float) -> Iteration | None:
        """The next iteration to run, or None if nothing can run now."""

    def complete(self, iteration: Iteration, steps_done: int, now: float) -> Progress:
        """Account for ``steps_done`` steps of ``iteration`` having run."""

    def wake_time(self) -> float | None:
        """When to call ``next_iteration`` again though no event arrives (None: only on events)."""

    def evict_all(self) -> list[Sequence]:
        """Remove and return every queued and running sequence (the replica died)."""

    def cancel(self, seq: Sequence) -> None:
        """Drop ``seq`` wherever it is (its request was answered elsewhere or gave up); a sequence
        that already finished or was evicted is no longer anywhere, and that is fine."""

    def set_kv_capacity(self, tokens: int) -> None:
        """Change the KV-cache capacity (memory pressure); running work adapts at the next step."""

    @property
    def queued(self) -> int: ...

    @property
    def running(self) -> int: ...

    kv_capacity: int  # KV-cache tokens it may hold

    @property
    def kv_used(self) -> int:
        """KV-cache tokens held now (an autoscaler's utilisation metric reads it)."""


class ContinuousBatcher:
    """vLLM-style scheduler: FCFS admission each iteration, preemption by recompute.

    Every running sequence gains one token per step, so progress is kept as one batch clock
    (tokens emitted per running sequence since the batcher started) instead of a counter per
    sequence: a sequence admitted at clock ``c`` with ``g`` tokens already generated finishes at
    ``c + output - g``, found with a heap. An iteration then costs O(sequences that join or
    leave), not O(batch), which is what lets the simulator run a million requests in seconds.

    With a :class:`~testbed.policy.prefix_cache.PrefixCache`, an admitted sequence references its
    prompt's cached blocks and its prefill computes only the rest; unreferenced cached blocks are
    fitted into the KV memory the running sequences leave free. (Admission still counts each
    running sequence's whole context: blocks two running sequences share are not credited.)

    ``chunked_prefill`` (vLLM's default scheduler, Sarathi-Serve): each iteration has one budget
    of ``max_num_batched_tokens`` for decode tokens first and then prompt chunks, so a long
    prompt is spread over several iterations that keep every running sequence decoding instead
    of stalling them all for its whole prefill. A sequence whose prefill is under way holds its
    KV memory and a batch slot but emits its first token only with its last chunk.
    """

    @classmethod
    def from_spec(cls, spec: ContinuousBatching, kv_capacity_tokens: int) -> ContinuousBatcher:
        cache = PrefixCache(kv_capacity_tokens, spec.block_size) if spec.prefix_caching else None
        return cls(spec.max_num_seqs, spec.max_num_batched_tokens, kv_capacity_tokens, cache, spec.chunked_prefill)

    def __init__(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        kv_capacity_tokens: int,
        cache: PrefixCache | None = None,
        chunked_prefill: bool = False,
    ) -> None:
        if kv_capacity_tokens < 1:
            raise ValueError("kv_capacity_tokens must be positive")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_capacity = kv_capacity_tokens
        self.cache = cache
        self.chunked = chunked_prefill
        self.preemptions = 0
        self._clock = 0
        self._waiting: deque[Sequence] = deque()
        self._running: dict[int, Sequence] = {}  # key -> sequence, in admission order
        self._finishes: list[tuple[int, int]] = []  # heap of (finish_at, key); stale entries skipped
        self._kv_base = 0  # sum over running of (context at admission - clock at admission)
        self._prefilling: deque[Sequence] = deque()  # chunked: admitted, prompt partly computed
        self._kv_prefilling = 0  # the KV memory they hold (their whole context each)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running) + len(self._prefilling)

    @property
    def _running_kv(self) -> int:
        """KV tokens held by decoding sequences: each holds its context, growing a token a step."""
        return self._kv_base + len(self._running) * self._clock

    @property
    def kv_used(self) -> int:
        """KV tokens held by the batch: decoding sequences and prefills under way."""
        return self._kv_base + len(self._running) * self._clock + self._kv_prefilling  # _running_kv, inlined: hot

    def fits(self, seq: Sequence) -> bool:
        return seq.prompt_tokens + seq.output_tokens <= self.kv_capacity

    def enqueue(self, seq: Sequence, now: float) -> bool:
        self._waiting.append(seq)
        return self.running < self.max_num_seqs and self.kv_used + seq.context < self.kv_capacity

    def next_iteration(self, now: float) -> Iteration | None:
        if self.cache is not None:
            self.cache.fit(self.kv_capacity - self.kv_used)
        if self.chunked:
            return self._chunked_iteration()
        decode_seqs, context = len(self._running), self.kv_used
        prefill, tokens = self._admit(room_for_decode=decode_seqs)
        if prefill:
            if self.cache is None:
                return Iteration(prefill, decode_seqs, 1, tokens, context)
            chunks = [s.context - s.cached for s in prefill]
            return Iteration(prefill, decode_seqs, 1, sum(chunks), context, chunks)
        if not self._running:
            return None
        steps = self._decode_steps()
        return Iteration([], len(self._running), steps, 0, self.kv_used)

    def _acquire(self, seq: Sequence) -> None:
        """Look the prompt up in the prefix cache and reference its blocks."""
        if self.cache is not None and seq.prefix is not None:
            seq.cached, seq.held = self.cache.acquire(seq.prefix, seq.prompt_tokens)
        else:
            seq.cached = 0

    def _release(self, seq: Sequence) -> None:
        if seq.held and self.cache is not None and seq.prefix is not None:
            self.cache.release(seq.prefix, seq.held)
        seq.held = 0

    def _to_compute(self, seq: Sequence) -> int:
        """Prefill tokens ``seq`` would compute if admitted now (its cached prefix skipped)."""
        if self.cache is None or seq.prefix is None:
            return seq.context
        return seq.context - self.cache.match(seq.prefix, seq.prompt_tokens)

    def _admit(self, room_for_decode: int) -> tuple[list[Sequence], int]:
        """Admit waiting sequences in order while slots, prefill budget and KV cache allow;
        returns them and their contexts' total.

        Each admitted sequence and each running one needs a KV slot for the token this
        iteration emits, hence the ``+ 1`` reservations.
        """
        admitted: list[Sequence] = []
        budget = self.max_num_batched_tokens
        kv_used = start = self.kv_used
        caching = self.cache is not None
        waiting = self._waiting
        while waiting and len(self._running) < self.max_num_seqs:
            seq = waiting[0]
            need = seq.prompt_tokens + seq.generated  # its context
            # A cached prefix only lowers what a prefill computes: look it up only when it matters.
            compute = self._to_compute(seq) if caching and need > budget else need
            over_budget = compute > budget and admitted  # the first prompt may exceed the budget alone
            if over_budget or kv_used + need + len(admitted) + 1 + room_for_decode > self.kv_capacity:
                break
            waiting.popleft()
            if caching:
                self._acquire(seq)
            budget -= need - seq.cached
            kv_used += need
            self._start(seq)
            admitted.append(seq)
        return admitted, kv_used - start

    def _chunked_iteration(self) -> Iteration | None:
        """Decode tokens first, then chunks of prefills under way, then new prefills, in one budget."""
        self._make_room()
        decode_seqs, context = len(self._running), self._running_kv
        budget = self.max_num_batched_tokens - decode_seqs
        prefill: list[Sequence] = []
        chunks: list[int] = []
        for seq in list(self._prefilling):
            if budget <= 0:
                break
            budget -= self._chunk(seq, budget, prefill, chunks)
        kv_used = self.kv_used
        while budget > 0 and self._waiting and self.running < self.max_num_seqs:
            seq = self._waiting[0]
            if kv_used + seq.context + len(prefill) + 1 + decode_seqs > self.kv_capacity:
                break
            self._waiting.popleft()
            self._acquire(seq)
            seq.computed = seq.cached
            self._prefilling.append(seq)
            self._kv_prefilling += seq.context
            kv_used += seq.context
            budget -= self._chunk(seq, budget, prefill, chunks)
        if chunks:
            return Iteration(prefill, decode_seqs, 1, sum(chunks), context, chunks)
        if not self._running:
            return None
        steps = self._decode_steps()
        if self._prefilling:
            steps = 1  # a prefill waits for budget: re-plan after every step
        return Iteration([], len(self._running), steps, 0, self._running_kv)

    def _chunk(self, seq: Sequence, budget: int, prefill: list[Sequence], chunks: list[int]) -> int:
        """Compute the next chunk of ``seq``'s prefill; with its last chunk it joins the batch."""
        chunk = min(budget, seq.context - seq.computed)
        seq.computed += chunk
        chunks.append(chunk)
        if seq.computed >= seq.context:
            self._prefilling.remove(seq)
            self._kv_prefilling -= seq.context
            self._start(seq)
            prefill.append(seq)
        return chunk

    def _make_room(self) -> None:
        """Preempt the newest decoding sequences until each running one has a KV slot for its token."""
        while self._running and self.kv_capacity - self.kv_used < len(self._running):
            self._preempt()

    def _preempt(self) -> None:
        victim = next(reversed(self._running.values()))
        self._stop(victim)
        self._waiting.appendleft(victim)
        self.preemptions += 1

    def _start(self, seq: Sequence) -> None:
        seq.finish_at = self._clock + seq.output_tokens - seq.generated  # clock + remaining
        self._kv_base += seq.prompt_tokens + seq.generated - self._clock  # context - clock
        self._running[seq.key] = seq
        heapq.heappush(self._finishes, (seq.finish_at, seq.key))

    def _stop(self, seq: Sequence) -> None:
        """Take ``seq`` out of the batch, settling its token count from the clock."""
        del self._running[seq.key]
        seq.generated = seq.output_tokens - (seq.finish_at - self._clock)
        self._kv_base -= seq.context - self._clock
        if seq.held:
            self._release(seq)

    def _first_finish(self) -> int:
        """Clock value at which the next running sequence completes (dropping stale heap entries)."""
        finishes = self._finishes
        while True:
            finish_at, key = finishes[0]
            seq = self._running.get(key)
            if seq is not None and seq.finish_at == finish_at:
                return finish_at
            heapq.heappop(finishes)

    def _decode_steps(self) -> int:
        """Steps before the batch must change: a sequence finishes or the KV cache fills.

        When not even one step fits, preempt the newest sequences (vLLM's recompute mode): they
        go back to the front of the queue and lose their cache, keeping the tokens already sent.
        """
        while True:
            kv_steps = (self.kv_capacity - self.kv_used) // len(self._running)
            if kv_steps >= 1:
                return min(kv_steps, self._first_finish() - self._clock)
            self._preempt()

    def complete(self, iteration: Iteration, steps_done: int, now: float) -> Progress:
        progress = Progress()
        for seq in iteration.prefill:
            if seq.generated == 0:
                progress.first_token.append(seq)
        self._clock += steps_done
        while self._running and self._first_finish() <= self._clock:
            _, key = heapq.heappop(self._finishes)
            seq = self._running[key]
            self._stop(seq)
            progress.finished.append(seq)
        return progress

    def wake_time(self) -> float | None:
        return None

    def cancel(self, seq: Sequence) -> None:
        if seq.key in self._running:
            self._stop(seq)
        elif seq in self._prefilling:
            self._prefilling.remove(seq)
            self._kv_prefilling -= seq.context
            self._release(seq)
        elif seq in self._waiting:
            self._waiting.remove(seq)

    def set_kv_capacity(self, tokens: int) -> None:
        self.kv_capacity = max(1, tokens)
        if self.cache is not None:
            self.cache.fit(self.kv_capacity - self.kv_used)

    def evict_all(self) -> list[Sequence]:
        running = list(self._running.values())
        for seq in running:
            self._stop(seq)
        evicted = running + list(self._prefilling) + list(self._waiting)
        self._waiting, self._finishes, self._prefilling, self._kv_prefilling = deque(), [], deque(), 0
        if self.cache is not None:
            self.cache.clear()  # the process and its KV memory are gone
        return evicted


class DelayController:
    """Adaptive batching delay: additive increase while latency has headroom, halve when over.

    Triton's dynamic batcher takes a fixed ``max_queue_delay``; a fixed value is either too
    short at low load (batches of one) or too long at high load. This controller steers the
    smoothed end-to-end latency of completed requests toward ``target`` (AIMD, as in TCP).
    """

    def __init__(self, initial: float, target: float, smoothing: float = 0.2) -> None:
        self.delay = initial
        self.target = target
        self.smoothing = smoothing
        self.step = target / 50.0
        self.ceiling = target / 2.0
        self.latency: float | None = None

    def observe(self, latency: float) -> None:
        self.latency = latency if self.latency is None else (1 - self.smoothing) * self.latency + self.smoothing * latency
        if self.latency > self.target:
            self.delay /= 2.0
        elif self.latency < 0.8 * self.target:
            self.delay = min(self.ceiling, self.delay + self.step)


class MicroBatcher:
    """Dynamic batching: a batch forms under a size/delay rule and runs to completion.

    Sequences that finish early leave the batch, but no new sequence joins until the whole batch
    is done: the static-batching cost that continuous batching removes.

    With a :class:`~testbed.policy.prefix_cache.PrefixCache` (``prefix_caching``), a batch's
    sequences look their prompts up as the batch forms, and the prefill computes only what is not
    cached — what the built-in engine does with real keys and values. They hold their blocks
    until they leave the batch; unreferenced blocks live in the KV memory the batch leaves free.
    """

    @classmethod
    def from_spec(cls, spec: MicroBatching, kv_capacity_tokens: int) -> MicroBatcher:
        """The spec's batcher; adaptive mode steers ``max_queue_delay`` toward ``target_latency``."""
        controller = None
        if spec.adaptive:
            assert spec.target_latency is not None  # the spec enforces it
            controller = DelayController(spec.max_queue_delay, spec.target_latency)
        cache = PrefixCache(kv_capacity_tokens, spec.block_size) if spec.prefix_caching else None
        return cls(spec.max_batch_size, spec.max_queue_delay, kv_capacity_tokens, controller, cache)

    def __init__(
        self,
        max_batch_size: int,
        max_queue_delay: float,
        kv_capacity_tokens: int,
        controller: DelayController | None = None,
        cache: PrefixCache | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.kv_capacity = kv_capacity_tokens
        self.controller = controller
        self.cache = cache
        self._fixed_delay = max_queue_delay
        self._waiting: deque[Sequence] = deque()
        self._batch: list[Sequence] = []

    @property
    def max_queue_delay(self) -> float:
        return self.controller.delay if self.controller else self._fixed_delay

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._batch)

    @property
    def kv_used(self) -> int:
        """KV tokens the running batch holds: each sequence reserves its prompt and whole output."""
        return sum(s.prompt_tokens + s.output_tokens for s in self._batch)

    def fits(self, seq: Sequence) -> bool:
        return seq.prompt_tokens + seq.output_tokens <= self.kv_capacity

    def enqueue(self, seq: Sequence, now: float) -> bool:
        self._waiting.append(seq)
        return False

    def next_iteration(self, now: float) -> Iteration | None:
        if self._batch:
            return Iteration(
                prefill=[],
                decode_seqs=len(self._batch),
                steps=min(s.remaining for s in self._batch),
                prefill_tokens=0,
                context_tokens=sum(s.context for s in self._batch),
            )
        if not self._waiting:
            return None
        full = len(self._waiting) >= self.max_batch_size
        if not full and now < self._waiting[0].arrival + self.max_queue_delay:
            return None
        self._batch = self._take_batch()
        chunks = self._look_up(self._batch) if self.cache is not None else []
        return Iteration(
            prefill=list(self._batch),
            decode_seqs=0,
            steps=1,
            prefill_tokens=sum(chunks) if chunks else sum(s.context for s in self._batch),
            context_tokens=0,
            chunks=chunks,
        )

    def _look_up(self, batch: list[Sequence]) -> list[int]:
        """Reference each prompt's cached blocks; the tokens each prefill still computes.

        The batch is prefilled in one step, so a prompt reuses only what was cached before it
        (two prompts of one batch sharing a new system prompt both compute it), as the built-in
        engine does.
        """
        cache = self.cache
        assert cache is not None
        before = [cache.match(s.prefix, s.prompt_tokens) if s.prefix is not None else 0 for s in batch]
        chunks = []
        for seq, found in zip(batch, before):
            if seq.prefix is not None:
                seq.cached, seq.held = cache.acquire(seq.prefix, seq.prompt_tokens, at_most=found)
            else:
                seq.cached = 0
            chunks.append(seq.context - seq.cached)
        # Unreferenced blocks keep only the memory the batch's reservations leave free.
        cache.fit(self.kv_capacity - self.kv_used)
        return chunks

    def _release(self, seqs: list[Sequence]) -> None:
        """Sequences left the batch: their blocks become evictable."""
        if self.cache is None:
            return
        for seq in seqs:
            if seq.held and seq.prefix is not None:
                self.cache.release(seq.prefix, seq.held)
            seq.held = 0

    def _take_batch(self) -> list[Sequence]:
        """Up to max_batch_size sequences in arrival order whose full contexts fit the cache."""
        batch: list[Sequence] = []
        reserved = 0
        while self._waiting and len(batch) < self.max_batch_size:
            need = self._waiting[0].prompt_tokens + self._waiting[0].output_tokens
            if batch and reserved + need > self.kv_capacity:
                break
            reserved += need
            batch.append(self._waiting.popleft())
        return batch

    def complete(self, iteration: Iteration, steps_done: int, now: float) -> Progress:
        progress = Progress()
        for seq in iteration.prefill:
            if seq.generated == 0:
                progress.first_token.append(seq)
        for seq in self._batch:
            seq.generated += steps_done
        done = [s for s in self._batch if s.remaining <= 0]
        if done:
            self._batch = [s for s in self._batch if s.remaining > 0]
            self._release(done)
            progress.finished.extend(done)
            if self.controller:
                for seq in done:
                    self.controller.observe(now - seq.arrival)
        return progress

    def wake_time(self) -> float | None:
        if self._batch or not self._waiting:
            return None
        return self._waiting[0].arrival + self.max_queue_delay

    def cancel(self, seq: Sequence) -> None:
        if seq in self._batch:
            self._batch.remove(seq)
            self._release([seq])
        elif seq in self._waiting:
            self._waiting.remove(seq)

    def set_kv_capacity(self, tokens: int) -> None:
        self.kv_capacity = max(1, tokens)
        if self.cache is not None:
            self.cache.fit(self.kv_capacity - self.kv_used)

    def evict_all(self) -> list[Sequence]:
        evicted = self._batch + list(self._waiting)
        self._batch, self._waiting = [], deque()
        if self.cache is not None:
            self.cache.clear()  # the process and its KV memory are gone
            for seq in evicted:
                seq.held = 0
        return evicted


# serving.batching.policy -> the batcher class that carries it out, in both planes.
BATCHERS: dict[str, Callable[[Any, int], Batcher]] = {
    "continuous": ContinuousBatcher.from_spec,
    "micro": MicroBatcher.from_spec,
}


def batcher_from_spec(spec: ContinuousBatching | MicroBatching, kv_capacity_tokens: int) -> Batcher:
    """The batcher ``spec`` describes, over a KV cache of ``kv_capacity_tokens``."""
    return BATCHERS[spec.policy](spec, kv_capacity_tokens)
