"""Fault schedules and the fault state: what is broken, where, when — and what it amounts to.

Faults are data. A :class:`Fault` says what happens (kind and parameters), where (a topology path,
with the replicas it takes down resolved once) and when (start, end). Scripted faults map one to
one; a :class:`~testbed.spec.FailureProcess` expands into alternating up and down periods for
every domain it covers, drawn from its own named random stream so that adding a process moves
neither the workload nor any other process.

Both planes consume the same schedule through the same :class:`FaultState`, a pure record of
what is active. How faults compose is decided here, once, and nowhere else:

- **Order.** Transitions are taken in time order; at the same instant repairs come before
  starts (a fault ending at 10 s and another starting at 10 s never overlap), then schedule order.
- **Kinds.** ``CRASH_KINDS`` take a replica down; of them ``HOST_DOWN_KINDS`` take its machine
  (or its network) away too, so a connection goes unanswered until the connect timeout, while
  after an accelerator failure the host's kernel refuses at once. An ``outage`` of a region,
  provider or the fleet (``REGION_LEVELS``) also *cuts* each region it covers. ``node_hang``
  freezes a replica that still accepts connections. ``NETWORK_KINDS`` act on paths, not replicas.
- **Counting.** Overlapping faults are counted: a replica is down while any crash is active and
  comes back when the last one ends; hung, and a region cut, likewise.
- **Degradations.** Slowdowns multiply (two at 0.5 run at 0.25); error rates take the maximum
  (with that fault's status); memory pressure takes the smallest KV fraction.

The simulator's injector applies each :class:`StateChange` to simulated replicas
(:mod:`testbed.sim.injector`); the live plan turns the same changes into actions on real
processes and proxies (:mod:`testbed.live.injector`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from testbed.rng import RandomStreams
from testbed.spec.faults import FailureProcess, FaultSpec  # not the package: testbed.spec checks fault targets with this module
from testbed.topology import LEVELS, ROOT, Topology

NETWORK_KINDS = frozenset({"partition", "latency", "packet_loss", "bandwidth"})
CRASH_KINDS = frozenset({"accelerator_failure", "node_crash", "outage", "capacity_loss"})
HOST_DOWN_KINDS = frozenset({"node_crash", "outage", "capacity_loss"})
HANG_KINDS = frozenset({"node_hang"})
REGION_LEVELS = frozenset({"fleet", "provider", "region"})
REQUIRED_LEVEL = {"accelerator_failure": "device", "node_crash": "node", "node_hang": "node", "stockout": "region"}
PARAMETERS = ("share", "speed", "kv_fraction", "rate", "status", "delay", "jitter", "loss", "limit")


@dataclass(frozen=True, slots=True)
class Fault:
    """One concrete fault: what, where, when."""

    kind: str
    target: str  # a topology path, or "A<->B" for a network fault
    start: float
    end: float  # math.inf when never repaired
    replicas: tuple[int, ...] = ()  # replicas it takes down or degrades (empty for network faults)
    params: dict[str, float] = field(default_factory=dict)
    source: str = "scripted"  # or the failure process's stream name
    endpoints: tuple[str, str] | None = None  # network faults: the two ends of the path


def validate_targets(faults: Sequence[FaultSpec], topology: Topology) -> None:
    """Raise ValueError naming the first fault whose target is unknown or at the wrong level."""
    for index, spec in enumerate(faults):
        try:
            _validate(spec, topology)
        except (KeyError, ValueError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise ValueError(f"faults.{index} ({spec.kind}): {message}") from None


def _validate(spec: FaultSpec, topology: Topology) -> None:
    if isinstance(spec, FailureProcess):
        if spec.within != ROOT:
            within = topology.level(spec.within)
            if LEVELS.index(within) > LEVELS.index(spec.level):
                raise ValueError(f"within {spec.within!r} is a {within}, below the process level {spec.level!r}")
        return
    if spec.kind in NETWORK_KINDS:
        for end in spec.between:
            region = end.removeprefix("clients:")
            if region not in topology.regions:
                raise ValueError(
                    f"between: {end!r} is not a region path or 'clients:<region>'; regions are {topology.regions}"
                )
        if spec.between[0] == spec.between[1]:
            raise ValueError("between: the two endpoints must differ")
        return
    level = topology.level(spec.target)
    required = REQUIRED_LEVEL.get(spec.kind)
    if required is not None and level != required:
        raise ValueError(f"target {spec.target!r} is a {level}; {spec.kind} needs a {required}")


def build_schedule(faults: Sequence[FaultSpec], topology: Topology, horizon: float, streams: RandomStreams) -> list[Fault]:
    """Every fault that starts before ``horizon``, sorted by (start, kind, target)."""
    validate_targets(faults, topology)
    schedule: list[Fault] = []
    for index, spec in enumerate(faults):
        if isinstance(spec, FailureProcess):
            schedule.extend(_expand(spec, topology, horizon, streams))
        elif spec.at < horizon:
            schedule.append(_scripted(index, spec, topology, streams))
    return sorted(schedule, key=lambda f: (f.start, f.kind, f.target))


def _scripted(index: int, spec: FaultSpec, topology: Topology, streams: RandomStreams) -> Fault:
    end = math.inf if spec.duration is None else spec.at + spec.duration
    params = {name: float(getattr(spec, name)) for name in PARAMETERS if hasattr(spec, name)}
    if spec.kind in NETWORK_KINDS:
        a, b = spec.between
        return Fault(spec.kind, f"{a}<->{b}", spec.at, end, (), params, endpoints=(a, b))
    if spec.kind == "stockout":  # takes nothing down: only new grants are refused (testbed/policy/capacity.py)
        return Fault(spec.kind, spec.target, spec.at, end, (), params)
    replicas = topology.domain_replicas(spec.target)
    if spec.kind == "capacity_loss":
        rng = streams.numpy(f"faults.capacity_loss.{index}")
        chosen = rng.choice(len(replicas), size=round(spec.share * len(replicas)), replace=False)
        replicas = sorted(replicas[i] for i in chosen.tolist())
    return Fault(spec.kind, spec.target, spec.at, end, tuple(replicas), params)


def _expand(spec: FailureProcess, topology: Topology, horizon: float, streams: RandomStreams) -> list[Fault]:
    """Alternating up/down periods for each domain covered, from the process's own stream."""
    name = spec.name or f"{spec.level}@{spec.within}"
    rng = streams.numpy(f"faults.{name}")
    prefix = spec.within + "/"
    domains = [d for d in topology.failure_domains(spec.level) if spec.within == ROOT or d == spec.within or d.startswith(prefix)]
    params = {"speed": spec.speed} if spec.effect == "slowdown" else {}
    faults = []
    for domain in domains:
        replicas = tuple(topology.domain_replicas(domain))
        t = 0.0
        while True:
            t += _draw(rng, spec.distribution, spec.mtbf, spec.shape)
            if t >= horizon:
                break
            repair = _draw(rng, spec.distribution, spec.mttr, spec.shape)
            faults.append(Fault(spec.effect, domain, t, t + repair, replicas, params, source=name))
            t += repair
    return faults


