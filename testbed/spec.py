"""Every spec as a pydantic model, and YAML loading that fails with one readable message.

A scenario is topology + workload + serving policy + faults + SLA + duration + seed. Unknown keys
are errors (they are nearly always typos), and :class:`SpecError` names the file, the field
path, the bad value and what was expected, so the CLI can print it and exit 2 instead of showing
a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from testbed.catalog import DEVICES, MODELS, DeviceKind, ModelKind
from testbed.units import parse_bandwidth, parse_duration, parse_rate

Duration = Annotated[float, BeforeValidator(parse_duration)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
Bandwidth = Annotated[float, BeforeValidator(parse_bandwidth)]


def _parse_fraction(value: object) -> object:
    """Accept "99.9%" as well as 0.999 for shares and availability targets."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError("expected a fraction like 0.999 or a percentage like '99.9%'") from None
    return value


Fraction = Annotated[float, BeforeValidator(_parse_fraction), Field(ge=0.0, le=1.0)]


class SpecError(Exception):
    """A spec file could not be read or is invalid; the message is meant for people."""


PartName = Annotated[str, Field(min_length=1, pattern=r"^[^/\s]+$", description="a name without '/' or spaces: paths join names with '/'")]


class Strict(BaseModel):
    """Base for specs: unknown keys are typos, so they are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------- topology


class RackSpec(Strict):
    """A rack (or cluster) of identical nodes: one power and network failure domain."""

    name: PartName
    count: PositiveInt = Field(1, description="identical racks named NAME-0, NAME-1, ...")
    nodes: PositiveInt = Field(1, description="nodes per rack")
    device: str = Field(description="device kind: a built-in one (H100, A100, L4, cpu-fp32, cpu-int8) or one under devices:")
    devices_per_node: PositiveInt = 8
    tensor_parallel: PositiveInt = Field(1, description="devices per replica; must divide devices_per_node")
    pool: PartName = Field(
        "default", description="replica pool this rack serves; a workload stage may ask for a pool (e.g. a small model)"
    )
    model: str | None = Field(None, description="built-in model this rack serves; default: the topology's model")

    @field_validator("model")
    @classmethod
    def _known_rack_model(cls, value: str | None) -> str | None:
        if value is not None and value not in MODELS:
            raise ValueError(f"unknown model {value!r}; expected one of {sorted(MODELS)}")
        return value

    @model_validator(mode="after")
    def _tp_divides_node(self) -> RackSpec:
        if self.devices_per_node % self.tensor_parallel:
            raise ValueError(
                f"tensor_parallel ({self.tensor_parallel}) must divide devices_per_node ({self.devices_per_node})"
            )
        return self


class ZoneSpec(Strict):
    name: PartName
    racks: list[RackSpec] = Field(min_length=1)


class RegionSpec(Strict):
    name: PartName
    tier: Literal["primary", "fallback"] = Field(
        "primary", description="fallback regions take traffic only when the primary tier cannot"
    )
    zones: list[ZoneSpec] = Field(min_length=1)


class ProviderSpec(Strict):
    name: PartName
    regions: list[RegionSpec] = Field(min_length=1)


class LinkSpec(Strict):
    """Network path between two regions, named "provider/region"."""

    between: tuple[str, str]
    rtt: Duration
    bandwidth: Bandwidth | None = None


class TopologySpec(Strict):
    name: str
    description: str = ""
    model: str | ModelKind = Field("llama-3-8b", description="a built-in model name or a model shape")
    devices: dict[str, DeviceKind] = Field(default_factory=dict, description="extra device kinds")
    profiles: dict[str, str] = Field(
        default_factory=dict, description="device kind -> calibrated profile JSON (path relative to the file)"
    )
    providers: list[ProviderSpec] = Field(min_length=1)
    links: list[LinkSpec] = Field(default_factory=list)
    intra_region_rtt: Duration = 0.001
    default_rtt: Duration = Field(0.1, description="RTT between regions that no link names")

    @field_validator("profiles")
    @classmethod
    def _profiles_relative_to_spec_file(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        base = (info.context or {}).get("base_dir")
        if not base:
            return value
        return {kind: path if Path(path).is_absolute() else str(Path(base) / path) for kind, path in value.items()}

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | ModelKind) -> str | ModelKind:
        if isinstance(value, str) and value not in MODELS:
            raise ValueError(f"unknown model {value!r}; expected one of {sorted(MODELS)} or a model shape")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TopologySpec:
        known_devices = set(DEVICES) | set(self.devices)
        for p in self.providers:
            for r in p.regions:
                for z in r.zones:
                    for rack in z.racks:
                        if rack.device not in known_devices:
                            raise ValueError(
                                f"rack {p.name}/{r.name}/{z.name}/{rack.name}: unknown device {rack.device!r}; "
                                f"expected one of {sorted(known_devices)}"
                            )
        _require_unique("provider", [p.name for p in self.providers])
        for p in self.providers:
            _require_unique(f"region in {p.name}", [r.name for r in p.regions])
            for r in p.regions:
                _require_unique(f"zone in {p.name}/{r.name}", [z.name for z in r.zones])
                for z in r.zones:
                    racks = [f"{k.name}-{i}" if k.count > 1 else k.name for k in z.racks for i in range(k.count)]
                    _require_unique(f"rack in {p.name}/{r.name}/{z.name}", racks)
        regions = self.region_paths()
        for link in self.links:
            for end in link.between:
                if end not in regions:
                    raise ValueError(f"link names unknown region {end!r}; expected one of {regions}")
        return self

    def region_paths(self) -> list[str]:
        return [f"{p.name}/{r.name}" for p in self.providers for r in p.regions]

    def model_kind(self, name: str | None = None) -> ModelKind:
        """The topology's model, or the built-in model ``name`` a rack overrides it with."""
        if name is not None:
            return MODELS[name]
        return MODELS[self.model] if isinstance(self.model, str) else self.model

    def pools(self) -> list[str]:
        """Replica pools in declaration order ("default" unless racks name others)."""
        seen = dict.fromkeys(
            rack.pool for p in self.providers for r in p.regions for z in r.zones for rack in z.racks
        )
        return list(seen)

    def device_kind(self, name: str) -> DeviceKind:
        return self.devices.get(name) or DEVICES[name]


