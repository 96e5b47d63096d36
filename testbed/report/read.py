"""``read_run``: a run directory written by :func:`~testbed.report.write_run` back into a Result.

So reports can be rebuilt (``testbed report DIR``) and runs compared (``testbed compare A B``)
from the records alone, without simulating again. The scenario comes from the ``scenario.yaml``
the run wrote (topology inlined); the observation from its metrics, alerts and scorecard files.
Only ``stats`` (wall time, a property of the machine rather than of the run) is not kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from testbed.records.result import Result
from testbed.sla import Verdict
from testbed.spec import Scenario, SpecError, read_yaml, validate_spec

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
    result = Result(
        scenario=scenario,
        seed=int(header.get("seed", scenario.seed)),
        requests=read_frame(run_dir, "requests"),
        timeseries=read_frame(run_dir, "timeseries"),
        sla=verdicts,
        faults=read_frame(run_dir, "faults"),
    )
    if (run_dir / "scorecard.json").exists():
        _read_observation(result, run_dir)
    return result


def _read_observation(result: Result, run_dir: Path) -> None:
    from testbed.observe.metrics import default_window
    from testbed.observe.pipeline import Observation
    from testbed.observe.rootcause import SignalGraph
    from testbed.observe.scorecard import Summary

    scenario = result.scenario
    summary = json.loads((run_dir / "scorecard.json").read_text(encoding="utf-8"))
    metrics = read_frame(run_dir, "metrics")
    window = default_window(scenario.timeseries_interval, scenario.observability.window)
    result.alerts = read_frame(run_dir, "alerts")
    result.scorecard = read_frame(run_dir, "scorecard")
    result.observation = Observation(
        metrics=metrics,
        alerts=result.alerts,
        scorecard=result.scorecard,
        summary=Summary(**{k: math.nan if v is None else v for k, v in summary.items()}),
        verdicts=[],  # already in verdicts.json, hence in result.sla
        graph=SignalGraph.build(metrics, window, 0.0, scenario.duration),
        window=window,
    )
