"""A model replica in simulated time: one batcher, one performance model, SimPy timeouts.

The replica is a small state machine rather than a SimPy process so that it can be cheap: an
iteration (or a whole stretch of identical decode steps) is one ``env.timeout`` whose callback
is :meth:`SimReplica._on_iteration_end`. When a new request arrives during a stretch and the
batcher wants it admitted, the stretch is cut at the end of the step in progress by scheduling
a new, earlier timeout; the old one is recognised as stale by its ticket and ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from testbed.perf import PerfModel
from testbed.policy.batching import Batcher, Iteration, Sequence

TokenCallback = Callable[[Sequence, float], None]


class SimReplica:
    """Runs a :class:`Batcher` against a :class:`PerfModel`; exposes the router's view of it."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        region: str,
        tier: str,
        batcher: Batcher,
        perf: PerfModel,
        on_first_token: TokenCallback,
        on_finish: TokenCallback,
    ) -> None:
        self.env = env
        self.index = index
        self.region = region
        self.tier = tier
        self.batcher = batcher
        self.perf = perf
        self.on_first_token = on_first_token
        self.on_finish = on_finish
        # The router's view (see testbed.policy.routing.ReplicaView).
        self.outstanding = 0
        self.available = True
        # Accounting for the fleet time series.
        self.busy_time = 0.0
        self.completed = 0
        self.tokens_out = 0
        self._iteration: Iteration | None = None
        self._started = 0.0
        self._ends = 0.0
        self._ticket = 0
        self._wake_at: float | None = None

    @property
    def busy(self) -> bool:
        return self._iteration is not None

    def submit(self, seq: Sequence) -> None:
        """A request reaches this replica: queue it and make sure the engine is working."""
        wants_cut = self.batcher.enqueue(seq, self.env.now)
        if self._iteration is None:
            self._start_next()
        elif wants_cut and not self._iteration.prefill and self._iteration.steps > 1:
            self._cut_stretch()

    def busy_time_until(self, now: float) -> float:
        """Busy seconds so far, counting the running iteration up to ``now``."""
        running = now - self._started if self._iteration is not None else 0.0
        return self.busy_time + running

    def _start_next(self) -> None:
        now = self.env.now
        iteration = self.batcher.next_iteration(now)
        if iteration is None:
            self._iteration = None
            self._schedule_wake()
            return
        if iteration.prefill:
            duration = self.perf.iteration_time(
                iteration.prefill_tokens, iteration.decode_seqs, iteration.context_tokens
            )
        else:
            duration = self.perf.decode_stretch_time(iteration.decode_seqs, iteration.context_tokens, iteration.steps)
        self._iteration = iteration
        self._wake_at = None
        self._started = now
        self._ends = now + duration
        self._schedule(duration, self._on_iteration_end)

    def _cut_stretch(self) -> None:
        """End the running decode stretch after the step in progress, so the batch can change."""
        iteration = self._iteration
        assert iteration is not None
        batch, context = iteration.decode_seqs, iteration.context_tokens
        steps = self.perf.steps_within(batch, context, self.env.now - self._started) + 1
        if steps >= iteration.steps:
            return
        iteration.steps = steps
        ends = self._started + self.perf.decode_stretch_time(batch, context, steps)
        self._ends = max(ends, self.env.now)
        self._schedule(self._ends - self.env.now, self._on_iteration_end)

    def _schedule(self, delay: float, handler: Callable[[int], None]) -> None:
        self._ticket += 1
        ticket = self._ticket
        event = self.env.timeout(delay)
        event.callbacks.append(lambda _event: handler(ticket))

    def _schedule_wake(self) -> None:
        wake = self.batcher.wake_time()
        if wake is not None and wake != self._wake_at:
            self._wake_at = wake
            self._schedule(max(0.0, wake - self.env.now), self._on_wake)

    def _on_wake(self, ticket: int) -> None:
        if ticket == self._ticket and self._iteration is None:
            self._wake_at = None
            self._start_next()

    def _on_iteration_end(self, ticket: int) -> None:
        if ticket != self._ticket:
            return  # a stretch that was cut short
        iteration = self._iteration
        assert iteration is not None
        now = self.env.now
        self.busy_time += now - self._started
        progress = self.batcher.complete(iteration, iteration.steps, now)
        for seq in progress.first_token:
            self.on_first_token(seq, now)
        for seq in progress.finished:
            self.outstanding -= 1
            self.completed += 1
            self.tokens_out += seq.output_tokens
            self.on_finish(seq, now)
        self._start_next()