def _require_unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} name {name!r}")
        seen.add(name)


# --------------------------------------------------------------------------- workload


class PoissonArrivals(Strict):
    kind: Literal["poisson"]
    rate: Rate


class GammaArrivals(Strict):
    """Bursty arrivals: gamma inter-arrival times with a coefficient of variation above 1."""

    kind: Literal["gamma"]
    rate: Rate
    cv: float = Field(gt=0, description="coefficient of variation of inter-arrival times (1 = Poisson)")


class DiurnalArrivals(Strict):
    """A sinusoidal day: rate * (1 + amplitude * sin(2 pi (t - phase) / period))."""

    kind: Literal["diurnal"]
    rate: Rate = Field(description="mean rate")
    amplitude: float = Field(0.5, ge=0, le=1)
    period: Duration = 86400.0
    phase: Duration = 0.0


class RateStep(Strict):
    at: Duration
    rate: Rate


class StepArrivals(Strict):
    """Piecewise-constant Poisson rate: a step up, or a spike (up then down)."""

    kind: Literal["step"]
    rate: Rate = Field(description="rate before the first step")
    steps: list[RateStep] = Field(min_length=1)


class TraceArrivals(Strict):
    """Replay of a request trace: today's CSV (arrival_s, prompt_tokens, output_tokens) or a
    production trace format (see testbed/traces.py and docs/caching.md).

    One hour of one service can drive a larger fleet two ways, and the scenario says which:
    ``time_scale`` compresses time (0.25 = four times the rate, a quarter of the span), and
    ``copies`` overlays shifted copies (copy k's times moved by k x ``shift``, wrapped around the
    trace's span; its prefix ids kept apart, as other users of the same service).
    """

    kind: Literal["trace"]
    path: str
    format: Literal["csv", "azure", "mooncake", "burstgpt"] = Field(
        "csv",
        description="csv: arrival_s,prompt_tokens,output_tokens[,class,client_region]; azure: "
        "TIMESTAMP,ContextTokens,GeneratedTokens (2023 and 2024); mooncake: JSON lines with timestamp (ms), "
        "input_length, output_length, hash_ids; burstgpt: Timestamp,Model,Request tokens,Response tokens,"
        "Total tokens,Log Type (rows with 0 response tokens, failed in the original service, are dropped)",
    )
    time_scale: float = Field(1.0, gt=0, description="multiply trace times by this (0.5 = twice as fast)")
    copies: PositiveInt = Field(1, description="overlay this many copies of the trace")
    shift: Duration = Field(0.0, ge=0, description="copy k starts k x shift later, wrapped around the trace's span")

    @field_validator("path")
    @classmethod
    def _relative_to_spec_file(cls, value: str, info: ValidationInfo) -> str:
        """Trace paths are written relative to the scenario file, like topology paths."""
        base = (info.context or {}).get("base_dir")
        return str(Path(base) / value) if base and not Path(value).is_absolute() else value


