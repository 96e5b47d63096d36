"""Failure hunting: search fault schedules that break a scenario's SLA, then shrink the first one.

The search is Hypothesis driving the simulator: each example is a fault schedule drawn from
:func:`testbed.strategies.fault_schedules`, added to the scenario's own faults and simulated
with the scenario's seed; an SLA violation is a "bug". Hypothesis runs with no example
database and a fixed search seed, so a hunt is reproducible, and its shrinker — helped by
strategies that shrink towards fewer, earlier, shorter, narrower, milder faults — reduces the
first failure. Our own passes then take up any slack it leaves (drop a fault, halve a
duration, move a start earlier, line starts up), accepting a change only when the schedule
still fails and is smaller by :func:`size`.

The budget counts simulations, the expensive part: ``budget`` bounds the search for a first
failure and ``shrink_budget`` the shrinking. Every evaluation is memoised by schedule — the
simulator is deterministic — so Hypothesis' replays cost nothing, and an example met after a
budget is spent is treated as passing without being simulated (the shrinker then keeps the
smallest failure it already has).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as search_seed_of

from testbed.explain import describe_verdict, scenario_yaml
from testbed.records.result import Result
from testbed.sim import simulate
from testbed.sla import Verdict
from testbed.spec import FaultSpec, Scenario, validate_spec
from testbed.strategies import DEFAULT_KINDS, check_kinds, fault_schedules, grid_step, sort_schedule

Progress = Callable[[str, int, int], None]  # (phase, simulations so far in the phase, its budget)


@dataclass
class HuntResult:
    """What a hunt found: the minimal failing schedule, why it fails, and what the search cost."""

    scenario: Scenario
    seed: int
    search_seed: int
    budget: int
    shrink_budget: int
    kinds: tuple[str, ...]
    max_faults: int
    schedule: list[FaultSpec] | None  # the minimal added faults; None when nothing failed
    first_failure: list[FaultSpec] | None  # the first failing schedule found, before shrinking
    result: Result | None  # the minimal schedule's run, replayed from its YAML text
    search_evaluations: int
    shrink_evaluations: int
    wall_time: float
    shrink_steps: list[str] = field(default_factory=list)  # what our own passes removed, in order

    @property
    def found(self) -> bool:
        return self.schedule is not None

    @property
    def evaluations(self) -> int:
        """Simulations run in all, search and shrinking (not counting the final replay)."""
        return self.search_evaluations + self.shrink_evaluations

    @property
    def violations(self) -> list[Verdict]:
        """The failing verdicts of the minimal schedule: which objective, observed, limit, margin."""
        return [v for v in self.result.sla if not v.passed] if self.result is not None else []

    def failing_scenario(self) -> Scenario:
        """The scenario with the minimal schedule added, named and seeded to fail when run."""
        if self.schedule is None:
            raise ValueError("the hunt found no failure")
        return _with_faults(self.scenario, self.schedule).model_copy(
            update={
                "name": f"{self.scenario.name}-minimal-failure",
                "description": f"Found by `testbed hunt` on {self.scenario.name!r}: the smallest fault schedule "
                f"found that breaks its SLA with seed {self.seed}.",
                "seed": self.seed,
            }
        )

    def to_yaml(self) -> str:
        """The failing scenario as a self-contained, runnable YAML document with a header."""
        header = [
            f"# minimal failure of scenario {self.scenario.name!r}, seed {self.seed}, found by testbed hunt",
            f"# {self.search_evaluations} schedules searched, {self.shrink_evaluations} simulations shrinking, "
            f"{self.wall_time:.1f} s wall time",
        ]
        header += [f"# violates {describe_verdict(v)}" for v in self.violations]
        header.append("# reproduce: testbed run minimal-failure.yaml  (exit 1)")
        return "\n".join(header) + "\n" + scenario_yaml(self.failing_scenario(), seed=self.seed)

    def write(self, out_dir: str | Path) -> Path:
        """Write ``<out_dir>/minimal-failure.yaml`` and return its path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "minimal-failure.yaml"
        path.write_text(self.to_yaml())
        return path


