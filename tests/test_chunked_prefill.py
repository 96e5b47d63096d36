"""Chunked prefill: one token budget per iteration, decode tokens first, then chunks of prompts.

Rules: an iteration never computes more than ``max_num_batched_tokens`` (decode tokens
included); a prompt longer than what is left is spread over iterations and emits its first
token with its last chunk; running sequences decode in every one of those iterations. In the
simulator, long prompts arriving among short chats stall every decoder for a whole prefill
without it, and only for a chunk with it: TPOT's tail shrinks.
"""

from __future__ import annotations

import numpy as np

from testbed.records.schema import latency_columns
from testbed.policy.batching import ContinuousBatcher, Sequence
from testbed.sim import simulate
from testbed.spec import Scenario


def test_a_long_prompt_is_spread_over_iterations_within_the_budget():
    batcher = ContinuousBatcher(8, 100, 100_000, chunked_prefill=True)
    short = [Sequence(k, 10, 50, 0.0) for k in range(3)]
    for seq in short:
        batcher.enqueue(seq, 0.0)
    first = batcher.next_iteration(0.0)
    assert first.prefill == short and first.prefill_tokens == 30
    batcher.complete(first, 1, 0.0)
    long = Sequence(9, 250, 5, 0.0)
    batcher.enqueue(long, 0.0)
    computed = []
    while True:
        iteration = batcher.next_iteration(0.0)
        assert iteration.decode_seqs == 3  # the short ones decode every iteration
        assert iteration.prefill_tokens + iteration.decode_seqs <= 100
        computed.append(iteration.prefill_tokens)
        progress = batcher.complete(iteration, 1, 0.0)
        if progress.first_token:
            assert progress.first_token == [long]
            break
    assert computed == [97, 97, 56]
    assert batcher.running == 4


def test_without_chunking_a_long_prompt_takes_one_iteration():
    batcher = ContinuousBatcher(8, 100, 100_000)
    batcher.enqueue(Sequence(1, 250, 5, 0.0), 0.0)
    iteration = batcher.next_iteration(0.0)
    assert iteration.prefill_tokens == 250 and len(iteration.prefill) == 1


def mixed(chunked: bool) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "long-prompts",
            "topology": {
                "name": "one",
                "intra_region_rtt": 0,
                "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                    {"name": "k", "device": "H100", "devices_per_node": 1}]}]}]}],
            },
            "workload": {
                "arrival": {"kind": "poisson", "rate": 6},
                "prompt_tokens": {"kind": "empirical", "values": [200, 24000], "weights": [0.95, 0.05]},
                "output_tokens": {"kind": "fixed", "value": 200},
            },
            "serving": {"batching": {"policy": "continuous", "max_num_batched_tokens": 2048, "chunked_prefill": chunked}},
            "duration": 120,
            "seed": 2,
        }
    )


def test_chunked_prefill_protects_tpot_when_long_prompts_arrive():
    plain, chunked = simulate(mixed(False)), simulate(mixed(True))
    for result in (plain, chunked):
        assert (result.requests["status"] == "ok").all()
    short = plain.requests["prompt_tokens"] == 200
    tpot_plain = latency_columns(plain.requests)["tpot"][short]
    tpot_chunked = latency_columns(chunked.requests)["tpot"][short]
    p99_plain, p99_chunked = np.percentile(tpot_plain, 99), np.percentile(tpot_chunked, 99)
    assert p99_chunked < 0.7 * p99_plain, (p99_chunked, p99_plain)
    # (What chunking costs a long prompt's own TTFT is not asserted: the roofline takes each chunk
    # as its own sequence and so understates a later chunk's attention over the earlier ones.)
