"""The campaign file: a base scenario, a steady-state hypothesis, the method, a matrix and seeds.

In the spirit of Chaos Toolkit experiments and Jepsen's nemesis schedules, one file says what
normal looks like (``steady_state``), what is done to the system (``method``: a fault schedule
or a failure process), what is varied (``matrix``: dotted paths into the scenario) and how many
times (``seeds``). Every cell of the matrix is validated as a scenario when the file is loaded,
so a bad path or value is one clear error naming the campaign file and the key — exit 2 — and
never a failure halfway through a long campaign.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator

from testbed.campaign.matrix import Cell, PathError, cells, labelled_values, set_path
from testbed.campaign.metrics import metric_names
from testbed.spec import Duration, FaultSpec, Objective, Scenario, SpecError, Strict, load_spec, validate_spec

LIVE_MAX_REPLICAS = 4
LIVE_MAX_DURATION = 300.0


class SeedRange(Strict):
    """``count`` consecutive seeds from ``start``."""

    count: PositiveInt
    start: int = 0


class SteadyState(Strict):
    """The steady-state hypothesis: objectives that must hold before the first fault and after recovery."""

    objectives: list[Objective] | None = Field(
        None, description="default: the scenario's SLA (each judged over the before/after windows)"
    )
    before: bool = Field(True, description="judge arrivals between warmup and the first fault")
    after: bool = Field(True, description="judge arrivals from the last repair (plus settle) to the end")
    settle: Duration = Field(0.0, description="time after the last repair before the 'after' window opens")
    min_window: Duration = Field(30.0, description="a before/after window shorter than this is not judged")


class CampaignSpec(Strict):
    """A campaign file (see the README's "Campaigns" section)."""

    name: str
    description: str = ""
    scenario: str | dict[str, Any] = Field(description="base scenario: a path relative to this file, or inline")
    overrides: dict[str, Any] = Field(
        default_factory=dict, alias="set", description="dotted path -> value, applied to every cell"
    )
    method: list[FaultSpec] | None = Field(None, description="the faults; replaces the scenario's own when given")
    steady_state: SteadyState = SteadyState()
    matrix: dict[str, list[Any] | dict[str, Any]] = Field(
        default_factory=dict, description="dotted path -> values (a list, or a mapping label -> value)"
    )
    seeds: list[int] | SeedRange = Field(default_factory=lambda: [0])
    plane: Literal["simulation", "live"] = "simulation"
    compare: list[str] | None = Field(None, description="metrics for paired comparisons; default: all")
    ci: Literal["t", "bootstrap"] = Field("t", description="confidence intervals across seeds")
    confidence: float = Field(0.95, gt=0, lt=1)
    keep_records: bool = Field(False, description="write each run's records under runs/")

    @field_validator("matrix")
    @classmethod
    def _values_present(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: expected at least one value")
            labels = [label for label, _ in labelled_values(values)]
            if len(set(labels)) != len(labels):
                raise ValueError(f"{key}: values repeat ({labels}); each must differ")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, value: list[int] | SeedRange) -> list[int] | SeedRange:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("expected a non-empty list of distinct seeds")
        return value

    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, SeedRange):
            return list(range(self.seeds.start, self.seeds.start + self.seeds.count))
        return list(self.seeds)


