"""What a run leaves behind: records, fleet series and verdicts (written by :func:`testbed.report.write_run`).

:class:`Records` is what a plane hands to :func:`testbed.finish.finish_run`; :class:`Result` is
what comes out, complete, and knows nothing of how it is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from testbed.sla import Verdict, verdicts_frame
from testbed.spec import Scenario


@dataclass(frozen=True, slots=True)
class Records:
    """What a run recorded, before anyone judged it: the input of verdicts and observation."""

    scenario: Scenario
    requests: pd.DataFrame
    timeseries: pd.DataFrame
    faults: pd.DataFrame
    attempts: pd.DataFrame
    health: pd.DataFrame


@dataclass(frozen=True)
class Result:
    """The records of one run (simulated or live) and their verdicts: everything downstream reads only these.

    Complete when built (by :func:`testbed.finish.finish_run`): nothing is filled in later.
    """

    scenario: Scenario
    seed: int
    requests: pd.DataFrame
    timeseries: pd.DataFrame
    sla: list[Verdict]  # the SLA's verdicts, then the observability objectives'
    stats: dict[str, Any]
    faults: pd.DataFrame
    # Observability (testbed/observe/): the gateway's attempts and health-probe changes, and
    # what the detectors made of the run — alerts, a scorecard against the injected faults.
    attempts: pd.DataFrame
    health: pd.DataFrame
    alerts: pd.DataFrame
    scorecard: pd.DataFrame
    observation: Any  # testbed.observe.pipeline.Observation (metrics, summary, graph), None when disabled
    fleet: pd.DataFrame = field(default_factory=pd.DataFrame)  # elastic fleets: replica lifecycle events

    @classmethod
    def of(cls, records: Records, seed: int, sla: list[Verdict], stats: dict[str, Any], observation: Any) -> Result:
        """The result of ``records`` judged by ``sla`` and, when observability is on, ``observation``."""
        alerts = observation.alerts if observation is not None else pd.DataFrame()
        scorecard = observation.scorecard if observation is not None else pd.DataFrame()
        verdicts = list(sla) + (list(observation.verdicts) if observation is not None else [])
        return cls(
            records.scenario, seed, records.requests, records.timeseries, verdicts, stats, records.faults,
            records.attempts, records.health, alerts, scorecard, observation,
        )

    @property
    def passed(self) -> bool:
        """True when every SLA objective holds."""
        return all(v.passed for v in self.sla)

    @property
    def verdicts(self) -> pd.DataFrame:
        return verdicts_frame(self.sla)
