"""The serving section: batching, routing, timeouts, retries, hedging, breakers, health checks,
admission and failover policies.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from testbed.spec.base import Duration, Fraction, Strict


class ContinuousBatching(Strict):
    """vLLM-style iteration-level batching with a paged KV cache and preemption by recompute."""

    policy: Literal["continuous"]
    max_num_seqs: PositiveInt = 256
    max_num_batched_tokens: PositiveInt = 8192
    kv_cache_fraction: float = Field(
        0.9, gt=0, le=1, description="share of device memory left after weights that holds the KV cache"
    )
    kv_cache_tokens: PositiveInt | None = Field(None, description="override the KV capacity derived from memory")
    prefix_caching: bool = Field(False, description="reuse KV blocks of cached prompt prefixes (vLLM automatic prefix caching)")
    block_size: PositiveInt = Field(16, description="prefix cache: tokens per KV block")
    chunked_prefill: bool = Field(
        False, description="one token budget per iteration: decode tokens first, then chunks of prompts (Sarathi-Serve)"
    )


class MicroBatching(Strict):
    """Triton / Ray Serve style dynamic batching: a batch runs to completion before the next."""

    policy: Literal["micro"]
    max_batch_size: PositiveInt = 8
    max_queue_delay: Duration = 0.01
    adaptive: bool = Field(False, description="tune max_queue_delay against target_latency from observed latency")
    target_latency: Duration | None = Field(None, description="end-to-end target that adaptive mode steers to")
    prefix_caching: bool = Field(
        False, description="reuse KV blocks of cached prompt prefixes (the built-in engine's block-level prefix cache)"
    )
    block_size: PositiveInt = Field(16, description="prefix cache: tokens per KV block")

    @model_validator(mode="after")
    def _adaptive_needs_target(self) -> MicroBatching:
        if self.adaptive and self.target_latency is None:
            raise ValueError("adaptive micro-batching needs target_latency")
        return self


BatchingSpec = Annotated[Union[ContinuousBatching, MicroBatching], Field(discriminator="policy")]


class RoutingSpec(Strict):
    policy: Literal[
        "round_robin",
        "least_outstanding",
        "power_of_two",
        "region_affine",
        "prefix_affinity",
        "cache_aware",
        "session_affinity",
    ] = "least_outstanding"
    spill_threshold: PositiveInt = Field(
        64,
        description="region_affine: outstanding requests per replica above which traffic spills to the nearest region; "
        "session_affinity: above which a session spills off its replica",
    )
    prefix_blocks: PositiveInt = Field(4, description="prefix_affinity: leading block ids hashed onto the ring")
    load_factor: float = Field(
        1.25, gt=1, description="prefix_affinity: a replica takes a request only below this times the mean load"
    )
    cache_weight: float = Field(1.0, ge=0, description="cache_aware: weight of the share of the prompt believed cached")
    load_weight: float = Field(1.0, ge=0, description="cache_aware: weight of the replica's load (outstanding / slots)")


class QueueSpec(Strict):
    """Late binding: the gateway holds requests and dispatches one when a replica has a free slot.

    Most important priority first; within a priority, classes take turns (round robin), FIFO
    within a class. A request that waits ``max_wait`` or finds ``max_length`` waiting is shed.
    """

    enabled: bool = False
    slots_per_replica: PositiveInt | None = Field(
        None, description="requests a replica runs at once before the gateway holds the next; default its max_num_seqs"
    )
    max_wait: Duration | None = Field(None, gt=0, description="shed a request that waited this long")
    max_length: PositiveInt | None = Field(None, description="shed arrivals that find this many waiting")


class TimeoutSpec(Strict):
    """Deadlines: the client's, which replicas inherit, and how long a dead replica takes to notice."""

    request: Duration = Field(60.0, gt=0, description="client deadline from arrival; propagates to replicas")
    connect: Duration = Field(1.0, gt=0, description="how long an attempt to an unreachable replica takes to fail")


