"""The built-in engine's prefix cache, on the tiny model with real PyTorch.

Which blocks are cached is the simulator's policy (:mod:`testbed.policy.prefix_cache`, tested on
its own); here: the tensors follow its bookkeeping exactly, a hit really skips prefill compute
(measured) and never changes the output (greedy), the last prompt token is always computed,
eviction happens under a small capacity, an engine restart and a weights switch start cold.
"""

from __future__ import annotations

import asyncio
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from testbed.live.replica.engine import Engine, PrefillInfo  # noqa: E402
from testbed.live.replica.models import ensure_model  # noqa: E402
from testbed.live.replica.prefix_cache import KVPrefixCache, block_bytes  # noqa: E402
from testbed.live.replica.runner import ModelRunner  # noqa: E402

BLOCK = 16
TEXT = "the server request timed out and the replica retried on another region GPU batch queue "


@pytest.fixture(scope="module")
def model_dir():
    return ensure_model("tiny")


@pytest.fixture(scope="module")
def runner(model_dir):
    return ModelRunner(model_dir, threads=1)


def greedy(runner: ModelRunner, prompts, steps: int, hits=None) -> list[list[int]]:
    kv, nxt = runner.prefill(prompts, hits)
    out = [[t] for t in nxt]
    for _ in range(steps - 1):
        nxt = runner.decode(kv, nxt)
        for row, token in zip(out, nxt):
            row.append(token)
    return out


