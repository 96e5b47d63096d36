"""What a run leaves behind: records, fleet series and verdicts (written by :func:`testbed.report.write_run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    observation: Any = None  # testbed.observe.pipeline.Observation: metrics, summary, graph

    @property
    def passed(self) -> bool:
        """True when every SLA objective holds."""
        return all(v.passed for v in self.sla)

    @property
    def verdicts(self) -> pd.DataFrame:
        return verdicts_frame(self.sla)
