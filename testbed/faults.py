"""Fault schedules: the specs of a scenario turned into concrete, validated, time-ordered faults.

Faults are data. A :class:`Fault` says what happens (kind and parameters), where (a topology path,
with the replicas it takes down resolved once) and when (start, end). Scripted faults map one to
one; a :class:`~testbed.spec.FailureProcess` expands into alternating up and down periods for
every domain it covers, drawn from its own named random stream so that adding a process moves
neither the workload nor any other process. The simulator injects the schedule now and the live
injector will consume the same records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from testbed.rng import RandomStreams
from testbed.spec.faults import FailureProcess, FaultSpec  # not the package: testbed.spec checks fault targets with this module
from testbed.topology import LEVELS, ROOT, Topology

NETWORK_KINDS = frozenset({"partition", "latency", "packet_loss", "bandwidth"})
REQUIRED_LEVEL = {"accelerator_failure": "device", "node_crash": "node", "node_hang": "node"}
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
