"""The topology section: providers, regions, zones, racks, links and the devices and model they serve."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator, model_validator

from testbed.catalog import DEVICES, DeviceKind, MODELS, ModelKind
from testbed.spec.base import Bandwidth, Latency, PartName, Strict, require_unique
from testbed.spec.limits import MAX_DEVICES, MAX_DEVICES_PER_NODE


class RackSpec(Strict):
    """A rack (or cluster) of identical nodes: one power and network failure domain."""

    name: PartName
    count: PositiveInt = Field(1, le=MAX_DEVICES, description="identical racks named NAME-0, NAME-1, ...")
    nodes: PositiveInt = Field(1, le=MAX_DEVICES, description="nodes per rack")
    device: str = Field(description="device kind: a built-in one (H100, H200, B200, A100, MI300X, L40S, L4, cpu-fp32, cpu-int8) or one under devices:")
    devices_per_node: PositiveInt = Field(8, le=MAX_DEVICES_PER_NODE)
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
    rtt: Latency
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
    intra_region_rtt: Latency = 0.001
    default_rtt: Latency = Field(0.1, description="RTT between regions that no link names")
    host_cores: PositiveFloat | None = Field(
        None,
        le=4096,
        description="every replica runs on one machine with this many cores, which busy replicas share "
        "(a live stack on a laptop); a calibrated figure may be fractional. Unset: a core (or device) each",
    )

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
        self._bounded()  # before anything below expands the racks
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
        require_unique("provider", [p.name for p in self.providers])
        for p in self.providers:
            require_unique(f"region in {p.name}", [r.name for r in p.regions])
            for r in p.regions:
                require_unique(f"zone in {p.name}/{r.name}", [z.name for z in r.zones])
                for z in r.zones:
                    racks = [f"{k.name}-{i}" if k.count > 1 else k.name for k in z.racks for i in range(k.count)]
                    require_unique(f"rack in {p.name}/{r.name}/{z.name}", racks)
        regions = self.region_paths()
        for link in self.links:
            for end in link.between:
                if end not in regions:
                    raise ValueError(f"link names unknown region {end!r}; expected one of {regions}")
        return self

    def device_count(self) -> int:
        """Devices in the fleet once racks are expanded, computed without expanding them."""
        return sum(
            rack.count * rack.nodes * rack.devices_per_node
            for p in self.providers for r in p.regions for z in r.zones for rack in z.racks
        )

    def _bounded(self) -> None:
        devices = self.device_count()
        if devices > MAX_DEVICES:
            biggest = max(
                ((f"{p.name}/{r.name}/{z.name}/{k.name}", k) for p in self.providers for r in p.regions for z in r.zones for k in z.racks),
                key=lambda item: item[1].count * item[1].nodes * item[1].devices_per_node,
            )
            path, rack = biggest
            raise ValueError(
                f"the topology expands to {devices:,} devices, more than the {MAX_DEVICES:,} a topology may hold; "
                f"the largest is rack {path}: count {rack.count:,} x nodes {rack.nodes:,} x devices_per_node {rack.devices_per_node:,}"
            )

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
