"""Verdicts and faults as one line a person reads, and the file and command that reproduce a run.

Shared by ``testbed hunt`` and the pytest plugin's ``assert_sla`` so that a failure found by a
hunt and a failure in a resilience suite read the same way. Imports stay light (no simulator):
the pytest plugin imports this only when an assertion fails.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testbed.sla import Verdict
    from testbed.spec import FaultSpec, Scenario


def describe_verdict(verdict: Verdict) -> str:
    """``objective: observed X, limit ≤ Y, margin Z`` in the metric's unit (negative = violated by)."""
    from testbed.report.markdown import format_value

    op = "≤" if verdict.bound == "max" else "≥"
    return (
        f"{verdict.objective}: observed {format_value(verdict.observed, verdict.unit)}, "
        f"limit {op} {format_value(verdict.limit, verdict.unit)}, margin {format_value(verdict.margin, verdict.unit)}"
    )


def describe_fault(fault: FaultSpec) -> str:
    """``node_crash p/r/z/rack/node-0 at 0 s for 2 s (speed 0.5)``."""
    between = getattr(fault, "between", None)
    where = "<->".join(between) if between else fault.target
    span = "never repaired" if fault.duration is None else f"for {fault.duration:g} s"
    params = fault_parameters(fault)
    extra = f" ({', '.join(f'{k} {v:g}' for k, v in params.items())})" if params else ""
    return f"{fault.kind} {where} at {fault.at:g} s {span}{extra}"


def fault_parameters(fault: FaultSpec) -> dict[str, float]:
    """The kind-specific parameters of a scripted fault (share, speed, rate, delay, ...)."""
    common = {"kind", "target", "between", "at", "duration"}
    return {k: v for k, v in fault.model_dump().items() if k not in common and isinstance(v, (int, float)) and not math.isnan(v)}


def reproduce_command(path: str, seed: int, plane: str = "sim", duration: float | None = None) -> str:
    """The ``testbed`` command line that runs the same scenario the same way."""
    command = f"testbed {'run' if plane == 'sim' else 'live'} {path} --seed {seed}"
    return command + (f" --duration {duration:g}s" if duration is not None else "")


def scenario_yaml(scenario: Scenario, seed: int) -> str:
    """``scenario`` as YAML that runs from any directory: explicit seed, absolute file paths."""
    import yaml

    data = scenario.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data["seed"] = seed
    arrival = data.get("workload", {}).get("arrival", {})
    if arrival.get("kind") == "trace":
        arrival["path"] = str(Path(arrival["path"]).resolve())
    profiles = data.get("topology", {}).get("profiles")
    if profiles:
        data["topology"]["profiles"] = {k: str(Path(v).resolve()) for k, v in profiles.items()}
    return yaml.safe_dump(data, sort_keys=False)