def _draw(rng: np.random.Generator, distribution: str, mean: float, shape: float) -> float:
    """One sample with the given mean: exponential, Weibull (shape k) or lognormal (sigma)."""
    if distribution == "exponential":
        return float(rng.exponential(mean))
    if distribution == "weibull":
        return float(mean / math.gamma(1 + 1 / shape) * rng.weibull(shape))
    return float(rng.lognormal(math.log(mean) - shape**2 / 2, shape))


def faults_frame(schedule: Sequence[Fault]) -> pd.DataFrame:
    """The schedule as a table, one row per fault (faults.parquet)."""
    return pd.DataFrame(
        {
            "fault_id": np.arange(len(schedule), dtype=np.int64),
            "kind": [f.kind for f in schedule],
            "target": [f.target for f in schedule],
            "start": np.array([f.start for f in schedule], dtype=float),
            "end": np.array([f.end for f in schedule], dtype=float),
            "source": [f.source for f in schedule],
            "replicas": np.array([len(f.replicas) for f in schedule], dtype=np.int64),
            "params": [json.dumps(f.params, sort_keys=True) for f in schedule],
        }
    )


# ---------------------------------------------------------------------- the fault state


def transitions(schedule: Sequence[Fault]) -> list[tuple[float, int, int]]:
    """``(time, +1 start / -1 repair, fault index)`` in the order to take them: by time, repairs
    before starts at the same instant, then schedule order. Faults never repaired have no end."""
    events = [(f.start, +1, i) for i, f in enumerate(schedule)]
    events += [(f.end, -1, i) for i, f in enumerate(schedule) if not math.isinf(f.end)]
    return sorted(events)


