"""Batching policies driven by hand, with no simulator: the sans-IO contract."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.policy.batching import ContinuousBatcher, DelayController, Iteration, MicroBatcher, Sequence


def seq(rid: int, prompt: int = 10, output: int = 5, arrival: float = 0.0) -> Sequence:
    return Sequence(rid, prompt, output, arrival)


def run_to_completion(batcher, now: float = 0.0, step: float = 1.0) -> list[tuple[float, Iteration]]:
    """Drive a batcher the way a replica does: every iteration takes ``step`` per step."""
    trace = []
    while (it := batcher.next_iteration(now)) is not None:
        now += step * it.steps
        trace.append((now, it))
        batcher.complete(it, it.steps, now)
    return trace


class TestContinuousBatcher:
    def test_admits_up_to_max_num_seqs_and_runs_a_stretch_to_the_first_finish(self):
        b = ContinuousBatcher(max_num_seqs=2, max_num_batched_tokens=1000, kv_capacity_tokens=10_000)
        for i, out in enumerate((3, 6, 4)):
            b.enqueue(seq(i, output=out), 0.0)
        first = b.next_iteration(0.0)
        assert [s.key for s in first.prefill] == [0, 1] and first.steps == 1
        progress = b.complete(first, 1, 1.0)
        assert [s.key for s in progress.first_token] == [0, 1]
        stretch = b.next_iteration(1.0)
        assert not stretch.prefill and stretch.steps == 2  # seq 0 has 2 tokens left
        progress = b.complete(stretch, 2, 3.0)
        assert [s.key for s in progress.finished] == [0]
        joined = b.next_iteration(3.0)
        assert [s.key for s in joined.prefill] == [2] and joined.decode_seqs == 1

    def test_prefill_token_budget_limits_admission_but_never_starves_a_long_prompt(self):
        b = ContinuousBatcher(max_num_seqs=8, max_num_batched_tokens=100, kv_capacity_tokens=10_000)
        b.enqueue(seq(0, prompt=300), 0.0)
        b.enqueue(seq(1, prompt=50), 0.0)
        it = b.next_iteration(0.0)
        assert [s.key for s in it.prefill] == [0] and it.prefill_tokens == 300

    def test_kv_cache_exhaustion_preempts_the_newest_sequence_and_recomputes_it(self):
        b = ContinuousBatcher(max_num_seqs=8, max_num_batched_tokens=1000, kv_capacity_tokens=40)
        b.enqueue(seq(0, prompt=10, output=20), 0.0)
        b.enqueue(seq(1, prompt=10, output=20), 0.0)
        trace = run_to_completion(b)
        assert b.preemptions >= 1
        recomputed = [it for _, it in trace[1:] if it.prefill]
        assert recomputed and recomputed[0].prefill[0].key == 1
        assert recomputed[0].prefill_tokens > 10  # prompt plus the tokens already generated
        assert b.kv_used == 0 and b.running == 0 and b.queued == 0

    def test_fits_rejects_contexts_larger_than_the_cache(self):
        b = ContinuousBatcher(8, 1000, kv_capacity_tokens=100)
        assert b.fits(seq(0, prompt=60, output=40))
        assert not b.fits(seq(1, prompt=60, output=41))

    def test_enqueue_asks_to_cut_a_stretch_only_when_the_newcomer_could_join(self):
        b = ContinuousBatcher(max_num_seqs=1, max_num_batched_tokens=1000, kv_capacity_tokens=1000)
        assert b.enqueue(seq(0), 0.0)
        b.complete(b.next_iteration(0.0), 1, 1.0)
        assert not b.enqueue(seq(1), 1.0)  # the only slot is taken

    def test_evict_all_returns_everything_and_empties_the_cache(self):
        b = ContinuousBatcher(2, 1000, 1000)
        for i in range(4):
            b.enqueue(seq(i), 0.0)
        b.complete(b.next_iteration(0.0), 1, 1.0)
        assert sorted(s.key for s in b.evict_all()) == [0, 1, 2, 3]
        assert b.kv_used == 0 and b.next_iteration(1.0) is None

    @settings(max_examples=60, deadline=None)
    @given(
        lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 30)), min_size=1, max_size=25),
        max_seqs=st.integers(1, 8),
        budget=st.integers(1, 80),
        kv=st.integers(80, 400),
    )
    def test_every_sequence_finishes_once_with_all_its_tokens(self, lengths, max_seqs, budget, kv):
        b = ContinuousBatcher(max_seqs, budget, kv)
        seqs = [seq(i, p, o) for i, (p, o) in enumerate(lengths)]
        for s in seqs:
            if b.fits(s):
                b.enqueue(s, 0.0)
        finished: list[int] = []
        now = 0.0
        while (it := b.next_iteration(now)) is not None:
            assert b.kv_used <= b.kv_capacity
            assert b.running <= max_seqs
            now += it.steps
            finished += [s.key for s in b.complete(it, it.steps, now).finished]
        expected = sorted(s.key for s in seqs if s.prompt_tokens + s.output_tokens <= kv)
        assert sorted(finished) == expected
        assert all(s.generated == s.output_tokens for s in seqs if s.key in finished)
        assert b.kv_used == 0


class TestMicroBatcher:
    def test_waits_for_the_delay_then_runs_a_partial_batch(self):
        b = MicroBatcher(max_batch_size=4, max_queue_delay=0.5, kv_capacity_tokens=10_000)
        b.enqueue(seq(0, arrival=0.0), 0.0)
        assert b.next_iteration(0.1) is None
        assert b.wake_time() == 0.5
        it = b.next_iteration(0.5)
        assert [s.key for s in it.prefill] == [0]

    def test_a_full_batch_goes_at_once(self):
        b = MicroBatcher(max_batch_size=2, max_queue_delay=10.0, kv_capacity_tokens=10_000)
        b.enqueue(seq(0), 0.0)
        b.enqueue(seq(1), 0.0)
        assert len(b.next_iteration(0.0).prefill) == 2

    def test_batch_runs_to_completion_before_newcomers_join(self):
        b = MicroBatcher(max_batch_size=2, max_queue_delay=0.0, kv_capacity_tokens=10_000)
        b.enqueue(seq(0, output=2), 0.0)
        b.enqueue(seq(1, output=6), 0.0)
        b.complete(b.next_iteration(0.0), 1, 1.0)
        b.enqueue(seq(2, output=2), 1.0)
        assert not b.enqueue(seq(3), 1.0)  # never cuts a running batch
        rids_until_idle = []
        now = 1.0
        while b.running:
            it = b.next_iteration(now)
            rids_until_idle.append(sorted(s.key for s in it.prefill))
            now += it.steps
            b.complete(it, it.steps, now)
        assert all(2 not in rids for rids in rids_until_idle) and b.queued == 2
        assert [s.key for s in b.next_iteration(now).prefill] == [2, 3]

    def test_adaptive_delay_grows_with_headroom_and_halves_when_over_target(self):
        controller = DelayController(initial=0.01, target=1.0)
        for _ in range(10):
            controller.observe(0.2)
        grown = controller.delay
        assert grown > 0.01 and grown <= controller.ceiling
        controller.observe(50.0)
        assert controller.delay == grown / 2

    def test_adaptive_batcher_feeds_latency_to_its_controller(self):
        controller = DelayController(initial=0.0, target=10.0)
        b = MicroBatcher(4, 0.0, 10_000, controller)
        b.enqueue(seq(0, output=3, arrival=0.0), 0.0)
        run_to_completion(b)
        assert controller.latency is not None and controller.delay > 0.0


def test_cancel_removes_waiting_and_running_sequences_and_frees_their_cache():
    b = ContinuousBatcher(max_num_seqs=1, max_num_batched_tokens=1000, kv_capacity_tokens=1000)
    running, waiting = seq(0, output=10), seq(1)
    b.enqueue(running, 0.0)
    b.enqueue(waiting, 0.0)
    b.complete(b.next_iteration(0.0), 1, 1.0)
    b.cancel(waiting)
    b.cancel(running)
    assert b.queued == 0 and b.running == 0 and b.kv_used == 0
    assert b.next_iteration(1.0) is None
    m = MicroBatcher(max_batch_size=2, max_queue_delay=0.0, kv_capacity_tokens=1000)
    first, second = seq(0), seq(1)
    m.enqueue(first, 0.0)
    m.enqueue(second, 0.0)
    m.complete(m.next_iteration(0.0), 1, 1.0)
    m.cancel(first)
    assert m.running == 1


def test_memory_pressure_preempts_at_the_next_step():
    b = ContinuousBatcher(max_num_seqs=8, max_num_batched_tokens=1000, kv_capacity_tokens=1000)
    for i in range(2):
        b.enqueue(seq(i, prompt=100, output=50), 0.0)
    b.complete(b.next_iteration(0.0), 1, 1.0)
    b.set_kv_capacity(150)
    it = b.next_iteration(1.0)
    assert b.preemptions == 1 and it.decode_seqs == 1