ArrivalSpec = Annotated[
    Union[PoissonArrivals, GammaArrivals, DiurnalArrivals, StepArrivals, TraceArrivals],
    Field(discriminator="kind"),
]


class FixedLength(Strict):
    kind: Literal["fixed"]
    value: PositiveInt


class UniformLength(Strict):
    kind: Literal["uniform"]
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> UniformLength:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be at least low ({self.low})")
        return self


class LognormalLength(Strict):
    kind: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(gt=0)
    max: PositiveInt = 32768


class EmpiricalLength(Strict):
    kind: Literal["empirical"]
    values: list[PositiveInt] = Field(min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights_match(self) -> EmpiricalLength:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(f"weights has {len(self.weights)} entries but values has {len(self.values)}")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
        return self


LengthSpec = Annotated[
    Union[FixedLength, UniformLength, LognormalLength, EmpiricalLength], Field(discriminator="kind")
]


class RequestClass(Strict):
    """An SLA class: its share of traffic and its priority (0 is most important)."""

    name: str
    share: float = Field(gt=0)
    priority: NonNegativeInt = 0


class StageSpec(Strict):
    """One model call in an agent's turn, e.g. NLU or response generation."""

    name: PartName
    prompt_tokens: LengthSpec = FixedLength(kind="fixed", value=512)
    output_tokens: LengthSpec = FixedLength(kind="fixed", value=64)
    pool: PartName = Field("default", description="replica pool that serves this stage (a smaller model, say)")
    slo: Duration = Field(description="this stage's latency objective; also the agent's first latency estimate")
    optional: bool = Field(False, description="the agent loop may skip it when the turn's budget is short")
    downgrade_pool: PartName | None = Field(
        None, description="pool the agent loop switches this stage to when the turn's budget is short"
    )
    repeat_probability: float = Field(
        0.0, ge=0, lt=1, description="tool-call loop: after each call, the stage runs again with this probability"
    )
    max_repeats: NonNegativeInt = Field(3, description="at most this many extra calls of the stage per turn")


class AgentSpec(Strict):
    """Multi-turn agent sessions: each turn runs its stages in order within a turn budget.

    ``adaptation`` says where the turn's deadline is acted on. ``none``: every call gets only
    the serving timeout. ``gateway``: the remaining turn budget travels with each call as its
    deadline and the gateway cancels calls that overrun it — it sees single calls, so it can only
    cut work off. ``agent``: the same propagation, and the agent loop itself skips optional
    stages and downgrades stages to their ``downgrade_pool`` when its latency estimates say the
    rest of the turn will not fit in what is left of the budget.
    """

    share: float = Field(gt=0, le=1, description="share of arrivals that start a session instead of a single call")
    turns: LengthSpec = Field(description="turns per session")
    think_time: Duration = Field(description="mean (exponential) pause between a turn's answer and the next turn")
    turn_budget: Duration = Field(description="end-to-end latency budget of one turn")
    adaptation: Literal["none", "gateway", "agent"] = "gateway"
    stages: list[StageSpec] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _stages_unique(cls, value: list[StageSpec]) -> list[StageSpec]:
        _require_unique("stage", [s.name for s in value])
        return value


class SystemPromptSpec(Strict):
    """Shared system prompts: each request class has ``count`` prompts of ``tokens`` tokens, and
    every request starts with one of its class's, drawn uniformly (``prompt_tokens`` is then the
    user part that follows)."""

    count: PositiveInt
    tokens: PositiveInt


class ChatSpec(Strict):
    """Synthetic multi-turn chat: arrivals continue conversations, each turn's prompt being the
    previous turn's prompt and answer plus the new user message (``prompt_tokens``)."""

    turns: LengthSpec = Field(description="turns per conversation")
    max_context: PositiveInt = Field(32768, description="a conversation whose next prompt would exceed this ends")


class PrefixSpec(Strict):
    """Prefix structure of the workload: which requests share leading KV blocks."""

    block_tokens: PositiveInt = Field(
        16, description="tokens per block id of the chain; a multiple of the cache's block_size"
    )
    system_prompts: SystemPromptSpec | None = None
    chat: ChatSpec | None = None
    agent_context: bool = Field(
        False, description="agent sessions: every call's prompt extends the session's conversation so far"
    )

    @model_validator(mode="after")
    def _aligned(self) -> PrefixSpec:
        if self.system_prompts is not None and self.system_prompts.tokens % self.block_tokens:
            raise ValueError(
                f"system_prompts.tokens ({self.system_prompts.tokens}) must be a multiple of block_tokens ({self.block_tokens})"
            )
        return self


class WorkloadSpec(Strict):
    arrival: ArrivalSpec
    prompt_tokens: LengthSpec = FixedLength(kind="fixed", value=512)
    output_tokens: LengthSpec = FixedLength(kind="fixed", value=128)
    classes: list[RequestClass] = Field(default_factory=lambda: [RequestClass(name="default", share=1.0)])
    client_regions: dict[str, float] = Field(
        default_factory=dict,
        description="share of clients near each region ('provider/region'); empty = spread over primary regions",
    )
    agents: AgentSpec | None = Field(None, description="agent sessions: a share of arrivals start multi-stage sessions")
    prefix: PrefixSpec | None = Field(None, description="shared prefixes (system prompts, chat, agent context)")

    @model_validator(mode="after")
    def _one_prefix_source(self) -> WorkloadSpec:
        if self.prefix is not None and isinstance(self.arrival, TraceArrivals) and self.arrival.format == "mooncake":
            raise ValueError("a mooncake trace brings its own prefix structure (hash_ids): drop workload.prefix")
        if self.prefix is not None and self.prefix.agent_context and self.agents is None:
            raise ValueError("prefix.agent_context needs workload.agents")
        return self

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, value: list[RequestClass]) -> list[RequestClass]:
        _require_unique("class", [c.name for c in value])
        return value

    @field_validator("client_regions")
    @classmethod
    def _shares_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(share < 0 for share in value.values()) or (value and sum(value.values()) <= 0):
            raise ValueError("client region shares must be non-negative with a positive sum")
        return value


