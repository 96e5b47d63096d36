"""The SLA section: objectives on latency percentiles, availability and turns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from testbed.spec.base import Duration, Strict, parse_fraction
from testbed.units import parse_duration, parse_rate


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
        "degraded_share",
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
                        data = {**data, bound: parse_fraction(raw)}
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
        if self.metric in ("availability", "error_rate", "goodput", "turn_availability", "degraded_share"):
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
