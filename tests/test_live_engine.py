"""The model runner and the micro-batching engine, on the tiny built-in model (real PyTorch)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from testbed.live.replica.engine import DeadlineExceeded, Engine, EngineClosed  # noqa: E402
from testbed.live.replica.models import ensure_model  # noqa: E402
from testbed.live.replica.runner import ModelRunner  # noqa: E402

TEXTS = ["hello world", "the server request timed out and the replica retried", "a", "GPU CPU batch queue"]


@pytest.fixture(scope="module")
def model_dir():
    return ensure_model("tiny")


@pytest.fixture(scope="module")
def runner(model_dir):
    return ModelRunner(model_dir, threads=1)


def generate(runner: ModelRunner, prompts: list[list[int]], steps: int) -> list[list[int]]:
    kv, nxt = runner.prefill(prompts)
    out = [[t] for t in nxt]
    for _ in range(steps - 1):
        nxt = runner.decode(kv, nxt)
        for row, token in zip(out, nxt):
            row.append(token)
    return out


@pytest.fixture(scope="module")
def solo(runner):
    """Each prompt's greedy continuation, generated alone: the reference for batched runs."""
    return {text: generate(runner, [runner.encode(text)], 12)[0] for text in TEXTS}


def test_ragged_batch_generates_what_each_prompt_generates_alone(runner, solo):
    prompts = [runner.encode(t) for t in TEXTS]
    assert len({len(p) for p in prompts}) > 1  # really ragged
    assert generate(runner, prompts, 12) == [solo[t] for t in TEXTS]


def test_rows_leave_the_batch_without_disturbing_the_others(runner, solo):
    prompts = [runner.encode(t) for t in TEXTS]
    kv, nxt = runner.prefill(prompts)
    nxt = runner.decode(kv, nxt)
    kv.keep([3, 1])  # rows 0 and 2 finished; the survivors change places
    nxt = [nxt[3], nxt[1]]
    for _ in range(4):
        nxt = runner.decode(kv, nxt)
    assert kv.size == 2
    assert nxt == [solo[TEXTS[3]][5], solo[TEXTS[1]][5]]  # prefill gave token 0, then 5 decodes


def test_a_greedy_continuation_from_the_tokens_so_far_is_the_unbroken_runs_tail(runner):
    """What request migration relies on: a replica that prefills the prompt plus the first ``k``
    generated tokens and decodes on produces exactly what the unbroken run produced after them,
    although it computes those ``k`` tokens' keys and values in one prefill rather than ``k`` steps."""
    prompt = runner.encode(TEXTS[1])
    steps = 120
    [unbroken] = generate(runner, [prompt], steps)
    for k in (1, 17, 64, steps - 1):
        assert generate(runner, [prompt + unbroken[:k]], steps - k)[0] == unbroken[k:], f"cut after {k} tokens"


def test_runner_rejects_malformed_steps(runner):
    with pytest.raises(ValueError, match="at least one token"):
        runner.prefill([[1], []])
    kv, nxt = runner.prefill([[1, 5], [1]])
    with pytest.raises(ValueError, match="3 tokens for a batch of 2"):
        runner.decode(kv, nxt + [7])
    with pytest.raises(ValueError, match="quantize: expected one of int8"):
        ModelRunner("unused", quantize="int4")


