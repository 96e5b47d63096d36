"""Back-of-envelope serving capacity, to set loads as a share of what a fleet can sustain.

Benchmarks and what-if sweeps speak in "70% of capacity". This estimate is analytic: each
replica runs its largest batch that the KV cache allows, a request costs its prefill plus its
share of ``output_tokens`` decode steps at that batch size. It ignores queueing and stragglers,
so it is an upper bound that the simulator approaches at high load; it is not a verdict.
"""

from __future__ import annotations

import math

from testbed.perf import PerfModel, kv_capacity_tokens, perf_model_for
from testbed.spec import ContinuousBatching, LengthSpec, Scenario
from testbed.topology import Topology


def mean_length(spec: LengthSpec) -> float:
    """Expected value of a length distribution (lognormal ignoring its clip at ``max``)."""
    if spec.kind == "fixed":
        return float(spec.value)
    if spec.kind == "uniform":
        return (spec.low + spec.high) / 2
    if spec.kind == "lognormal":
        return min(float(spec.max), spec.median * math.exp(spec.sigma**2 / 2))
    weights = spec.weights or [1.0] * len(spec.values)
    return sum(v * w for v, w in zip(spec.values, weights)) / sum(weights)


def replica_capacity(perf: PerfModel, max_batch: int, kv_tokens: int, prompt: float, output: float) -> float:
    """Requests per second one replica sustains at its largest feasible batch."""
    batch = max(1, min(max_batch, int(kv_tokens // (prompt + output))))
    context = int(batch * (prompt + output / 2))
    step = perf.iteration_time(0, batch, context)
    prefill = perf.iteration_time(int(prompt), 0, 0)
    return batch / (output * step + batch * prefill)


def fleet_capacity(scenario: Scenario) -> float:
    """Requests per second the scenario's primary-tier replicas sustain together."""
    topology = Topology.from_spec(scenario.topology)
    batching = scenario.serving.batching
    if isinstance(batching, ContinuousBatching):
        max_batch, fraction = batching.max_num_seqs, batching.kv_cache_fraction
    else:
        max_batch, fraction = batching.max_batch_size, 0.9
    prompt = mean_length(scenario.workload.prompt_tokens)
    output = mean_length(scenario.workload.output_tokens)
    spec = scenario.topology
    total = 0.0
    cache: dict[tuple[str, int], float] = {}
    for replica in topology.replicas:
        if replica.tier != "primary":
            continue
        key = (replica.device_kind, replica.tensor_parallel)
        if key not in cache:
            kv = getattr(batching, "kv_cache_tokens", None) or kv_capacity_tokens(
                spec.model_kind(), spec.device_kind(key[0]), key[1], fraction
            )
            cache[key] = replica_capacity(perf_model_for(spec, *key), max_batch, kv, prompt, output)
        total += cache[key]
    return total