@dataclass(frozen=True, slots=True)
class ReplicaCondition:
    """The faults active on one replica, and what they amount to (the composition rules above).

    ``crashes`` counts crashes of the replica's own domain (device, node, rack, zone);
    ``outages`` those of its region or wider, which the live stack carries out by cutting the
    region rather than killing processes; ``host_down`` the crashes of either that take the host away.
    """

    crashes: int = 0
    outages: int = 0
    host_down: int = 0
    hangs: int = 0
    speeds: tuple[float, ...] = ()
    errors: tuple[tuple[float, int], ...] = ()  # (rate, status)
    kv_fractions: tuple[float, ...] = ()

    @property
    def down(self) -> bool:
        return self.crashes + self.outages > 0

    @property
    def refusing(self) -> bool:
        """Down with its host up: connections are refused at once rather than unanswered."""
        return self.down and not self.host_down

    @property
    def hung(self) -> bool:
        return self.hangs > 0

    @property
    def speed(self) -> float:
        speed = 1.0
        for s in self.speeds:  # in start order: the product is the same in every plane, to the bit
            speed *= s
        return speed

    @property
    def error(self) -> tuple[float, int]:
        """(rate, status) of the worst error injection active; (0.0, 500) when none."""
        return max(self.errors, default=(0.0, 500))

    @property
    def error_rate(self) -> float:
        return self.error[0]

    @property
    def kv_fraction(self) -> float:
        return min(self.kv_fractions, default=1.0)


HEALTHY = ReplicaCondition()


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition of the schedule and what it changed.

    ``replicas`` holds ``(replica, before, after)`` for every replica the fault covers;
    ``regions`` holds ``(region, cuts before, cuts after)`` for a region-wide outage.
    Network faults change neither: ``FaultState.network`` lists those active.
    """

    at: float
    index: int  # the fault's position in the schedule
    fault: Fault
    starting: bool
    replicas: tuple[tuple[int, ReplicaCondition, ReplicaCondition], ...] = ()
    regions: tuple[tuple[str, int, int], ...] = ()


class FaultState:
    """What is broken right now, over a topology: pure, no clock, no I/O.

    :meth:`apply` takes one transition and returns what it changed; :func:`walk` takes a whole
    schedule. Each plane realises the changes its own way; neither composes faults itself.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.replicas: list[ReplicaCondition] = [HEALTHY] * len(topology.replicas)
        self.cuts: dict[str, int] = {}
        self.network: list[Fault] = []

    def apply(self, fault: Fault, starting: bool, at: float | None = None, index: int = -1) -> StateChange:
        """Start (``starting``) or repair ``fault``; what changed."""
        sign = 1 if starting else -1
        at = (fault.start if starting else fault.end) if at is None else at
        if fault.kind in NETWORK_KINDS:
            if starting:
                self.network.append(fault)
            else:
                self.network.remove(fault)
            return StateChange(at, index, fault, starting)
        regions: list[tuple[str, int, int]] = []
        region_wide = fault.kind == "outage" and self.topology.level(fault.target) in REGION_LEVELS
        if region_wide:
            for region in sorted({self.topology.replicas[r].region for r in fault.replicas}):
                before = self.cuts.get(region, 0)
                self.cuts[region] = before + sign
                regions.append((region, before, before + sign))
        changes = []
        for replica in fault.replicas:
            before = self.replicas[replica]
            after = _compose(before, fault, sign, region_wide)
            self.replicas[replica] = after
            changes.append((replica, before, after))
        return StateChange(at, index, fault, starting, tuple(changes), tuple(regions))


def walk(schedule: Sequence[Fault], state: FaultState) -> Iterator[StateChange]:
    """Every transition of ``schedule`` applied to ``state``, in order (see :func:`transitions`).

    Each change is applied to ``state`` as it is produced, so ``state`` runs ahead of a plane
    that waits between transitions: the simulator takes :func:`transitions` one at a time and
    applies each when its time comes; a plan made before the run (the live one) walks it all.
    """
    for at, sign, index in transitions(schedule):
        yield state.apply(schedule[index], sign > 0, at, index)


def _compose(condition: ReplicaCondition, fault: Fault, sign: int, region_wide: bool) -> ReplicaCondition:
    kind, params = fault.kind, fault.params
    if kind in CRASH_KINDS:
        host = sign if kind in HOST_DOWN_KINDS else 0
        if region_wide:
            return replace(condition, outages=condition.outages + sign, host_down=condition.host_down + host)
        return replace(condition, crashes=condition.crashes + sign, host_down=condition.host_down + host)
    if kind in HANG_KINDS:
        return replace(condition, hangs=condition.hangs + sign)
    if kind == "slowdown":
        return replace(condition, speeds=_toggle(condition.speeds, params["speed"], sign))
    if kind == "error_injection":
        return replace(condition, errors=_toggle(condition.errors, (params["rate"], int(params["status"])), sign))
    if kind == "memory_pressure":
        return replace(condition, kv_fractions=_toggle(condition.kv_fractions, params["kv_fraction"], sign))
    raise ValueError(f"no fault state for fault kind {kind!r}")


def _toggle(active: tuple, value: object, sign: int) -> tuple:
    """``active`` with ``value`` added (a start) or its first occurrence removed (a repair)."""
    if sign > 0:
        return (*active, value)
    i = active.index(value)
    return active[:i] + active[i + 1 :]
