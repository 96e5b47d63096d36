"""The observability section: detectors (burn rate, change points, health signals) and the
objectives on how fast they notice faults.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from testbed.spec.base import Duration, Fraction, Strict


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


TraceMode = Literal["sampled", "all", "none"]


class ObservabilitySpec(Strict):
    """Telemetry, detectors and the observability SLA of a scenario (testbed/observe/)."""

    enabled: bool = True
    window: Duration | None = Field(None, gt=0, description="metrics window; default the timeseries_interval")
    traces: TraceMode = Field(
        "sampled",
        description="which requests leave an OpenTelemetry trace: sampled (every failed, retried, hedged, migrated, failed-over "
        "or degraded request plus trace_sample of the rest, by a seeded hash of the request id), all, or none",
    )
    # 0.1%: a fleet-day (issue 17: ~200M requests) at 1% would write two million traces, ~6 GB.
    trace_sample: Fraction = Field(0.001, description="with traces: sampled, the share of the other requests traced too")
    match_grace: Duration = Field(60.0, ge=0, description="an alert this long after a fault ends still belongs to it")
    detectors: DetectorsSpec = DetectorsSpec()
    objectives: list[ObservabilityObjective] = Field(default_factory=list)