# --------------------------------------------------------------------------- serving


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


# --------------------------------------------------------------------------- faults


class _ScriptedFault(Strict):
    """A fault at a scripted time: ``target`` is a topology path such as ``aws/us-east-1``."""

    target: str
    at: Duration = Field(description="when the fault starts")
    duration: Duration | None = Field(None, description="how long until repaired; omitted = never repaired")


class AcceleratorFailure(_ScriptedFault):
    """A device dies (Xid, uncorrectable ECC): the replica using it dies, its requests fail."""

    kind: Literal["accelerator_failure"]


class NodeCrash(_ScriptedFault):
    """A node crashes: every replica on it dies."""

    kind: Literal["node_crash"]


class NodeHang(_ScriptedFault):
    """Gray failure: replicas stop making progress but accept connections and pass shallow checks."""

    kind: Literal["node_hang"]


class Outage(_ScriptedFault):
    """A correlated failure of a whole domain: rack power, zone, region or provider."""

    kind: Literal["outage"]


class CapacityLoss(_ScriptedFault):
    """A supply shock: a share of the domain's replicas is withdrawn (chosen by a named stream)."""

    kind: Literal["capacity_loss"]
    share: Fraction


class Slowdown(_ScriptedFault):
    """Thermal throttling or a straggler: devices run at ``speed`` times their normal speed."""

    kind: Literal["slowdown"]
    speed: float = Field(gt=0, le=1, description="fraction of normal speed, e.g. 0.5")


