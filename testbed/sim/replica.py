"""A model replica in simulated time: one batcher, one performance model, SimPy timeouts.

The replica is a small state machine rather than a SimPy process so that it can be cheap: an
iteration (or a whole stretch of identical decode steps) is one :class:`~testbed.sim.timer.Timer`
whose callback is :meth:`SimReplica._on_iteration_end`. When a new request arrives during a
stretch and the batcher wants it admitted, the stretch is cut at the end of the step in progress
by scheduling a new, earlier timer and cancelling the old one, which then fires nothing.

Faults act on the replica through a handful of methods: :meth:`crash` (the process dies and its
work is lost), :meth:`hang` / :meth:`resume` (a gray failure: work freezes but requests are still
accepted), :meth:`set_speed` (throttling) and the batcher's KV capacity (memory pressure).

Replicas that share a machine's cores (:class:`~testbed.sim.host.SharedHost`) also run at a
*share* of it, which changes whenever another of them starts or stops working: the iteration in
progress is re-timed at once — the processor sharing an operating system does. A replica runs at
``speed * share``; alone on its cores (no host) its share is always 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import simpy

from testbed.perf import PerfModel
from testbed.policy.batching import Batcher, Iteration, Sequence
from testbed.sim.timer import Callback, Timer

if TYPE_CHECKING:
    from testbed.sim.host import SharedHost

TokenCallback = Callable[[Sequence, float], None]


class SimReplica:
    """Runs a :class:`Batcher` against a :class:`PerfModel` in simulated time."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        region: str,
        batcher: Batcher,
        perf: PerfModel,
        on_first_token: TokenCallback,
        on_finish: TokenCallback,
    ) -> None:
        self.env = env
        self.index = index
        self.region = region
        self.batcher = batcher
        self.perf = perf
        self.on_first_token = on_first_token
        self.on_finish = on_finish
        self.alive = True
        # Down but its host answers: a connection is refused at once (the process died on a
        # running machine, or is starting up) rather than timing out as for a machine gone.
        self.refusing = False
        self.hung = False
        self.speed = 1.0
        self.error_rate = 0.0  # share of attempts an error injection fails on arrival (the fault state's)
        self.share = 1.0  # of its host's cores (see SharedHost)
        self.host: SharedHost | None = None
        # Elastic fleets (testbed/sim/elastic.py): a parked slot holds no replica, so a repair
        # does not bring it back; ``boost`` is a degradation step's speed-up (a quantized variant).
        self.parked = False
        self.boost = 1.0
        # Accounting for the fleet time series.
        self.busy_time = 0.0
        self.completed = 0
        self.tokens_out = 0
        self._iteration: Iteration | None = None
        self._started = 0.0  # when the running iteration started, or was last re-timed
        self._done = 0.0  # unit-speed seconds of it done before _started (re-timings)
        self._ends = 0.0
        self._frozen_for = 0.0  # time left of the iteration a hang interrupted
        self._timer: Timer | None = None  # the running iteration's end, or a batching delay's wake
        self._startup_timer: Timer | None = None  # a restarted process begins serving
        self._wake_at: float | None = None

    @property
    def busy(self) -> bool:
        return self._iteration is not None

    @property
    def working(self) -> bool:
        """Using its cores right now: an iteration is running and the process is not frozen."""
        return self._iteration is not None and not self.hung

    @property
    def holds_work(self) -> bool:
        return bool(self.batcher.queued or self.batcher.running)

    def submit(self, seq: Sequence) -> None:
        """A request reaches this replica: queue it and make sure the engine is working."""
        wants_cut = self.batcher.enqueue(seq, self.env.now)
        if self.hung:
            return
        if self._iteration is None:
            self._start_next()
        elif wants_cut and not self._iteration.computes and self._iteration.steps > 1:
            self._cut_stretch()

    def cancel(self, seq: Sequence) -> None:
        """Drop work whose request no longer needs it (answered elsewhere, or out of time)."""
        self.batcher.cancel(seq)

    def busy_time_until(self, now: float) -> float:
        """Busy seconds so far, counting the running iteration up to ``now``."""
        running = now - self._started if self._iteration is not None and not self.hung else 0.0
        return self.busy_time + running

    # ------------------------------------------------------------------ faults

    def crash(self, refusing: bool = False) -> list[Sequence]:
        """The process dies: the iteration in progress and every queued request are lost.

        ``refusing``: the host is still up, so new connections are refused rather than unanswered.
        """
        self._account_busy()
        self.alive = False
        self.refusing = refusing
        self.hung = False
        self._iteration = None
        self._cancel_timers()
        self._wake_at = None
        lost = self.batcher.evict_all()
        self._host_changed()
        return lost

    def restart(self) -> None:
        """Back in service with an empty batch once the process has started (after repair).

        A real replica is not serving the moment its node is repaired: the process starts and
        loads the model (seconds on a CPU, minutes for a large model's weights on a GPU), so the
        perf model's ``startup_seconds`` pass before it answers. A crash during them starts over.
        """
        if self.parked:
            return
        startup = self.perf.startup_seconds
        if startup <= 0:
            self.alive, self.refusing = True, False
            return
        self.refusing = True  # the machine is back; nothing listens on the port yet
        self._cancel_timers()
        self._startup_timer = Timer(self.env, startup, self._started_up)

    def _started_up(self, _timer: Timer) -> None:
        self._startup_timer = None
        self.alive, self.refusing = True, False

    def park(self) -> list[Sequence]:
        """The slot is emptied (scaled down, drained, preempted): what it still ran is returned."""
        lost = self.crash()
        self.parked = True
        return lost

    def activate(self) -> None:
        """A replica has come up in this slot (its lifecycle reached serving)."""
        self.parked = False
        self._cancel_timers()  # a repair's start-up timer from before must not fire into it
        self.alive, self.refusing, self.hung = True, False, False

    def hang(self) -> None:
        """Freeze: the running iteration stops where it is; new requests still queue."""
        if self.hung or not self.alive:
            return
        self.hung = True
        if self._iteration is not None:
            self._account_busy()
            self._frozen_for = max(0.0, self._ends - self.env.now)
            self._cancel_timers()
            self._host_changed()

    def resume(self) -> None:
        """The hang clears: the frozen iteration finishes its remaining time, then work goes on."""
        if not self.hung:
            return
        self.hung = False
        if self._iteration is not None:
            self._started = self.env.now
            self._ends = self.env.now + self._frozen_for
            self._schedule(self._frozen_for, self._on_iteration_end)
            self._host_changed()
        else:
            self._start_next()

    def set_speed(self, speed: float) -> None:
        """Throttle to ``speed`` of normal; applies from the next iteration."""
        self.speed = speed

    def set_share(self, share: float) -> None:
        """Run at ``share`` of a core from now on: the running iteration is re-timed at once."""
        if share == self.share:
            return
        if self.working:
            now = self.env.now
            before, after = self.speed * self.share, self.speed * share
            self._account_busy()
            self._done += (now - self._started) * before
            self._started = now
            self._ends = now + (self._ends - now) * before / after
            self._schedule(self._ends - now, self._on_iteration_end)
        self.share = share

    def _host_changed(self) -> None:
        if self.host is not None:
            self.host.changed()

    # ------------------------------------------------------------------ the engine loop

    def _account_busy(self) -> None:
        if self._iteration is not None and not self.hung:
            self.busy_time += self.env.now - self._started

    def _start_next(self) -> None:
        now = self.env.now
        iteration = self.batcher.next_iteration(now)
        if iteration is None:
            self._iteration = None
            self._schedule_wake()
            self._host_changed()
            return
        if iteration.computes:
            # Only computed tokens are charged: a cached prefix's KV is reused, not recomputed.
            charged = self.perf.prefill_charge(iteration.prefill_tokens, iteration.prefill_lengths())
            duration = self.perf.iteration_time(charged, iteration.decode_seqs, iteration.context_tokens)
        else:
            duration = self.perf.decode_stretch_time(iteration.decode_seqs, iteration.context_tokens, iteration.steps)
        duration /= self.speed * self.share * self.boost
        self._iteration = iteration
        self._wake_at = None
        self._started = now
        self._done = 0.0
        self._ends = now + duration
        self._schedule(duration, self._on_iteration_end)
        self._host_changed()

    def _cut_stretch(self) -> None:
        """End the running decode stretch after the step in progress, so the batch can change."""
        iteration = self._iteration
        assert iteration is not None
        batch, context = iteration.decode_seqs, iteration.context_tokens
        rate = self.speed * self.share * self.boost
        elapsed = self._done + (self.env.now - self._started) * rate
        steps = self.perf.steps_within(batch, context, elapsed) + 1
        if steps >= iteration.steps:
            return
        iteration.steps = steps
        ends = self._started + (self.perf.decode_stretch_time(batch, context, steps) - self._done) / rate
        self._ends = max(ends, self.env.now)
        self._schedule(self._ends - self.env.now, self._on_iteration_end)

    def _cancel_timers(self) -> None:
        """Whatever this replica was waiting for will not happen (it crashed, froze or re-planned)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._startup_timer is not None:
            self._startup_timer.cancel()
            self._startup_timer = None

    def _schedule(self, delay: float, handler: Callback) -> None:
        """The one pending timer from now on: an iteration's end or a wake replaces any other."""
        self._cancel_timers()
        self._timer = Timer(self.env, delay, handler)

    def _schedule_wake(self) -> None:
        wake = self.batcher.wake_time()
        if wake is not None and wake != self._wake_at:
            self._wake_at = wake
            self._schedule(max(0.0, wake - self.env.now), self._on_wake)

    def _on_wake(self, _timer: Timer) -> None:
        self._timer = None
        if self._iteration is None and not self.hung:
            self._wake_at = None
            self._start_next()

    def _on_iteration_end(self, _timer: Timer) -> None:
        self._timer = None
        iteration = self._iteration
        assert iteration is not None
        now = self.env.now
        self.busy_time += now - self._started
        self._iteration = None  # callbacks below may submit new work here, which restarts the loop
        progress = self.batcher.complete(iteration, iteration.steps, now)
        for seq in progress.first_token:
            self.on_first_token(seq, now)
        for seq in progress.finished:
            self.completed += 1
            self.tokens_out += seq.output_tokens
            self.on_finish(seq, now)
        if self._iteration is None and self.alive and not self.hung:
            self._start_next()
        else:
            self._host_changed()
