"""The prefix cache against references written here, and its effects in the batcher and simulator.

Rules checked: the hit ratio on the real Mooncake trace equals an independent computation (an
unbounded cache: a block hits if any earlier request had it; an LRU of fixed capacity: the most
recently touched blocks survive); a replica that crashed comes back cold; cached tokens are not
charged prefill time; memory pressure evicts; with caching off nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testbed.perf import Roofline
from testbed.catalog import DEVICES, MODELS
from testbed.policy.batching import ContinuousBatcher, MicroBatcher, Sequence
from testbed.policy.prefix_cache import Prefix, PrefixCache, chain_hashes
from testbed.sim import simulate
from testbed.spec import MicroBatching, Scenario
from testbed.traces import read_mooncake

TRACES = Path(__file__).resolve().parents[1] / "faults" / "traces"
MOONCAKE = TRACES / "mooncake-fast25" / "conversation_trace.jsonl.gz"
ROWS = 3000  # the first rows of the real trace: ~70k block lookups


@pytest.fixture(scope="module")
def mooncake():
    trace = read_mooncake(MOONCAKE)
    assert trace.prefix is not None
    return trace, [list(trace.prefix.prefix(i).ids()) for i in range(ROWS)]


def run_cache(trace, capacity_tokens: int) -> float:
    cache = PrefixCache(capacity_tokens, block_size=16)
    for i in range(ROWS):
        prefix, prompt = trace.prefix.prefix(i), int(trace.prompt_tokens[i])
        _, held = cache.acquire(prefix, prompt)
        cache.release(prefix, held)
    return cache.hit_tokens / cache.lookup_tokens


def reference_unbounded(trace, chains) -> float:
    seen: set[int] = set()
    hits = lookups = 0
    for i, chain in enumerate(chains):
        prompt = int(trace.prompt_tokens[i])
        full = chain[: prompt // 512]
        matched = 0
        while matched < len(full) and full[matched] in seen:
            matched += 1
        hits += min(matched * 512, prompt - 1)
        lookups += prompt
        seen.update(full)
    return hits / lookups


def reference_lru(trace, chains, capacity_blocks: int) -> float:
    """Last-use stamps; after each request keep the ``capacity_blocks`` most recent (root last)."""
    stamp: dict[int, int] = {}
    clock = hits = lookups = 0
    for i, chain in enumerate(chains):
        prompt = int(trace.prompt_tokens[i])
        full = chain[: prompt // 512]
        matched = 0
        while matched < len(full) and full[matched] in stamp:
            matched += 1
        hits += min(matched * 512, prompt - 1)
        lookups += prompt
        for block in reversed(full):
            clock += 1
            stamp[block] = clock
        if len(stamp) > capacity_blocks:
            keep = sorted(stamp, key=stamp.__getitem__)[-capacity_blocks:]
            stamp = {b: stamp[b] for b in keep}
    return hits / lookups


def test_unbounded_hit_ratio_on_the_mooncake_trace_matches_the_reference(mooncake):
    trace, chains = mooncake
    expected = reference_unbounded(trace, chains)
    assert 0.2 < expected < 0.9  # the trace really shares prefixes
    assert run_cache(trace, 1 << 40) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("capacity_blocks", [64, 1000])
def test_lru_hit_ratio_of_a_fixed_capacity_matches_the_reference(mooncake, capacity_blocks):
    trace, chains = mooncake
    expected = reference_lru(trace, chains, capacity_blocks)
    assert run_cache(trace, capacity_blocks * 512) == pytest.approx(expected, abs=1e-12)
    assert expected < reference_unbounded(trace, chains)


def test_only_full_blocks_hit_and_one_token_is_always_computed():
    cache = PrefixCache(10_000, block_size=16)
    prefix = Prefix(((0, 4),), 16)
    _, held = cache.acquire(prefix, 50)  # 3 full blocks of 16: the 4th id is a partial block
    assert held == 3
    cache.release(prefix, held)
    assert cache.match(prefix, 50) == 48
    assert cache.match(prefix, 48) == 47  # every block cached: the last token is still computed


def test_chain_hashes_share_exactly_the_common_full_blocks():
    a = list(range(100))
    b = list(range(40)) + [7] * 60
    ha, hb = chain_hashes(a, 16), chain_hashes(b, 16)
    assert len(ha) == 6 and ha[:2] == hb[:2] and ha[2] != hb[2]
    assert chain_hashes(a, 16) == ha  # stable


def seq(key: int, prompt: int, output: int, prefix: Prefix | None) -> Sequence:
    return Sequence(key, prompt, output, 0.0, prefix=prefix)


def test_batcher_charges_only_uncached_tokens_and_a_crash_leaves_the_cache_cold():
    cache = PrefixCache(100_000)
    batcher = ContinuousBatcher(8, 8192, 100_000, cache)
    shared = Prefix(((1000, 64),), 16)  # 1,024 tokens of system prompt
    first = seq(1, 1100, 2, shared)
    batcher.enqueue(first, 0.0)
    iteration = batcher.next_iteration(0.0)
    assert iteration.prefill_tokens == 1100 and first.cached == 0
    batcher.complete(iteration, 1, 0.0)
    batcher.complete(batcher.next_iteration(0.0), 1, 0.0)  # finishes: its blocks stay cached
    assert batcher.running == 0 and len(cache) == 64
    second = seq(2, 1100, 2, shared)
    batcher.enqueue(second, 0.0)
    iteration = batcher.next_iteration(0.0)
    assert second.cached == 1024 and iteration.prefill_tokens == 1100 - 1024 == sum(iteration.chunks)
    batcher.evict_all()  # the replica crashed
    assert len(cache) == 0
    third = seq(3, 1100, 2, shared)
    batcher.enqueue(third, 0.0)
    batcher.next_iteration(0.0)
    assert third.cached == 0


def test_micro_batches_reuse_only_what_was_cached_before_them_and_a_crash_empties_the_cache():
    """A micro-batch is prefilled in one step, as the built-in engine does: two prompts of one
    batch sharing a new system prompt both compute it; the next batch finds it cached."""
    batcher = MicroBatcher.from_spec(MicroBatching(policy="micro", max_batch_size=2, max_queue_delay=0.0,
                                                   prefix_caching=True), 100_000)
    shared = Prefix(((1000, 16),), 16)  # 256 tokens of system prompt
    pair = [seq(1, 300, 2, shared), seq(2, 280, 2, shared)]
    for work in pair:
        batcher.enqueue(work, 0.0)
    iteration = batcher.next_iteration(0.0)
    assert [w.cached for w in pair] == [0, 0] and iteration.prefill_tokens == 580 == sum(iteration.chunks)
    batcher.complete(iteration, 2, 0.0)
    assert batcher.running == 0 and len(batcher.cache) == 16
    later = [seq(3, 300, 2, shared), seq(4, 260, 2, None)]
    for work in later:
        batcher.enqueue(work, 0.0)
    iteration = batcher.next_iteration(0.0)
    assert [w.cached for w in later] == [256, 0] and iteration.chunks == [44, 260]
    batcher.cancel(later[0])  # leaves the batch: its blocks become evictable, not lost
    assert later[0].held == 0 and len(batcher.cache) == 16
    batcher.evict_all()  # the replica crashed
    assert len(batcher.cache) == 0
    assert MicroBatcher.from_spec(MicroBatching(policy="micro"), 1000).cache is None


def test_memory_pressure_evicts_unreferenced_blocks():
    cache = PrefixCache(100_000)
    batcher = ContinuousBatcher(16, 16384, 100_000, cache)
    for key in range(10):
        work = seq(key, 1024, 1, Prefix(((key * 1000, 64),), 16))
        batcher.enqueue(work, 0.0)
    batcher.complete(batcher.next_iteration(0.0), 1, 0.0)
    assert batcher.running == 0 and cache.cached_tokens == 10 * 1024
    batcher.set_kv_capacity(3000)
    assert cache.cached_tokens <= 3000 and cache.evicted_blocks >= 7 * 64


# --------------------------------------------------------------------------- in the simulator


def one_replica(caching: bool, faults: list | None = None, rate: float = 2.0, duration: float = 60.0) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "prefix",
            "topology": {
                "name": "one",
                "intra_region_rtt": 0,
                "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                    {"name": "k", "device": "H100", "devices_per_node": 1}]}]}]}],
            },
            "workload": {
                "arrival": {"kind": "poisson", "rate": rate},
                "prompt_tokens": {"kind": "uniform", "low": 20, "high": 200},
                "output_tokens": {"kind": "fixed", "value": 4},
                "prefix": {"system_prompts": {"count": 2, "tokens": 2048}},
            },
            "serving": {"batching": {"policy": "continuous", "prefix_caching": caching}},
            "faults": faults or [],
            "duration": duration,
            "seed": 5,
        }
    )


def test_cached_tokens_are_not_charged_prefill_time():
    """Sparse arrivals, no RTT: each TTFT is one iteration prefilling the uncached tokens only."""
    result = simulate(one_replica(True, rate=0.5, duration=200))
    requests = result.requests
    assert (requests["status"] == "ok").all()
    perf = Roofline(MODELS["llama-3-8b"], DEVICES["H100"])
    ttft = (requests["first_token"] - requests["arrival"]).to_numpy()
    computed = (requests["prompt_tokens"] - requests["cached_tokens"]).to_numpy()
    alone = np.array([perf.iteration_time(int(c), 0, 0) for c in computed])
    hits = requests["cached_tokens"].to_numpy() > 0
    assert hits.mean() > 0.9  # two system prompts: nearly every request hits one
    assert (requests.loc[hits, "cached_tokens"] == 2048).all()
    # Requests that met nobody in the batch: TTFT is exactly their uncached prefill.
    solo = np.isclose(ttft, alone, rtol=1e-9)
    assert solo.mean() > 0.8
    uncached = np.array([perf.iteration_time(int(p), 0, 0) for p in requests["prompt_tokens"]])
    assert (ttft[hits & solo] < 0.5 * uncached[hits & solo]).all()


def test_a_restarted_replica_starts_cold_in_the_simulator():
    crash = [{"kind": "accelerator_failure", "target": "p/r/z/k/node-0/gpu-0", "at": "30s", "duration": "5s"}]
    result = simulate(one_replica(True, crash))
    ok = result.requests[result.requests["status"] == "ok"].sort_values("first_token")
    after = ok[ok["arrival"] > 35]
    assert (ok.loc[ok["arrival"] < 29, "cached_tokens"] > 0).mean() > 0.9
    assert after.iloc[0]["cached_tokens"] == 0  # the first request after the restart misses
    assert (after["cached_tokens"] > 0).mean() > 0.9  # and the cache warms again


def test_caching_off_leaves_cached_tokens_zero_and_the_timeseries_unchanged():
    off, on = simulate(one_replica(False)), simulate(one_replica(True))
    assert (off.requests["cached_tokens"] == 0).all()
    assert "cache_hit_rate" not in off.timeseries.columns
    series = on.timeseries
    looked = series["cache_lookup_tokens"].sum()
    assert series["cache_hit_tokens"].sum() / looked == pytest.approx(
        on.requests["cached_tokens"].sum() / on.requests["prompt_tokens"].sum(), rel=0.02
    )
    # Same arrivals and lengths either way: the cache changes only timing.
    assert off.requests["prompt_tokens"].equals(on.requests["prompt_tokens"])
    assert (on.requests["first_token"] - on.requests["arrival"]).mean() < (
        off.requests["first_token"] - off.requests["arrival"]
    ).mean()
