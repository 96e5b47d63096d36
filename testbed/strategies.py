"""Hypothesis strategies for fault schedules and scenario perturbations over a topology.

Every fault drawn is a valid :data:`~testbed.spec.FaultSpec` whose target exists in the topology
at the level its kind needs, so a drawn schedule can be put straight into a scenario. The
strategies are built so that Hypothesis' shrinker moves towards the *smallest* failure by
construction, which is what makes a shrunk schedule worth reading:

* lists shrink by deleting elements — **fewer faults**;
* start times are whole steps from 0 and durations whole steps from one step — **earlier** and
  **shorter** faults;
* targets are listed smallest blast radius first (device, node, rack, zone, region, provider;
  the clients' own path before paths between regions) and ``sampled_from`` shrinks to the
  front — **narrower** faults;
* parameters count steps away from harmless (a 5% slowdown, 5% errors, 50 ms of latency), so
  they shrink towards the **mildest** fault that still breaks the SLA;
* kinds shrink towards the first of ``kinds``.

Times live on a grid (``resolution`` seconds, by default a 1-2-5 step of about a hundredth of
the horizon), so shrunk schedules read as round numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from hypothesis import strategies as st
from pydantic import TypeAdapter

from testbed.spec import FaultSpec, Scenario, TopologySpec
from testbed.topology import Topology

# The order is the shrink order: a schedule of the first kind is "simpler" than one of the last.
DEFAULT_KINDS = (
    "node_crash",
    "accelerator_failure",
    "outage",
    "node_hang",
    "slowdown",
    "error_injection",
    "memory_pressure",
    "capacity_loss",
    "partition",
    "latency",
    "packet_loss",
    "bandwidth",
)
NETWORK = ("partition", "latency", "packet_loss", "bandwidth")
# Levels each kind may target, narrowest first (the shrink order of its targets).
TARGET_LEVELS = {
    "node_crash": ("node",),
    "node_hang": ("node",),
    "accelerator_failure": ("device",),
    "outage": ("rack", "zone", "region", "provider"),
    "capacity_loss": ("rack", "zone", "region", "provider"),
    "slowdown": ("device", "node", "rack", "zone", "region", "provider"),
    "memory_pressure": ("device", "node", "rack", "zone", "region", "provider"),
    "error_injection": ("device", "node", "rack", "zone", "region", "provider"),
}
DEFAULT_TOPOLOGY_HORIZON = 60.0
BANDWIDTHS = (1.25e9, 1.25e8, 1.25e7, 1.25e6, 1.25e5)  # 10 Gbit/s down to 1 Mbit/s: mildest first


def fault_schedules(
    topology_or_scenario: Topology | TopologySpec | Scenario,
    *,
    max_faults: int = 3,
    min_faults: int = 0,
    kinds: Sequence[str] | None = None,
    horizon: float | None = None,
    resolution: float | None = None,
) -> st.SearchStrategy[list[FaultSpec]]:
    """Lists of up to ``max_faults`` faults, sorted by start (shrinks to fewer, earlier, shorter).

    ``horizon`` is the window faults start in: a scenario's duration, or 60 s for a bare topology.
    """
    if not 0 <= min_faults <= max_faults:
        raise ValueError(f"expected 0 <= min_faults <= max_faults, got {min_faults} and {max_faults}")
    one = faults(topology_or_scenario, kinds=kinds, horizon=horizon, resolution=resolution)
    return st.lists(one, min_size=min_faults, max_size=max_faults).map(sort_schedule)


def faults(
    topology_or_scenario: Topology | TopologySpec | Scenario,
    *,
    kinds: Sequence[str] | None = None,
    horizon: float | None = None,
    resolution: float | None = None,
) -> st.SearchStrategy[FaultSpec]:
    """One scripted fault of one of ``kinds`` (default :data:`DEFAULT_KINDS`) on a real target."""
    topology, horizon = _topology_and_horizon(topology_or_scenario, horizon)
    step = resolution if resolution is not None else grid_step(horizon)
    if step <= 0:
        raise ValueError(f"resolution must be positive, got {step}")
    kinds = tuple(DEFAULT_KINDS if kinds is None else kinds)
    check_kinds(kinds)
    steps = max(1, math.ceil(horizon / step))
    per_kind = [_fault_of_kind(kind, topology, step, steps) for kind in kinds]
    return st.one_of(per_kind)


def scenario_perturbations(
    scenario: Scenario,
    *,
    max_faults: int = 2,
    kinds: Sequence[str] | None = None,
    rate_scale: tuple[float, float] = (0.5, 2.0),
    vary_seed: bool = True,
) -> st.SearchStrategy[Scenario]:
    """The scenario with its load scaled, its seed varied and faults added.

    Each perturbation shrinks back to the scenario itself: scale 1.0, its own seed, no faults.
    Load scaling multiplies arrival rates (or divides a trace's time scale) in 5% steps.
    """
    low, high = rate_scale
    if not 0 < low <= 1 <= high:
        raise ValueError(f"rate_scale must satisfy 0 < low <= 1 <= high, got {rate_scale}")
    scale = st.integers(math.ceil((low - 1) / 0.05 - 1e-9), math.floor((high - 1) / 0.05 + 1e-9)).map(
        lambda k: round(1 + 0.05 * k, 4)
    )
    seeds = st.integers(0, 2**31 - 1).map(lambda s: (scenario.seed + s) % 2**31) if vary_seed else st.just(scenario.seed)
    schedules = fault_schedules(scenario, max_faults=max_faults, kinds=kinds)
    return st.builds(lambda k, seed, added: perturb(scenario, k, seed, added), scale, seeds, schedules)


def perturb(scenario: Scenario, rate_scale: float, seed: int, added: Sequence[FaultSpec]) -> Scenario:
    """``scenario`` at ``rate_scale`` times its load, with ``seed`` and ``added`` faults after its own."""
    data = scenario.model_dump(mode="python", by_alias=True)
    arrival = data["workload"]["arrival"]
    if arrival["kind"] == "trace":
        arrival["time_scale"] = arrival["time_scale"] / rate_scale
    else:
        arrival["rate"] = arrival["rate"] * rate_scale
        for step in arrival.get("steps") or []:
            step["rate"] = step["rate"] * rate_scale
    data["seed"] = seed
    data["faults"] = [*data["faults"], *(f.model_dump(mode="python") for f in added)]
    return Scenario.model_validate(data)


def sort_schedule(schedule: Sequence[FaultSpec]) -> list[FaultSpec]:
    """Faults in start order, so a schedule reads like a timeline."""
    return sorted(schedule, key=lambda f: (f.at, f.kind, _where(f)))


def grid_step(horizon: float) -> float:
    """A 1-2-5 step of about a hundredth of ``horizon`` (60 s -> 1 s, 12 h -> 500 s)."""
    target = max(horizon / 100.0, 1e-3)
    exponent = math.floor(math.log10(target))
    for mantissa in (1, 2, 5, 10):
        step = mantissa * 10.0**exponent
        if step >= target - 1e-12:
            return round(step, 6)
    raise AssertionError("unreachable: 10 * 10**floor(log10(x)) >= x")


def check_kinds(kinds: Sequence[str]) -> None:
    """ValueError naming an unknown or unscriptable kind and the kinds that exist."""
    if not kinds:
        raise ValueError(f"kinds is empty; expected some of {list(DEFAULT_KINDS)}")
    for kind in kinds:
        if kind not in DEFAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected some of {list(DEFAULT_KINDS)}")


def targets(topology: Topology, kind: str) -> list[str]:
    """Where a fault of ``kind`` may strike, narrowest first; for network kinds "A<->B" paths."""
    if kind in NETWORK:
        return ["<->".join(pair) for pair in network_paths(topology)]
    return [path for level in TARGET_LEVELS[kind] for path in topology.failure_domains(level)]


def network_paths(topology: Topology) -> list[tuple[str, str]]:
    """Clients-to-region paths first (what users feel), then paths between regions."""
    regions = topology.regions
    return [(f"clients:{r}", r) for r in regions] + [(a, b) for i, a in enumerate(regions) for b in regions[i + 1 :]]


@lru_cache(maxsize=1)
def _adapter() -> TypeAdapter:
    return TypeAdapter(FaultSpec)


def make_fault(**fields: Any) -> FaultSpec:
    """A validated FaultSpec from plain fields (``kind`` picks the model)."""
    return _adapter().validate_python(fields)


def _fault_of_kind(kind: str, topology: Topology, step: float, steps: int) -> st.SearchStrategy[FaultSpec]:
    where = targets(topology, kind)
    if not where:
        return st.nothing()
    timing = st.tuples(st.integers(0, steps - 1), st.integers(1, steps))
    place = st.sampled_from(where)
    params = _parameters(kind)

    def build(args: tuple[tuple[int, int], str, dict[str, Any]]) -> FaultSpec:
        (start, length), target, extra = args
        at, duration = round(start * step, 6), round(length * step, 6)
        if kind in NETWORK:
            return make_fault(kind=kind, between=tuple(target.split("<->")), at=at, duration=duration, **extra)
        return make_fault(kind=kind, target=target, at=at, duration=duration, **extra)

    return st.tuples(timing, place, params).map(build)


def _steps(count: int, first: float, delta: float) -> st.SearchStrategy[float]:
    """``first + delta * k`` for k in 0..count-1: shrinks to ``first``, the mildest value."""
    return st.integers(0, count - 1).map(lambda k: round(first + delta * k, 4))


def _parameters(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Each kind's parameters, counted in steps away from harmless."""
    if kind == "capacity_loss":
        return st.fixed_dictionaries({"share": _steps(20, 0.05, 0.05)})
    if kind == "slowdown":
        return st.fixed_dictionaries({"speed": _steps(19, 0.95, -0.05)})
    if kind == "memory_pressure":
        return st.fixed_dictionaries({"kv_fraction": _steps(19, 0.95, -0.05)})
    if kind == "error_injection":
        return st.fixed_dictionaries({"rate": _steps(20, 0.05, 0.05), "status": st.sampled_from([500, 503, 429])})
    if kind == "latency":
        # With its unit: a bare number over a second is refused as an implausible latency.
        return st.fixed_dictionaries({"delay": _steps(40, 0.05, 0.05).map(lambda seconds: f"{seconds:g}s")})
    if kind == "packet_loss":
        return st.fixed_dictionaries({"loss": _steps(20, 0.05, 0.05)})
    if kind == "bandwidth":
        return st.fixed_dictionaries({"limit": st.sampled_from(BANDWIDTHS)})
    return st.just({})


def _where(fault: FaultSpec) -> str:
    between = getattr(fault, "between", None)
    return "<->".join(between) if between else getattr(fault, "target", "")


def _topology_and_horizon(source: Topology | TopologySpec | Scenario, horizon: float | None) -> tuple[Topology, float]:
    if isinstance(source, Scenario):
        topology, default = Topology.from_spec(source.topology), source.duration
    elif isinstance(source, TopologySpec):
        topology, default = Topology.from_spec(source), DEFAULT_TOPOLOGY_HORIZON
    elif isinstance(source, Topology):
        topology, default = source, DEFAULT_TOPOLOGY_HORIZON
    else:
        raise TypeError(f"expected a Topology, TopologySpec or Scenario, got {type(source).__name__}")
    horizon = default if horizon is None else horizon
    if not horizon > 0:
        raise ValueError(f"horizon must be positive, got {horizon}")
    return topology, horizon
