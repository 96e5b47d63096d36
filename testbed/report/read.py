"""``read_run``: a run directory written by :func:`~testbed.report.write_run` back into a Result.

So reports can be rebuilt (``testbed report DIR``) and runs compared (``testbed compare A B``)
from the records alone, without simulating again. The scenario comes from the ``scenario.yaml``
the run wrote (topology inlined); the observation from its metrics, alerts and scorecard files.
Not kept: ``stats`` (wall time, the machine's rather than the run's) and the gateway's attempts
and health changes (the observation made from them is).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from testbed.records.result import Result
from testbed.sla import Verdict
from testbed.spec import Scenario, SpecError, read_yaml, validate_spec

if TYPE_CHECKING:
    from testbed.observe.pipeline import Observation

RECORDS = ("scenario.yaml", "verdicts.json", "requests.parquet", "timeseries.parquet", "faults.parquet")


def read_verdicts(run_dir: str | Path) -> tuple[dict, list[Verdict]]:
    """verdicts.json: its header (scenario, seed, passed) and the verdicts."""
    path = Path(run_dir) / "verdicts.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        verdicts = [Verdict(**v) for v in data["verdicts"]]
    except OSError as exc:
        raise SpecError(f"{path}: cannot read run records: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"{path}: not the verdicts.json of a testbed run ({exc})") from None
    return data, verdicts


def read_frame(run_dir: str | Path, name: str) -> pd.DataFrame:
    """One parquet record file of a run; a missing or broken one is a SpecError naming it."""
    path = Path(run_dir) / f"{name}.parquet"
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise SpecError(f"{path}: missing: is {path.parent} a run directory (testbed run --out)?") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read records: {exc}") from None


def read_run(run_dir: str | Path) -> Result:
    """The Result a run directory holds (raises :class:`SpecError` naming a missing or broken file)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpecError(f"{run_dir}: not a directory: expected a run directory written by testbed run")
    scenario_path = run_dir / "scenario.yaml"
    if not scenario_path.exists():
        raise SpecError(f"{scenario_path}: missing: runs written before scenario.yaml was recorded cannot be rebuilt; run again")
    # Paths in it (profiles, traces) were resolved when the run loaded its scenario: keep them as written.
    scenario = validate_spec(read_yaml(scenario_path), Scenario, source=str(scenario_path), base_dir="")
    header, verdicts = read_verdicts(run_dir)
    observation = _read_observation(scenario, run_dir) if (run_dir / "scorecard.json").exists() else None
    return Result(
        scenario=scenario,
        seed=int(header.get("seed", scenario.seed)),
        requests=read_frame(run_dir, "requests"),
        timeseries=read_frame(run_dir, "timeseries"),
        sla=verdicts,
        stats={},  # wall time and the like: the machine's, not recorded
        faults=read_frame(run_dir, "faults"),
        attempts=pd.DataFrame(),  # not recorded: the observation below was made from them
        health=pd.DataFrame(),
        alerts=observation.alerts if observation is not None else pd.DataFrame(),
        scorecard=observation.scorecard if observation is not None else pd.DataFrame(),
        observation=observation,
    )


def _read_observation(scenario: Scenario, run_dir: Path) -> Observation:
    """The observation from its files; its verdicts are already in verdicts.json, hence in ``sla``."""
    from testbed.observe.metrics import default_window
    from testbed.observe.pipeline import Observation
    from testbed.observe.rootcause import SignalGraph
    from testbed.observe.scorecard import Summary

    summary = json.loads((run_dir / "scorecard.json").read_text(encoding="utf-8"))
    metrics = read_frame(run_dir, "metrics")
    window = default_window(scenario.timeseries_interval, scenario.observability.window)
    return Observation(
        metrics=metrics,
        alerts=read_frame(run_dir, "alerts"),
        scorecard=read_frame(run_dir, "scorecard"),
        summary=Summary(**{k: math.nan if v is None else v for k, v in summary.items()}),
        verdicts=[],
        graph=SignalGraph.build(metrics, window, 0.0, scenario.duration),
        window=window,
    )
