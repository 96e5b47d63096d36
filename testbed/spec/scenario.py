"""A scenario: topology + workload + serving + faults + SLA + duration + seed, one runnable experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from testbed.spec.base import Duration, Strict
from testbed.spec.faults import FaultSpec
from testbed.spec.elastic import ElasticSpec, check_elastic
from testbed.spec.errors import SpecError
from testbed.spec.loading import load_spec
from testbed.spec.observability import ObservabilitySpec
from testbed.spec.serving import ServingSpec
from testbed.spec.sla import Objective, TURN_METRICS
from testbed.spec.topology import TopologySpec
from testbed.spec.workload import TraceArrivals, WorkloadSpec
from testbed.units import format_duration


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
    elastic: ElasticSpec | None = Field(
        None, description="autoscaling, cold starts, quotas, spot, migration, degradation, cost; omitted = a fixed fleet"
    )

    @field_validator("topology", mode="before")
    @classmethod
    def _load_topology_file(cls, value: Any, info: ValidationInfo) -> Any:
        """A string is a topology file relative to the scenario file; its own errors name it."""
        if isinstance(value, str):
            context = info.context or {}
            path = Path(context.get("base_dir", ".")) / value
            if not path.is_file():
                # Name the file that asked for it: the topology's own path alone does not say who did.
                source = context.get("source", "the scenario")
                found = "is a directory" if path.is_dir() else "does not exist"
                raise SpecError(f"{source}: topology: file {value!r} {found} (resolved to {path.resolve()})")
            return load_spec(path, TopologySpec)
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
            # Imported here: importing testbed.faults first loads this package on the way (it reads spec.faults).
            from testbed.faults import validate_targets
            from testbed.topology import Topology

            validate_targets(self.faults, Topology.from_spec(self.topology))
        check_elastic(self)
        return self

    def _check_prefix_blocks(self) -> None:
        """The prefix cache holds whole chain blocks: their size must be a multiple of its block size."""
        batching = self.serving.batching
        if not batching.prefix_caching:
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

    def warnings(self) -> list[str]:
        """Valid but probably not meant: latencies at or beyond the request deadline.

        Every request through such a path times out, which reads as an availability failure with
        nothing pointing at the latency; the CLI prints these beside ``ok`` and before a run.
        """
        deadline = self.serving.timeouts.request
        found = []
        for link in self.topology.links:
            if link.rtt >= deadline:
                found.append(
                    f"topology.links {link.between[0]} <-> {link.between[1]}: rtt {format_duration(link.rtt)} is at or beyond "
                    f"the request deadline (serving.timeouts.request {format_duration(deadline)}): every request over it times out"
                )
        for index, fault in enumerate(self.faults):
            delay = getattr(fault, "delay", None)
            if fault.kind == "latency" and delay is not None and delay + fault.jitter >= deadline:
                found.append(
                    f"faults.{index} (latency): delay {format_duration(delay)} is at or beyond the request deadline "
                    f"(serving.timeouts.request {format_duration(deadline)}): every request on that path times out"
                )
        return found

    @classmethod
    def from_yaml(cls, path: str | Path) -> Scenario:
        return load_spec(path, cls)

    def to_yaml(self) -> str:
        """The scenario as a self-contained YAML document (topology inlined)."""
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True, exclude_defaults=True), sort_keys=False)
