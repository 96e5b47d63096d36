"""What a run leaves behind: records, fleet series and verdicts, and how they are written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from testbed.sla import Verdict, verdicts_frame
from testbed.spec import Scenario


@dataclass
class Result:
    """The records of one run (simulated or live): everything downstream reads only these."""

    scenario: Scenario
    seed: int
    requests: pd.DataFrame
    timeseries: pd.DataFrame
    sla: list[Verdict]
    stats: dict[str, Any] = field(default_factory=dict)
    faults: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Observability (testbed/observe/): the gateway's attempts and health-probe changes, and
    # what the detectors made of the run — alerts, a scorecard against the injected faults.
    attempts: pd.DataFrame = field(default_factory=pd.DataFrame)
    health: pd.DataFrame = field(default_factory=pd.DataFrame)
    alerts: pd.DataFrame = field(default_factory=pd.DataFrame)
    scorecard: pd.DataFrame = field(default_factory=pd.DataFrame)
    fleet: pd.DataFrame = field(default_factory=pd.DataFrame)  # elastic fleets: replica lifecycle events
    observation: Any = None  # testbed.observe.pipeline.Observation: metrics, summary, graph

    @property
    def passed(self) -> bool:
        """True when every SLA objective holds."""
        return all(v.passed for v in self.sla)

    @property
    def verdicts(self) -> pd.DataFrame:
        return verdicts_frame(self.sla)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write requests/timeseries/faults parquet, verdicts.json, report.md and report.html into ``out_dir``."""
        from testbed.html_report import write_html_report
        from testbed.report import markdown_report

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "requests": out / "requests.parquet",
            "timeseries": out / "timeseries.parquet",
            "faults": out / "faults.parquet",
            "verdicts": out / "verdicts.json",
            "report": out / "report.md",
            "html_report": out / "report.html",
        }
        self.requests.to_parquet(paths["requests"], index=False)
        self.timeseries.to_parquet(paths["timeseries"], index=False)
        self.faults.to_parquet(paths["faults"], index=False)
        verdicts = {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "passed": self.passed,
            "verdicts": [v.as_dict() for v in self.sla],
        }
        paths["verdicts"].write_text(json.dumps(verdicts, indent=2, default=_json_number) + "\n")
        paths["report"].write_text(markdown_report(self))
        if self.observation is not None:
            from testbed.observe.pipeline import write_observation

            paths |= write_observation(self, out)
        if not write_html_report(self, paths["html_report"]):
            del paths["html_report"]  # plotly (the explore extra) is not installed
        return list(paths.values())


def _json_number(value: Any) -> Any:
    """numpy scalars to plain numbers; NaN stays NaN (json writes it as NaN)."""
    return value.item() if hasattr(value, "item") else str(value)
