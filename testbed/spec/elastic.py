"""The ``elastic:`` section of a scenario: fleets that grow, shrink, lose spot capacity and degrade.

Without the section a scenario's fleet is fixed, exactly as before. With it, the topology's
replicas of a pool are the *slots* the pool may fill: an autoscaler decides how many are wanted,
each new replica pays the lifecycle chain (node, image, weights, warm-up) within the region's
quota and outside stockouts, spot replicas are reclaimed after a notice, and the gateway drains
and migrates. See docs/elastic-fleets.md for the knobs and where each default comes from.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from testbed.spec.base import Bandwidth, Duration, Fraction, PartName, Rate, Strict

AUTOSCALER_METRICS = ("ongoing_requests", "queue_depth", "kv_utilisation", "latency")


class AutoscalerSpec(Strict):
    """Ray Serve autoscaling_config / Kubernetes HPA knobs for one pool.

    The wanted count is ``ceil(serving * observed / target)`` (HPA's formula; Ray Serve's for
    ongoing requests). A rise must hold for ``upscale_delay`` and a fall for ``downscale_delay``
    before it is acted on (HPA's stabilisation windows; Ray Serve's delays), and one decision moves
    at most ``max_step_up`` / ``max_step_down`` replicas (HPA scaling policies).
    """

    metric: Literal["ongoing_requests", "queue_depth", "kv_utilisation", "latency"] = Field(
        "ongoing_requests",
        description="per serving replica: requests in flight, requests queued, KV-cache share used, or a TTFT percentile",
    )
    target: PositiveFloat = Field(description="wanted value of the metric per replica (seconds for latency, a share for KV)")
    percentile: float = Field(95.0, gt=0, lt=100, description="latency metric: which TTFT percentile")
    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt
    initial_replicas: NonNegativeInt | None = Field(None, description="serving at the start; default min_replicas")
    interval: Duration = Field(10.0, gt=0, description="how often metrics are read and a decision made (Ray: 10 s)")
    upscale_delay: Duration = Field(30.0, ge=0, description="a rise must hold this long (Ray default 30 s)")
    downscale_delay: Duration = Field(600.0, ge=0, description="a fall must hold this long (Ray default 600 s, HPA 300 s)")
    max_step_up: PositiveInt | None = Field(None, description="at most this many replicas added per decision")
    max_step_down: PositiveInt | None = Field(None, description="at most this many replicas removed per decision")
    tolerance: float = Field(0.1, ge=0, lt=1, description="no change while observed/target is within 1 +- tolerance (HPA 0.1)")
    scale_to_zero: bool = Field(False, description="allow 0 replicas when idle (min_replicas must then be 0)")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalerSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        if self.min_replicas == 0 and not self.scale_to_zero:
            raise ValueError("min_replicas 0 needs scale_to_zero: true")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas ({initial}) must lie within min_replicas..max_replicas")
        if self.metric == "kv_utilisation" and self.target > 1:
            raise ValueError("kv_utilisation is a share: expected a target between 0 and 1")
        return self


class SpotSpec(Strict):
    """Spot replicas for a pool, reclaimed by a preemption process after a notice (SkyServe-style fallback)."""

    share: Fraction = Field(1.0, description="share of the pool's new replicas requested as spot")
    preemption_rate: Rate = Field(description="preemptions per spot replica, e.g. '0.5/h'")
    notice: Duration | None = Field(None, description="warning before reclaim; default the provider's (AWS 2 min, GCP 30 s)")
    fallback: Literal["on_demand", "none"] = Field(
        "on_demand", description="on a preemption or a spot stockout, ask for on-demand replicas instead"
    )
    fallback_hold: Duration = Field(600.0, ge=0, description="how long after a preemption the region asks for on-demand")


class QuantizeStep(Strict):
    """Switch the pool's replicas to a quantized variant: faster, lower quality."""

    action: Literal["quantize"]
    speedup: float = Field(1.6, gt=1, description="iteration speed relative to the full-precision weights")


class CapTokensStep(Strict):
    """Cap new requests' max_tokens: shorter answers, shorter decode."""

    action: Literal["cap_max_tokens"]
    max_tokens: PositiveInt


class RouteClassStep(Strict):
    """Send one request class to a smaller model's pool."""

    action: Literal["route_class"]
    request_class: str = Field(alias="class")
    to_pool: PartName


DegradationStep = Annotated[Union[QuantizeStep, CapTokensStep, RouteClassStep], Field(discriminator="action")]


class DegradationSpec(Strict):
    """A ladder climbed one step at a time while the pool is overloaded, descended when it is not.

    Load is in-flight requests over the slots of the pool's serving replicas, so losing capacity
    raises it as surely as a burst does.
    """

    steps: list[DegradationStep] = Field(min_length=1)
    enter_load: float = Field(0.9, gt=0, description="climb a step when load stays above this for hold")
    exit_load: float = Field(0.5, gt=0, description="descend a step when load stays below this for hold")
    hold: Duration = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _hysteresis(self) -> DegradationSpec:
        if self.exit_load >= self.enter_load:
            raise ValueError(f"exit_load ({self.exit_load}) must be below enter_load ({self.enter_load}) or the ladder flaps")
        return self