def hunt(
    scenario: Scenario,
    *,
    budget: int = 100,
    shrink_budget: int | None = None,
    max_faults: int = 3,
    kinds: Sequence[str] | None = None,
    objectives: Sequence[str] | None = None,
    seed: int | None = None,
    search_seed: int = 0,
    horizon: float | None = None,
    resolution: float | None = None,
    progress: Progress | None = None,
) -> HuntResult:
    """Search up to ``budget`` fault schedules for an SLA violation and shrink the first found.

    Hunted faults are added to the scenario's own faults. A schedule "fails" when one of
    ``objectives`` (verdict labels such as ``"availability"`` or ``"p99 ttft (during faults)"``;
    default: any objective) fails. ``seed`` overrides the scenario's simulation seed;
    ``search_seed`` seeds Hypothesis. ``shrink_budget`` defaults to twice
    ``budget`` (at least 50).
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    if max_faults < 1:
        raise ValueError(f"max_faults must be at least 1, got {max_faults}")
    kinds = tuple(DEFAULT_KINDS if kinds is None else kinds)
    check_kinds(kinds)
    shrink_budget = max(50, 2 * budget) if shrink_budget is None else shrink_budget
    run_seed = scenario.seed if seed is None else seed
    horizon = scenario.duration if horizon is None else horizon
    step = grid_step(horizon) if resolution is None else resolution
    started = time.perf_counter()

    wanted = _check_objectives(scenario, objectives)
    oracle = _Oracle(scenario, run_seed, budget, shrink_budget, progress, wanted)
    strategy = fault_schedules(scenario, max_faults=max_faults, kinds=kinds, horizon=horizon, resolution=step)
    minimal = _search(strategy, oracle, search_seed)
    steps: list[str] = []
    if minimal is not None:
        minimal, steps = _refine(minimal, oracle, step)
    found = HuntResult(
        scenario=scenario,
        seed=run_seed,
        search_seed=search_seed,
        budget=budget,
        shrink_budget=shrink_budget,
        kinds=kinds,
        max_faults=max_faults,
        schedule=minimal,
        first_failure=oracle.first_failure,
        result=None,
        search_evaluations=oracle.used["search"],
        shrink_evaluations=oracle.used["shrink"],
        wall_time=0.0,
        shrink_steps=steps,
    )
    if minimal is not None:
        found.result = _replay(found)
    found.wall_time = time.perf_counter() - started
    return found


def _check_objectives(scenario: Scenario, objectives: Sequence[str] | None) -> frozenset[str] | None:
    """``objectives`` as a set, refusing a label the scenario's SLA does not have (naming those it has)."""
    if not objectives:
        return None
    known = [objective.label for objective in scenario.sla]
    unknown = [name for name in objectives if name not in known]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(map(repr, unknown))}; this scenario's are: {', '.join(map(repr, known))}")
    return frozenset(objectives)


def size(schedule: Sequence[FaultSpec]) -> tuple[int, float, float]:
    """What "smaller" means: fewer faults, then less total fault time, then earlier starts."""
    return (len(schedule), sum(_duration(f) for f in schedule), sum(f.at for f in schedule))


class _Oracle:
    """Simulates schedules once each and says whether the SLA failed, within the budgets."""

    def __init__(
        self, scenario: Scenario, seed: int, budget: int, shrink_budget: int, progress: Progress | None,
        objectives: frozenset[str] | None = None,
    ) -> None:
        self.scenario = _verdicts_only(scenario)
        self.objectives = objectives
        self.seed = seed
        self.budgets = {"search": budget, "shrink": shrink_budget}
        self.used = {"search": 0, "shrink": 0}
        self.progress = progress
        self.memo: dict[str, bool] = {}
        self.first_failure: list[FaultSpec] | None = None

    @property
    def phase(self) -> str:
        return "search" if self.first_failure is None else "shrink"

    def fails(self, schedule: Sequence[FaultSpec]) -> bool | None:
        """True if the SLA fails, False if it holds, None if unknown because the budget is spent."""
        key = json.dumps([f.model_dump(mode="json") for f in schedule], sort_keys=True)
        if key in self.memo:
            return self.memo[key]
        phase = self.phase
        if self.used[phase] >= self.budgets[phase]:
            return None
        self.used[phase] += 1
        result = simulate(_with_faults(self.scenario, schedule), seed=self.seed)
        failed = any(not v.passed and (self.objectives is None or v.objective in self.objectives) for v in result.sla)
        self.memo[key] = failed
        if failed and self.first_failure is None:
            self.first_failure = list(schedule)
        if self.progress is not None:
            self.progress(phase, self.used[phase], self.budgets[phase])
        return failed