class RetrySpec(Strict):
    """Retries with capped exponential backoff and jitter, bounded by a retry budget.

    The budget (Finagle / Envoy style) stops a retry storm: over a sliding window, retries may
    add at most ``budget_ratio`` of the requests plus ``budget_min_per_s`` per second.
    """

    max_attempts: PositiveInt = Field(3, description="attempts per request including the first (1 = no retries)")
    backoff: Duration = Field(0.05, description="base backoff, doubled per retry")
    max_backoff: Duration = Field(2.0, description="cap on the backoff before jitter")
    jitter: Literal["full", "equal", "none"] = Field(
        "full", description="full = uniform(0, d); equal = d/2 + uniform(0, d/2); none = d"
    )
    budget_ratio: float = Field(0.2, ge=0, description="retries may add at most this share of requests")
    budget_min_per_s: float = Field(10.0, ge=0, description="retries per second always allowed (low traffic)")
    on: list[Literal["failed", "timeout", "unavailable"]] = Field(
        default_factory=lambda: ["failed", "timeout", "unavailable"], description="attempt outcomes that are retried"
    )

    @model_validator(mode="after")
    def _cap_covers_base(self) -> RetrySpec:
        if self.max_backoff < self.backoff:
            raise ValueError(f"max_backoff ({self.max_backoff}) must be at least backoff ({self.backoff})")
        return self


class HedgingSpec(Strict):
    """Send a duplicate attempt when the first is slow to produce its first token; first one wins."""

    enabled: bool = False
    delay: Duration | None = Field(None, description="fixed hedge delay; omitted = adaptive from observed TTFT")
    percentile: float = Field(95.0, gt=0, lt=100, description="adaptive: hedge after this percentile of recent TTFTs")
    max_hedges: NonNegativeInt = Field(1, description="extra attempts per request at most")


class CircuitBreakerSpec(Strict):
    """Per-replica breaker: open after consecutive failures, probe again after ``open_for``."""

    enabled: bool = True
    consecutive_failures: PositiveInt = 5
    open_for: Duration = Field(10.0, gt=0)
    half_open_probes: PositiveInt = Field(1, description="trial requests let through when half-open")


class OutlierEjectionSpec(Strict):
    """Envoy-style outlier ejection: consecutive errors eject a replica for a growing time."""

    enabled: bool = True
    consecutive_errors: PositiveInt = 5
    base_ejection: Duration = Field(30.0, gt=0, description="ejection time = base_ejection * times ejected")
    max_ejected_share: Fraction = Field(0.5, description="never eject more than this share of replicas at once")


class HealthCheckSpec(Strict):
    """Active health checks. A shallow check only sees the process answer, so it passes a hung
    replica; a deep one runs a tiny inference and catches it."""

    enabled: bool = True
    period: Duration = Field(5.0, gt=0)
    timeout: Duration = Field(1.0, gt=0)
    unhealthy_threshold: PositiveInt = Field(2, description="consecutive failed probes before a replica is unhealthy")
    healthy_threshold: PositiveInt = Field(2, description="consecutive passed probes before it is healthy again")
    deep: bool = Field(False, description="run a tiny inference instead of only checking the process answers")


class AdmissionSpec(Strict):
    """Admission control and load shedding by priority (0 is most important)."""

    max_queue_per_replica: PositiveInt | None = Field(
        None, description="reject when the chosen replica already has this many requests; omitted = unlimited"
    )
    shed_thresholds: dict[NonNegativeInt, Fraction] = Field(
        default_factory=dict,
        description="priority -> fleet load share above which that priority and less important ones are shed",
    )


class FailoverSpec(Strict):
    """Whether requests may leave their home region and whether the fallback tier is used."""

    enabled: bool = Field(True, description="False = requests only go to their home region")
    fallback_tier: bool = Field(True, description="use fallback-tier replicas when no primary is available")


class ServingSpec(Strict):
    batching: BatchingSpec = ContinuousBatching(policy="continuous")
    routing: RoutingSpec = RoutingSpec()
    timeouts: TimeoutSpec = TimeoutSpec()
    retries: RetrySpec = RetrySpec()
    hedging: HedgingSpec = HedgingSpec()
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec()
    outlier_ejection: OutlierEjectionSpec = OutlierEjectionSpec()
    health_check: HealthCheckSpec = HealthCheckSpec()
    admission: AdmissionSpec = AdmissionSpec()
    failover: FailoverSpec = FailoverSpec()
    queue: QueueSpec = QueueSpec()