@dataclass
class Campaign:
    """A validated campaign: every cell's scenario resolved, ready to run."""

    spec: CampaignSpec
    source: str
    cells: list[Cell]
    scenarios: dict[str, Scenario]
    digests: dict[str, str]

    @property
    def seeds(self) -> list[int]:
        return self.spec.seed_list()

    @property
    def runs(self) -> int:
        return len(self.cells) * len(self.seeds)


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file, or raise :class:`SpecError` with one clear message."""
    path = Path(path)
    spec = load_spec(path, CampaignSpec)
    return resolve(spec, source=str(path), base_dir=path.parent)


def resolve(spec: CampaignSpec, source: str, base_dir: Path | str = ".") -> Campaign:
    """Build and validate every cell's scenario from the base, ``set``, ``method`` and the matrix."""
    base_dir = Path(base_dir)
    base = _base_scenario(spec, source, base_dir)
    for key, value in spec.overrides.items():
        base = _apply(base, key, value, f"{source}: set.{key}", base_dir)
    if spec.method is not None:
        faults = [f.model_dump(mode="json", exclude_unset=True) for f in spec.method]
        base = _apply(base, "faults", faults, f"{source}: method", base_dir)
    scenario = validate_spec(base, Scenario, source=f"{source}: scenario", base_dir=base_dir)
    if spec.steady_state.objectives is not None:
        objectives = [o.model_dump(mode="json", by_alias=True, exclude_unset=True) for o in spec.steady_state.objectives]
        _apply(base, "sla", objectives, f"{source}: steady_state.objectives", base_dir)
    elif not scenario.sla and (spec.steady_state.before or spec.steady_state.after):
        raise SpecError(f"{source}: steady_state: the scenario has no sla; give steady_state.objectives")
    for key, values in spec.matrix.items():  # each value alone first, so an error names its key
        for label, value in labelled_values(values):
            _apply(base, key, value, f"{source}: matrix.{key} = {label}", base_dir)
    scenarios, digests = {}, {}
    grid = cells(spec.matrix)
    for cell in grid:
        data = base
        for key, value in cell.values.items():
            data = _with(data, key, value, f"{source}: matrix cell {cell.label}")
        scenarios[cell.id] = validate_spec(data, Scenario, source=f"{source}: matrix cell {cell.label}: scenario", base_dir=base_dir)
        digests[cell.id] = _digest(scenarios[cell.id], spec)
    if spec.plane == "live":
        _check_live(scenarios, grid, source)
    _check_compare(spec, scenarios, source)
    return Campaign(spec, source, grid, scenarios, digests)


def _base_scenario(spec: CampaignSpec, source: str, base_dir: Path) -> dict[str, Any]:
    """The base scenario as a plain mapping with the topology inlined and paths made absolute."""
    if isinstance(spec.scenario, str):
        scenario = load_spec(base_dir / spec.scenario, Scenario)
    else:
        scenario = validate_spec(spec.scenario, Scenario, source=f"{source}: scenario", base_dir=base_dir)
    return scenario.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _with(data: dict[str, Any], key: str, value: Any, where: str) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    try:
        set_path(out, key, value)
    except PathError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return out


def _apply(data: dict[str, Any], key: str, value: Any, where: str, base_dir: Path) -> dict[str, Any]:
    """``data`` with ``key`` set, checked against the scenario model (the error names ``where``)."""
    out = _with(data, key, value, where)
    validate_spec(out, Scenario, source=f"{where} gives an invalid scenario", base_dir=base_dir)
    return out


def _digest(scenario: Scenario, spec: CampaignSpec) -> str:
    """What a run's outcome depends on besides its seed: a journal row is reused only if this matches."""
    payload = {
        "scenario": scenario.model_dump(mode="json", by_alias=True),
        "plane": spec.plane,
        "steady_state": spec.steady_state.model_dump(mode="json", by_alias=True),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _check_live(scenarios: dict[str, Scenario], grid: list[Cell], source: str) -> None:
    """The live plane runs real processes on this machine: only small scenarios are allowed."""
    from testbed.topology import Topology

    for cell in grid:
        scenario = scenarios[cell.id]
        replicas = len(Topology.from_spec(scenario.topology).replicas)
        if replicas > LIVE_MAX_REPLICAS or scenario.duration > LIVE_MAX_DURATION:
            raise SpecError(
                f"{source}: plane: live runs need small scenarios (at most {LIVE_MAX_REPLICAS} replicas and "
                f"{LIVE_MAX_DURATION:g} s); cell {cell.label} has {replicas} replicas and lasts {scenario.duration:g} s"
            )



def _check_compare(spec: CampaignSpec, scenarios: dict[str, Scenario], source: str) -> None:
    """``compare`` must name metrics that every run reports."""
    if spec.compare is None:
        return
    known = metric_names(next(iter(scenarios.values())))
    for name in spec.compare:
        if name not in known:
            raise SpecError(f"{source}: compare: unknown metric {name!r}; expected one of {known}")