class _Violation(Exception):
    """Raised inside the Hypothesis test for a failing schedule: it is the "bug" being shrunk."""

    def __init__(self, schedule: list[FaultSpec]) -> None:
        super().__init__(f"{len(schedule)} faults break the SLA")
        self.schedule = schedule


def _search(strategy: Any, oracle: _Oracle, search_seed: int) -> list[FaultSpec] | None:
    """Hypothesis' generate and shrink phases over the oracle; the shrunk failure, or None."""

    @search_seed_of(search_seed)
    @settings(
        max_examples=oracle.budgets["search"],
        database=None,
        derandomize=False,
        phases=(Phase.generate, Phase.shrink),
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    @given(strategy)
    def probe(schedule: list[FaultSpec]) -> None:
        if oracle.fails(schedule):
            raise _Violation(schedule)

    try:
        probe()
    except _Violation as violation:
        return violation.schedule
    return None


def _refine(schedule: list[FaultSpec], oracle: _Oracle, step: float) -> tuple[list[FaultSpec], list[str]]:
    """Greedy passes after Hypothesis: take the first smaller candidate that still fails, repeat."""
    steps: list[str] = []
    improved = True
    while improved:
        improved = False
        for what, candidate in _candidates(schedule, step):
            candidate = sort_schedule(candidate)
            if size(candidate) < size(schedule) and oracle.fails(candidate):
                schedule, improved = candidate, True
                steps.append(what)
                break
    return schedule, steps


def _candidates(schedule: list[FaultSpec], step: float) -> Any:
    """Smaller neighbours of ``schedule``, most reduction first."""
    for i, fault in enumerate(schedule):
        yield f"dropped {_label(fault)}", schedule[:i] + schedule[i + 1 :]
    for i, fault in enumerate(schedule):
        duration = _duration(fault)
        if not math.isfinite(duration):
            continue
        for shorter in (_on_grid(duration / 2, step), duration - step):
            if step <= shorter < duration:
                yield f"shortened {_label(fault)} to {shorter:g} s", _replace(schedule, i, duration=shorter)
    first = min((f.at for f in schedule), default=0.0)
    for shift in sorted({first, first - _on_grid(first / 2, step, minimum=0.0), step}, reverse=True):
        if 0 < shift <= first:  # the whole timeline earlier, keeping how faults overlap
            yield f"moved every fault {shift:g} s earlier", [f.model_copy(update={"at": round(f.at - shift, 6)}) for f in schedule]
    for i, fault in enumerate(schedule):
        earlier = {0.0, _on_grid(fault.at / 2, step, minimum=0.0), fault.at - step}
        earlier |= {other.at for other in schedule if other.at < fault.at}  # line starts up
        for at in sorted(earlier):
            if 0 <= at < fault.at:
                yield f"moved {_label(fault)} to {at:g} s", _replace(schedule, i, at=at)


def _replace(schedule: list[FaultSpec], index: int, **changes: float) -> list[FaultSpec]:
    return [f.model_copy(update=changes) if i == index else f for i, f in enumerate(schedule)]


def _on_grid(value: float, step: float, minimum: float | None = None) -> float:
    floor = step if minimum is None else minimum
    return max(floor, round(math.floor(value / step + 1e-9) * step, 6))


def _duration(fault: FaultSpec) -> float:
    return math.inf if fault.duration is None else fault.duration


def _label(fault: FaultSpec) -> str:
    between = getattr(fault, "between", None)
    return f"{fault.kind} {'<->'.join(between) if between else fault.target}"


def _with_faults(scenario: Scenario, added: Sequence[FaultSpec]) -> Scenario:
    return scenario.model_copy(update={"faults": [*scenario.faults, *added]})


def _verdicts_only(scenario: Scenario) -> Scenario:
    """The scenario without the observability pass when no objective reads it.

    Detectors and the scorecard only add verdicts for observability objectives; without any they
    cannot change pass or fail, and on small scenarios they cost more than the simulation.
    """
    observability = scenario.observability
    if not observability.enabled or observability.objectives:
        return scenario
    return scenario.model_copy(update={"observability": observability.model_copy(update={"enabled": False})})


def _replay(found: HuntResult) -> Result:
    """Run the minimal failure from its own YAML text, so what is reported is what the file does."""
    text = scenario_yaml(found.failing_scenario(), seed=found.seed)
    scenario = validate_spec(yaml.safe_load(text), Scenario, source="minimal-failure.yaml")
    return simulate(scenario)