class PoolElasticSpec(Strict):
    autoscaler: AutoscalerSpec | None = None
    spot: SpotSpec | None = None
    degradation: DegradationSpec | None = None


class LifecycleSpec(Strict):
    """Overrides of the lifecycle chain's built-in constants (testbed/cloud.py)."""

    provisioning: Duration | None = Field(None, ge=0, description="node acquisition; default per provider")
    image_pull: Duration | None = Field(None, ge=0)
    storage_bandwidth: Bandwidth | None = Field(None, description="weights stream at this rate; default 1 GB/s")
    warmup: Duration | None = Field(None, ge=0)
    drain_timeout: Duration | None = Field(None, ge=0, description="after this, a draining replica's work migrates")


class MigrationSpec(Strict):
    """Resume a stream cut mid-generation on another replica (NVIDIA Dynamo's --migration-limit)."""

    enabled: bool = True
    limit: NonNegativeInt = Field(3, description="migrations per request at most")


class RolloutSpec(Strict):
    """A rolling deployment: every replica of ``pool`` is replaced, ``max_surge`` at a time."""

    at: Duration
    pool: PartName = "default"
    max_surge: PositiveInt = 1


class CostSpec(Strict):
    prices: dict[str, PositiveFloat] = Field(default_factory=dict, description="$ per device-hour by device kind")
    spot_price_factor: float = Field(0.35, gt=0, le=1, description="spot price as a share of on-demand")


class ElasticSpec(Strict):
    pools: dict[PartName, PoolElasticSpec] = Field(default_factory=dict)
    lifecycle: LifecycleSpec = LifecycleSpec()
    quotas: dict[str, dict[str, NonNegativeInt]] = Field(
        default_factory=dict, description="region path -> device kind -> devices at most (tensor-parallel replicas count each device)"
    )
    migration: MigrationSpec = MigrationSpec()
    rollouts: list[RolloutSpec] = Field(default_factory=list)
    cost: CostSpec = CostSpec()


def check_elastic(scenario: Any) -> None:
    """Cross-references of ``elastic:`` against the topology, workload and faults (ValueError names the field)."""
    stockouts = [i for i, f in enumerate(scenario.faults) if getattr(f, "kind", None) == "stockout"]
    spec: ElasticSpec | None = scenario.elastic
    if spec is None:
        if stockouts:
            raise ValueError(f"faults.{stockouts[0]} (stockout): a fixed fleet acquires no devices; add an elastic: section")
        return
    from testbed.topology import Topology  # the topology graph needs the spec module

    topology = Topology.from_spec(scenario.topology)
    pools = sorted({r.pool for r in topology.replicas})
    classes = sorted(c.name for c in scenario.workload.classes)
    kinds = sorted({r.device_kind for r in topology.replicas})
    for name, pool in spec.pools.items():
        if name not in pools:
            raise ValueError(f"elastic.pools.{name}: not a pool of the topology; expected one of {pools}")
        slots = sum(1 for r in topology.replicas if r.pool == name and r.tier == "primary")
        if pool.autoscaler is not None and pool.autoscaler.max_replicas > slots:
            raise ValueError(
                f"elastic.pools.{name}.autoscaler.max_replicas: {pool.autoscaler.max_replicas} is more than the "
                f"{slots} primary replicas the topology places in the pool (they are the slots it may fill)"
            )
        for i, step in enumerate(pool.degradation.steps if pool.degradation else []):
            if isinstance(step, RouteClassStep):
                if step.request_class not in classes:
                    raise ValueError(f"elastic.pools.{name}.degradation.steps.{i}.class: {step.request_class!r} is not one of {classes}")
                if step.to_pool not in pools or step.to_pool == name:
                    raise ValueError(f"elastic.pools.{name}.degradation.steps.{i}.to_pool: expected another pool of {pools}")
    for region, devices in spec.quotas.items():
        if region not in topology.regions:
            raise ValueError(f"elastic.quotas.{region}: not a region path; expected one of {topology.regions}")
        for device in devices:
            if device not in kinds:
                raise ValueError(f"elastic.quotas.{region}.{device}: no replica uses this device kind; expected one of {kinds}")
    for i, rollout in enumerate(spec.rollouts):
        if rollout.pool not in pools:
            raise ValueError(f"elastic.rollouts.{i}.pool: {rollout.pool!r} is not one of {pools}")
        if rollout.at >= scenario.duration:
            raise ValueError(f"elastic.rollouts.{i}.at: the rollout starts after the run ends")
    for i in stockouts:
        device = scenario.faults[i].device
        if device is not None and device not in kinds:
            raise ValueError(f"faults.{i} (stockout): device {device!r} is not used by any replica; expected one of {kinds}")