class MemoryPressure(_ScriptedFault):
    """KV-cache capacity cut to ``kv_fraction``: preemption and recompute."""

    kind: Literal["memory_pressure"]
    kv_fraction: float = Field(gt=0, le=1)


class ErrorInjection(_ScriptedFault):
    """Replicas answer a share of requests with an error status (429, 500, 503, 400...)."""

    kind: Literal["error_injection"]
    rate: Fraction
    status: int = Field(500, ge=400, le=599)


class _NetworkFault(Strict):
    """A fault on the path between two endpoints: region paths, or ``clients:<region>`` for the
    clients near a region. It applies in both directions."""

    between: tuple[str, str]
    at: Duration
    duration: Duration | None = None


class Partition(_NetworkFault):
    """Nothing crosses: requests on the path time out (packets are dropped, not refused)."""

    kind: Literal["partition"]


class AddedLatency(_NetworkFault):
    kind: Literal["latency"]
    delay: Duration
    jitter: Duration = 0.0


class PacketLoss(_NetworkFault):
    kind: Literal["packet_loss"]
    loss: Fraction


class BandwidthLimit(_NetworkFault):
    kind: Literal["bandwidth"]
    limit: Bandwidth


class FailureProcess(Strict):
    """Stochastic failures of every domain at ``level`` within ``within``, from MTBF and MTTR.

    Each domain fails independently: time to failure and time to repair are drawn from
    ``distribution`` (exponential; Weibull with ``shape``; lognormal with ``shape`` as sigma)
    scaled to the given means, from the process's own named random stream.
    """

    kind: Literal["failure_process"]
    level: Literal["device", "node", "rack", "zone", "region", "provider"]
    within: str = Field("fleet", description="topology path the process covers (default: the whole fleet)")
    effect: Literal["accelerator_failure", "node_crash", "node_hang", "outage", "slowdown"] = "outage"
    speed: float = Field(0.5, gt=0, le=1, description="slowdown effect: fraction of normal speed")
    mtbf: Duration
    mttr: Duration
    distribution: Literal["exponential", "weibull", "lognormal"] = "exponential"
    shape: float = Field(1.0, gt=0, description="Weibull shape k, or lognormal sigma")
    name: str | None = Field(None, description="names the random stream; default derived from level and within")