def prompt_of(runner: ModelRunner, tokens: int, tail: int = 0) -> list[int]:
    """``tokens`` tokens of shared text, then ``tail`` (a request-specific last token)."""
    ids = runner.encode(TEXT * (tokens // 8 + 1))[:tokens]
    assert len(ids) == tokens
    return ids + [100 + tail]


# -- the tensors follow the policy's bookkeeping ------------------------------------------------

def fill(runner: ModelRunner, cache: KVPrefixCache, prompt: list[int]) -> None:
    """One prefill of ``prompt`` alone, its blocks stored, then released (the sequence ended)."""
    hit = cache.acquire(prompt)
    kv, _ = runner.prefill([prompt], [hit])
    cache.store(prompt, hit, lambda a, b: kv.prompt_kv(0, a, b))
    cache.release(hit)


def test_a_hit_leaves_the_last_prompt_token_to_compute(runner):
    cache = KVPrefixCache(BLOCK, 64)
    prompt = prompt_of(runner, 2 * BLOCK - 1)  # exactly two blocks
    fill(runner, cache, prompt)
    assert cache.blocks == 2
    hit = cache.acquire(prompt)
    assert hit.tokens == 2 * BLOCK - 1 and hit.kv[0][0].shape[1] == 2 * BLOCK - 1
    cache.release(hit)
    assert cache.acquire(prompt[:BLOCK - 1]).tokens == 0  # no full block
    assert (cache.counters.queries, cache.counters.hits) == (2 * BLOCK + 2 * BLOCK + BLOCK - 1, 2 * BLOCK - 1)


def test_tensors_are_kept_for_exactly_the_blocks_the_policy_holds(runner):
    cache = KVPrefixCache(BLOCK, 2)
    first = prompt_of(runner, 3 * BLOCK)
    fill(runner, cache, first)  # three blocks computed, two fit: the tail is evicted first
    assert cache.blocks == len(cache.policy) == 2
    hit = cache.acquire(first)
    assert hit.tokens == 2 * BLOCK
    cache.release(hit)
    cache.clear()
    assert cache.blocks == 0 and cache.acquire(first).tokens == 0


# -- the runner: reused keys and values give the same tokens -----------------------------------

def test_prefill_from_cached_blocks_generates_what_a_full_prefill_does(runner):
    cache = KVPrefixCache(BLOCK, 256)
    fill(runner, cache, prompt_of(runner, 5 * BLOCK + 3))
    # a ragged batch: a long hit, a shorter hit on the same prefix, and a prompt with no hit
    prompts = [prompt_of(runner, 5 * BLOCK + 9, 1), prompt_of(runner, 2 * BLOCK + 4, 2), runner.encode("hello world")]
    hits = [cache.acquire(p) for p in prompts]
    assert [h.tokens for h in hits] == [5 * BLOCK, 2 * BLOCK, 0]
    with_cache = greedy(runner, prompts, 12, hits)
    assert with_cache == greedy(runner, prompts, 12)
    assert with_cache == [greedy(runner, [p], 12)[0] for p in prompts]


def test_a_block_being_computed_in_the_same_batch_is_not_reused(runner):
    cache = KVPrefixCache(BLOCK, 64)
    prompt = prompt_of(runner, 3 * BLOCK)
    first, second = cache.acquire(prompt), cache.acquire(prompt)
    assert (first.tokens, second.tokens) == (0, 0)  # the policy counts it cached; its tensors do not exist yet
    assert cache.counters.hits == 0


def test_runner_refuses_a_hit_covering_the_whole_prompt(runner):
    cache = KVPrefixCache(BLOCK, 8)
    prompt = prompt_of(runner, 2 * BLOCK)
    fill(runner, cache, prompt)
    hit = cache.acquire(prompt)
    with pytest.raises(ValueError, match="last token"):
        runner.prefill([prompt[:hit.tokens]], [hit])
    with pytest.raises(ValueError, match="1 cache hits for 2 prompts"):
        runner.prefill([prompt, prompt], [hit])


# -- the engine: measured prefill time, usage, eviction, cold starts ---------------------------

async def _run(engine: Engine, prompt: list[int], tokens: int = 8) -> tuple[list[int], PrefillInfo]:
    info = PrefillInfo()
    out = [t async for t in engine.generate(prompt, tokens, info=info)]
    return out, info


def test_a_repeated_prefix_is_served_from_cache_faster_and_identically(model_dir, runner):
    """The issue's acceptance test: lower measured prefill time, same output, cached tokens reported.

    Cold and warm prefill times are each the best of two requests (different prefixes for the
    cold ones), so one scheduling hiccup on a busy machine cannot decide the comparison; the
    warm prefill computes 1 token of 465 and is about ten times faster.
    """

    async def main():
        engine = Engine(model_dir, threads=1, max_delay=0.0)
        plain = Engine(model_dir, threads=1, max_delay=0.0, prefix_cache_bytes=0)
        await engine.start()
        await plain.start()
        try:
            long = 29 * BLOCK
            other = [7] + prompt_of(runner, long - 1)  # another first token: shares no block
            cold = [await _run(engine, prompt_of(runner, long, 0)), await _run(engine, other)]
            warm = [await _run(engine, prompt_of(runner, long, i)) for i in (1, 2)]
            reference = [await _run(plain, prompt_of(runner, long, i)) for i in (1, 2)]
        finally:
            await engine.stop()
            await plain.stop()
        return cold, warm, reference

    cold, warm, reference = asyncio.run(main())
    assert [info.cached_tokens for _, info in cold] == [0, 0]
    assert [info.cached_tokens for _, info in warm] == [29 * BLOCK, 29 * BLOCK]
    assert [info.cached_tokens for _, info in reference] == [0, 0]
    assert [out for out, _ in warm] == [out for out, _ in reference]
    assert max(len(out) for out, _ in warm) > 1
    cold_s = min(info.prefill_seconds for _, info in cold)
    warm_s = min(info.prefill_seconds for _, info in warm)
    assert warm_s < cold_s, (warm_s, cold_s)


def test_lru_eviction_under_a_small_capacity(model_dir, runner):
    blocks = 4
    capacity = blocks * block_bytes(runner.model.config, BLOCK)
    a = prompt_of(runner, 3 * BLOCK)
    b = [5] + prompt_of(runner, 3 * BLOCK - 1)  # same length, no shared block

    async def main():
        engine = Engine(model_dir, threads=1, max_delay=0.0, prefix_cache_bytes=capacity, block_size=BLOCK)
        await engine.start()
        try:
            assert engine.prefix_cache.capacity_blocks == blocks
            seen = []
            for prompt in (a, a, b, a, b):
                out, info = await _run(engine, prompt)
                seen.append((out, info.cached_tokens, engine.prefix_cache.blocks))
            return seen
        finally:
            await engine.stop()

    seen = asyncio.run(main())
    # b pushes a's tail blocks out (leaves first), then a pushes b's: each keeps only its first block
    assert [hit for _, hit, _ in seen] == [0, 3 * BLOCK, 0, BLOCK, BLOCK]
    assert all(held <= blocks for _, _, held in seen)
    assert seen[0][0] == seen[1][0] == seen[3][0] and seen[2][0] == seen[4][0]


def test_a_restarted_engine_and_a_weights_switch_start_cold(model_dir, runner):
    prompt = prompt_of(runner, 4 * BLOCK)

    async def main():
        engine = Engine(model_dir, threads=1, max_delay=0.0)
        hits = []
        await engine.start()
        try:
            for _ in range(2):
                hits.append((await _run(engine, prompt))[1].cached_tokens)
        finally:
            await engine.stop()
        await engine.start()
        try:
            hits.append((await _run(engine, prompt))[1].cached_tokens)
            hits.append((await _run(engine, prompt))[1].cached_tokens)
            await engine.set_weights("int8")
            hits.append((await _run(engine, prompt))[1].cached_tokens)
        finally:
            await engine.stop()
        return hits

    assert asyncio.run(main()) == [0, 4 * BLOCK, 0, 4 * BLOCK, 0]


def test_engine_refuses_bad_cache_settings(model_dir):
    with pytest.raises(ValueError, match="prefix_cache_bytes: expected bytes >= 0"):
        Engine(model_dir, prefix_cache_bytes=-1)
    with pytest.raises(ValueError, match="block_size: expected a number of tokens >= 1"):
        Engine(model_dir, block_size=0)
