"""The workload section: arrival processes, request classes and lengths, agent sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveInt, ValidationInfo, field_validator, model_validator

from testbed.spec.base import Duration, PartName, Rate, Strict, require_unique


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
        require_unique("stage", [s.name for s in value])
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
        require_unique("class", [c.name for c in value])
        return value

    @field_validator("client_regions")
    @classmethod
    def _shares_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(share < 0 for share in value.values()) or (value and sum(value.values()) <= 0):
            raise ValueError("client region shares must be non-negative with a positive sum")
        return value