def test_int8_runner_quantizes_linear_layers_and_still_generates(model_dir, runner):
    q = ModelRunner(model_dir, quantize="int8", threads=1)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    modules = list(q.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert sum(isinstance(m, dynamic) for m in modules) == 4 * 7 + 1  # q k v o gate up down per layer, lm_head
    prompts = [runner.encode(t) for t in TEXTS]
    out = generate(q, prompts, 4)
    assert all(len(row) == 4 and all(0 <= t < q.model.config.vocab_size for t in row) for row in out)


def run(coro):
    return asyncio.run(coro)


async def collect(engine: Engine, prompt: list[int], max_tokens: int, deadline: float | None = None) -> list[int]:
    return [t async for t in engine.generate(prompt, max_tokens, deadline)]


def test_concurrent_requests_share_a_batch_and_match_solo_generation(model_dir, solo, runner):
    async def main():
        engine = Engine(model_dir, max_batch_size=8, max_delay=0.05, threads=1)
        batches: list[int] = []
        engine.batch_listeners.append(lambda size, delay: batches.append(size))
        await engine.start()
        try:
            lengths = [12, 5, 9, 1]
            outs = await asyncio.gather(*[collect(engine, runner.encode(t), n) for t, n in zip(TEXTS, lengths)])
            return outs, lengths, batches, engine.queued, engine.batch_size
        finally:
            await engine.stop()

    outs, lengths, batches, queued, running = run(main())
    assert batches == [4]  # all four arrived within the batching delay
    assert outs == [solo[t][:n] for t, n in zip(TEXTS, lengths)]
    assert (queued, running) == (0, 0)


def test_micro_batching_a_late_request_waits_for_the_running_batch(model_dir, runner):
    """MicroBatcher semantics: nothing joins a running batch (continuous batching would)."""

    async def main():
        engine = Engine(model_dir, max_batch_size=8, max_delay=0.0, threads=1)
        await engine.start()
        events: list[tuple[str, float]] = []
        try:
            async def first():
                async for _ in engine.generate(runner.encode(TEXTS[0]), 20):
                    events.append(("a", time.monotonic()))

            async def late():
                while not events:
                    await asyncio.sleep(0.001)
                async for _ in engine.generate(runner.encode(TEXTS[1]), 3):
                    events.append(("b", time.monotonic()))

            await asyncio.gather(first(), late())
        finally:
            await engine.stop()
        return events

    events = run(main())
    order = [who for who, _ in events]
    assert order == ["a"] * 20 + ["b"] * 3


def test_deadline_frees_the_slot_and_the_engine_keeps_serving(model_dir, runner, solo):
    async def main():
        engine = Engine(model_dir, max_batch_size=4, max_delay=0.0, threads=1)
        await engine.start()
        try:
            with pytest.raises(DeadlineExceeded, match="deadline passed after"):
                await collect(engine, runner.encode(TEXTS[0]), 400, time.monotonic() + 0.2)
            assert (engine.queued, engine.batch_size) == (0, 0)  # out of the batcher at once
            with pytest.raises(DeadlineExceeded):
                await collect(engine, runner.encode(TEXTS[0]), 4, time.monotonic() - 1)
            return await collect(engine, runner.encode(TEXTS[1]), 6)
        finally:
            await engine.stop()

    assert run(main()) == solo[TEXTS[1]][:6]


def test_abandoned_stream_leaves_the_batch(model_dir, runner):
    async def main():
        engine = Engine(model_dir, max_batch_size=4, max_delay=0.0, threads=1)
        await engine.start()
        try:
            stream = engine.generate(runner.encode(TEXTS[0]), 300)
            await anext(stream)
            assert engine.batch_size == 1
            await stream.aclose()
            for _ in range(100):  # the loop drops the row at its next step boundary
                if engine.batch_size == 0:
                    break
                await asyncio.sleep(0.01)
            return engine.batch_size, engine.stats.tokens
        finally:
            await engine.stop()

    size, tokens = run(main())
    assert size == 0 and tokens < 300


def test_eos_ends_the_stream_without_yielding_it(model_dir, runner, solo):
    async def main():
        engine = Engine(model_dir, max_batch_size=4, max_delay=0.0, threads=1)
        await engine.start()
        try:
            # make the fourth greedy token of TEXTS[1] the end-of-sequence token
            eos = solo[TEXTS[1]][3]
            engine.runner.eos_token_ids = frozenset({eos})
            return eos, await collect(engine, runner.encode(TEXTS[1]), 10)
        finally:
            await engine.stop()

    eos, out = run(main())
    assert out == solo[TEXTS[1]][: solo[TEXTS[1]].index(eos)]


def test_requests_that_cannot_fit_are_refused_with_the_numbers(model_dir):
    async def main():
        engine = Engine(model_dir, threads=1)
        with pytest.raises(EngineClosed):
            await collect(engine, [1, 2], 2)
        await engine.start()
        try:
            with pytest.raises(ValueError, match=r"maximum context length is 512 tokens, but 530 were requested "
                                                 r"\(500 in the prompt, 30 for the completion\)"):
                await collect(engine, [5] * 500, 30)
            with pytest.raises(ValueError, match="max_tokens must be at least 1"):
                await collect(engine, [5], 0)
        finally:
            await engine.stop()

    run(main())
    with pytest.raises(ValueError, match="max_batch_size"):
        Engine(model_dir, max_batch_size=0)


def test_stop_fails_requests_in_flight(model_dir, runner):
    async def main():
        engine = Engine(model_dir, max_batch_size=4, max_delay=0.0, threads=1)
        await engine.start()
        stream = engine.generate(runner.encode(TEXTS[0]), 300)
        await anext(stream)
        await engine.stop()
        with pytest.raises(EngineClosed):
            async for _ in stream:
                pass

    run(main())


def test_slowdown_stretches_each_step_by_the_factor(model_dir, runner):
    async def main():
        engine = Engine(model_dir, max_batch_size=4, max_delay=0.0, threads=1)
        await engine.start()
        try:
            engine.slowdown = 3.0
            await collect(engine, runner.encode(TEXTS[0]), 8)
            return engine.stats
        finally:
            await engine.stop()

    stats = run(main())
    assert stats.steps == 8
    assert stats.slowdown_seconds == pytest.approx(2.0 * stats.step_seconds, rel=1e-6)


def test_adaptive_mode_lets_the_delay_controller_move_the_batching_delay(model_dir, runner):
    async def main():
        engine = Engine(model_dir, max_batch_size=4, max_delay=0.001, adaptive=True, threads=1, latency_target=50.0)
        await engine.start()
        try:
            before = engine.batching_delay
            await collect(engine, runner.encode(TEXTS[0]), 2)  # far under the target: the delay grows
            return before, engine.batching_delay
        finally:
            await engine.stop()

    before, after = run(main())
    assert before == 0.001 and after == pytest.approx(0.001 + 50.0 / 50)
