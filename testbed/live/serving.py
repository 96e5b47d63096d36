"""How the live plane carries a scenario's ``serving:`` section, field by field — or refuses it.

The gateway's policies take the :class:`~testbed.spec.ServingSpec` whole (the same
:class:`~testbed.policy.gateway.Gateway` the simulator drives), so routing, retries, hedging,
breakers, ejection, health checks, admission, failover and timeouts reach the live plane by
construction. Batching is the replica's business and crosses a process boundary, so it travels
as one serialised spec (:func:`replica_batching`) rather than loose flags that could rename or
drop a field on the way (``adaptive`` and ``target_latency`` once were).

What a live replica cannot do is refused here, before any process starts, with the field's path
(:func:`check_live`): the built-in engine micro-batches only; vLLM batches continuously and
sizes its KV cache itself. A conformance test sets every field of the serving schema in turn and
checks that it either changes what the live plane runs or is refused by this module.
"""

from __future__ import annotations

from testbed.spec import ContinuousBatching, MicroBatching, QueueSpec, RoutingSpec, ServingSpec, SpecError

ENGINES = ("torch", "vllm")
_CONTINUOUS_DEFAULTS = ContinuousBatching(policy="continuous")
_ROUTING_DEFAULTS = RoutingSpec()
_QUEUE_DEFAULTS = QueueSpec()
# What the live gateway cannot run yet (docs/caching.md): it passes no prefix to its router and
# holds no central queue. The routers' knobs are refused too, not only their policies: a knob set
# in a scenario is a claim about the run, and live would drop it silently.
CACHE_ROUTERS = ("prefix_affinity", "cache_aware", "session_affinity")
CACHE_ROUTING_FIELDS = ("prefix_blocks", "load_factor", "cache_weight", "load_weight")


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


def check_cache_serving(spec: ServingSpec) -> None:
    """Raise :class:`SpecError` naming the first cache or queue field the live plane cannot run yet."""
    batching, routing, queue = spec.batching, spec.routing, spec.queue
    if isinstance(batching, ContinuousBatching):
        if batching.chunked_prefill != _CONTINUOUS_DEFAULTS.chunked_prefill:
            raise SpecError(
                "serving.batching.chunked_prefill: the live replicas' prefill chunking is not configured by the "
                f"testbed yet; leave it at {_CONTINUOUS_DEFAULTS.chunked_prefill}"
            )
        if batching.prefix_caching:
            raise SpecError(
                "serving.batching.prefix_caching: live replay draws independent prompts and the gateway routes "
                "cache-blind, so a live prefix cache is not compared with the simulated one yet; "
                "set prefix_caching: false to run live"
            )
        if batching.block_size != _CONTINUOUS_DEFAULTS.block_size:
            raise SpecError(f"serving.batching.block_size: a prefix-cache block; leave it at {_CONTINUOUS_DEFAULTS.block_size} to run live")
    if routing.policy in CACHE_ROUTERS:
        raise SpecError(
            f"serving.routing.policy {routing.policy!r}: it needs requests' prefixes, which the live gateway does not "
            "pass to its router yet; use a cache-blind policy to run live"
        )
    for name in CACHE_ROUTING_FIELDS:
        if getattr(routing, name) != getattr(_ROUTING_DEFAULTS, name):
            raise SpecError(f"serving.routing.{name}: a cache-aware router's knob; the live gateway runs no cache-aware router yet")
    for name in QueueSpec.model_fields:
        if getattr(queue, name) != getattr(_QUEUE_DEFAULTS, name):
            raise SpecError(
                f"serving.queue.{name}: the live gateway does not hold requests in a central queue yet; "
                "leave serving.queue out to run live"
            )


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
