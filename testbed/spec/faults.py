"""The faults section: scripted faults on topology parts and network paths, and failure processes."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from testbed.spec.base import Bandwidth, Duration, Fraction, Latency, Strict


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


class StockoutFault(_ScriptedFault):
    """No new devices of a kind (or of any kind) in a region: running replicas keep theirs.

    Only an elastic fleet acquires devices, so this fault needs the scenario's ``elastic:`` section.
    """

    kind: Literal["stockout"]
    target: str = Field(description="a region path, e.g. aws/us-east-1")
    device: str | None = Field(None, description="device kind out of stock; omitted = every kind")
    market: Literal["spot", "on_demand"] | None = Field(None, description="only this market; omitted = both")


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
    delay: Latency
    jitter: Latency = 0.0


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
        StockoutFault,
        Partition,
        AddedLatency,
        PacketLoss,
        BandwidthLimit,
        FailureProcess,
    ],
    Field(discriminator="kind"),
]