FaultSpec = Annotated[
    Union[
        AcceleratorFailure,
        NodeCrash,
        NodeHang,
        Outage,
        CapacityLoss,
        Slowdown,
        MemoryPressure,
        ErrorInjection,
        Partition,
        AddedLatency,
        PacketLoss,
        BandwidthLimit,
        FailureProcess,
    ],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- SLA

LATENCY_METRICS = ("ttft", "tpot", "e2e", "turn_latency")
TURN_METRICS = ("turn_latency", "turn_availability")


class Objective(Strict):
    """One SLA line, e.g. p99 TTFT of the interactive class at most 2 s."""

    metric: Literal[
        "ttft",
        "tpot",
        "e2e",
        "availability",
        "error_rate",
        "throughput",
        "token_throughput",
        "goodput",
        "turn_latency",
        "turn_availability",
    ]
    percentile: float | None = Field(None, gt=0, lt=100)
    max: float | None = None
    min: float | None = None
    request_class: str | None = Field(None, alias="class", description="restrict to one SLA class")
    stage: str | None = Field(None, description="restrict to the calls of one agent stage")
    window: Literal["all", "during_faults", "after_faults"] = Field(
        "all", description="judge all requests, those that arrived during faults, or after the last repair"
    )
    ttft: Duration | None = Field(None, description="goodput: TTFT limit a request must meet")
    tpot: Duration | None = Field(None, description="goodput: TPOT limit a request must meet")

    @model_validator(mode="before")
    @classmethod
    def _parse_limits(cls, data: Any) -> Any:
        """Latency limits are durations ("2s"); shares accept "99.9%"; throughputs accept "250/s"."""
        if not isinstance(data, dict):
            return data
        metric = data.get("metric")
        for bound in ("max", "min"):
            if bound in data and isinstance(data[bound], str):
                raw = data[bound]
                try:
                    if metric in LATENCY_METRICS:
                        data = {**data, bound: parse_duration(raw)}
                    elif metric in ("throughput", "token_throughput"):
                        data = {**data, bound: parse_rate(raw)}
                    else:
                        data = {**data, bound: _parse_fraction(raw)}
                except ValueError as exc:
                    raise ValueError(f"{bound}: {exc}") from None
        return data

    @model_validator(mode="after")
    def _complete(self) -> Objective:
        if (self.max is None) == (self.min is None):
            raise ValueError("give exactly one of max or min")
        if self.metric in LATENCY_METRICS:
            if self.percentile is None:
                raise ValueError(f"{self.metric} needs a percentile (e.g. percentile: 99)")
            if self.max is None:
                raise ValueError(f"{self.metric} is a latency: give max")
        elif self.percentile is not None:
            raise ValueError(f"percentile applies only to {LATENCY_METRICS}")
        if self.metric == "goodput" and (self.ttft is None or self.tpot is None):
            raise ValueError("goodput needs both ttft and tpot limits")
        if self.metric in TURN_METRICS and self.stage is not None:
            raise ValueError(f"{self.metric} judges whole turns: it cannot be restricted to a stage")
        if self.metric in ("availability", "error_rate", "goodput", "turn_availability"):
            limit = self.max if self.max is not None else self.min
            if not 0 <= limit <= 1:  # type: ignore[operator]
                raise ValueError(f"{self.metric} is a share: expected a limit between 0 and 1 (or a percentage)")
        return self

    @property
    def label(self) -> str:
        """Short human name, e.g. 'p99 ttft [interactive]'."""
        name = f"p{self.percentile:g} {self.metric}" if self.percentile is not None else self.metric
        if self.window != "all":
            name += f" ({self.window.replace('_', ' ')})"
        scope = "/".join(s for s in (self.request_class, self.stage and f"stage {self.stage}") if s)
        return f"{name} [{scope}]" if scope else name


# --------------------------------------------------------------------------- observability


class BurnWindow(Strict):
    """One multi-window burn-rate alert (Google SRE workbook): both windows must burn at ``burn``."""

    long: Duration = Field(gt=0)
    short: Duration = Field(gt=0)
    burn: float = Field(gt=0, description="error-budget burn rate both windows must exceed")
    severity: Literal["page", "ticket"] = "page"


class BurnRateSpec(Strict):
    """Burn-rate alerts on every SLA objective that has an error budget (availability, latency)."""

    enabled: bool = True
    windows: list[BurnWindow] = Field(
        default_factory=lambda: [
            BurnWindow(long=3600.0, short=300.0, burn=14.4, severity="page"),
            BurnWindow(long=21600.0, short=1800.0, burn=6.0, severity="ticket"),
        ]
    )
    min_requests: PositiveInt = Field(20, description="no alert on a short window with fewer requests")


class ChangePointSpec(Strict):
    """One-sided CUSUM on latency and error-rate series of the fleet, regions, client regions,
    nodes and agent stages, against an EWMA baseline that only learns from normal windows."""

    enabled: bool = True
    threshold: float = Field(6.0, gt=0, description="CUSUM alarm level, in baseline deviations")
    drift: float = Field(1.0, ge=0, description="slack per window subtracted before accumulating")
    alpha: float = Field(0.2, gt=0, le=1, description="EWMA weight of the newest normal window")
    min_history: PositiveInt = Field(3, description="windows of history before a series may alarm")
    relative_floor: float = Field(0.25, gt=0, description="latency deviation floor: this share of the baseline")
    error_floor: float = Field(0.01, gt=0, description="error-rate deviation floor (absolute share)")
    min_requests: PositiveInt = Field(10, description="windows with fewer requests are skipped")


class HealthSignalSpec(Strict):
    """Alerts from the gateway's health probes and from replicas that hold work but finish nothing."""

    enabled: bool = True
    min_expected: float = Field(3.0, ge=0, description="a replica is silent only if it usually finishes this many per window")


class DetectorsSpec(Strict):
    burn_rate: BurnRateSpec = BurnRateSpec()
    change_point: ChangePointSpec = ChangePointSpec()
    health: HealthSignalSpec = HealthSignalSpec()


class DetectObjective(Strict):
    kinds: list[str] = Field(min_length=1, description="fault kinds, e.g. [outage, node_hang]")
    within: Duration = Field(gt=0, description="every such fault detected this soon after it starts")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        known = sorted({"accelerator_failure", "node_crash", "node_hang", "outage", "capacity_loss", "slowdown",
                        "memory_pressure", "error_injection", "partition", "latency", "packet_loss", "bandwidth"})
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; expected some of {known}")
        return kinds


class ObservabilityObjective(Strict):
    """One observability SLA line; give exactly one of its fields."""

    detect: DetectObjective | None = None
    false_alerts_per_day: float | None = Field(None, ge=0, description="at most this many alerts per day outside faults")
    root_cause_top1: Fraction | None = Field(None, description="at least this share of detected faults ranked first")
    root_cause_top3: Fraction | None = None
    precision: Fraction | None = None
    recall: Fraction | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ObservabilityObjective:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {list(type(self).model_fields)} (got {given or 'none'})")
        return self


class ObservabilitySpec(Strict):
    """Telemetry, detectors and the observability SLA of a scenario (testbed/observe/)."""

    enabled: bool = True
    window: Duration | None = Field(None, gt=0, description="metrics window; default the timeseries_interval")
    trace_sample: Fraction = Field(0.01, description="share of requests exported as traces (plus all failed/retried/hedged)")
    match_grace: Duration = Field(60.0, ge=0, description="an alert this long after a fault ends still belongs to it")
    detectors: DetectorsSpec = DetectorsSpec()
    objectives: list[ObservabilityObjective] = Field(default_factory=list)


# --------------------------------------------------------------------------- scenario


class Scenario(Strict):
    """Topology + workload + serving + faults + SLA + duration + seed: one runnable experiment."""

    name: str
    description: str = ""
    topology: TopologySpec
    workload: WorkloadSpec
    serving: ServingSpec = ServingSpec()
    faults: list[FaultSpec] = Field(default_factory=list, description="scripted faults and failure processes")
    sla: list[Objective] = Field(default_factory=list)
    duration: Duration
    warmup: Duration = Field(0.0, description="requests arriving before this are left out of verdicts")
    drain: Duration = Field(
        600.0, description="after duration, arrivals stop and in-flight requests get this long to finish"
    )
    seed: int = 0
    timeseries_interval: Duration = 10.0
    observability: ObservabilitySpec = ObservabilitySpec()

    @field_validator("topology", mode="before")
    @classmethod
    def _load_topology_file(cls, value: Any, info: ValidationInfo) -> Any:
        """A string is a topology file relative to the scenario file; its own errors name it."""
        if isinstance(value, str):
            base = Path((info.context or {}).get("base_dir", "."))
            return load_spec(base / value, TopologySpec)
        return value

    @field_validator("duration")
    @classmethod
    def _positive_duration(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a positive duration")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Scenario:
        regions = self.topology.region_paths()
        for region in self.workload.client_regions:
            if region not in regions:
                raise ValueError(f"workload.client_regions names unknown region {region!r}; expected one of {regions}")
        classes = {c.name for c in self.workload.classes}
        for objective in self.sla:
            if objective.request_class is not None and objective.request_class not in classes:
                raise ValueError(
                    f"sla objective {objective.label} names unknown class {objective.request_class!r}; "
                    f"expected one of {sorted(classes)}"
                )
        self._check_agent_references()
        self._check_prefix_blocks()
        if self.warmup >= self.duration:
            raise ValueError("warmup must be shorter than duration")
        if self.faults:
            from testbed.faults import validate_targets  # faults needs the topology graph, which needs this module
            from testbed.topology import Topology

            validate_targets(self.faults, Topology.from_spec(self.topology))
        return self

    def _check_prefix_blocks(self) -> None:
        """The prefix cache holds whole chain blocks: their size must be a multiple of its block size."""
        batching = self.serving.batching
        if not isinstance(batching, ContinuousBatching) or not batching.prefix_caching:
            return
        arrival, prefix = self.workload.arrival, self.workload.prefix
        if isinstance(arrival, TraceArrivals) and arrival.format == "mooncake":
            block_tokens, source = 512, "the mooncake trace's hash_ids cover 512 tokens each"
        elif prefix is not None:
            block_tokens, source = prefix.block_tokens, f"workload.prefix.block_tokens is {prefix.block_tokens}"
        else:
            return
        if block_tokens % batching.block_size:
            raise ValueError(
                f"serving.batching.block_size ({batching.block_size}) must divide the workload's block size: {source}"
            )

    def _check_agent_references(self) -> None:
        """Stages must name pools the topology has; stage objectives must name stages."""
        agents = self.workload.agents
        stages = [s.name for s in agents.stages] if agents else []
        pools = self.topology.pools()
        if "default" not in pools:
            raise ValueError(f"topology has pools {pools} but no 'default' pool: single requests are served by 'default'")
        for stage in agents.stages if agents else []:
            for field_name in ("pool", "downgrade_pool"):
                pool = getattr(stage, field_name)
                if pool is not None and pool not in pools:
                    raise ValueError(
                        f"workload.agents stage {stage.name!r} {field_name} {pool!r} is not a pool of the topology; "
                        f"expected one of {pools}"
                    )
        for objective in self.sla:
            if objective.stage is not None and objective.stage not in stages:
                raise ValueError(
                    f"sla objective {objective.label} names unknown stage {objective.stage!r}; expected one of {stages}"
                )
            if objective.metric in TURN_METRICS and agents is None:
                raise ValueError(f"sla objective {objective.label} needs workload.agents: there are no turns to judge")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Scenario:
        return load_spec(path, cls)

    def to_yaml(self) -> str:
        """The scenario as a self-contained YAML document (topology inlined)."""
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True, exclude_defaults=True), sort_keys=False)


# --------------------------------------------------------------------------- loading


def load_spec(path: str | Path, model: type[BaseModel]) -> Any:
    """Read YAML at ``path`` into ``model``, or raise :class:`SpecError` with one clear message."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return validate_spec(data, model, source=str(path), base_dir=path.parent)


def validate_spec(data: dict[str, Any], model: type[BaseModel], source: str, base_dir: Path | str = ".") -> Any:
    """Validate already-parsed data (e.g. from the explorer) with the same error messages."""
    try:
        return model.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        raise SpecError(format_validation_error(source, exc)) from None


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: file, dotted field path, what was wrong, the value given."""
    lines = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif error["type"] == "missing":
            message = "required field is missing"
        line = f"{source}: {location}: {message}"
        if error["type"] not in ("missing",) and "input" in error and not isinstance(error["input"], dict):
            line += f" (got {error['input']!r})"
        lines.append(line)
    return "\n".join(lines)
