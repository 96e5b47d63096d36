"""Observation of a run, end to end: records → metrics → alerts → root causes → scorecard.

Both planes' records reach :func:`observe` through :func:`testbed.finish.finish_run`, the tail
they share, so detectors are validated on the same records whichever plane produced them. :func:`write_observation`
writes what an operator's tools would read: ``metrics.parquet``, ``alerts.parquet``,
``scorecard.parquet`` (+ ``scorecard.json``), ``metrics.prom`` and ``traces.jsonl`` (unless
``observability.traces`` is ``none``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from testbed.observe.detectors import Span, alerts_frame, detect
from testbed.observe.metrics import Placement, default_window, window_end, window_metrics
from testbed.observe.rootcause import SignalGraph
from testbed.observe.scorecard import Summary, as_jsonable, objective_verdicts, score
from testbed.sla import Verdict
from testbed.spec import Scenario
from testbed.topology import Topology

if TYPE_CHECKING:
    from testbed.records.result import Records, Result


@dataclass
class Observation:
    """What the observability stack made of a run."""

    metrics: pd.DataFrame
    alerts: pd.DataFrame
    scorecard: pd.DataFrame
    summary: Summary
    verdicts: list[Verdict]
    graph: SignalGraph
    window: float


def observe(result: Records | Result, spec: Scenario | None = None) -> Observation:
    """Metrics, alerts (with root-cause rankings), scorecard and observability verdicts of a run."""
    scenario = spec or result.scenario
    settings = scenario.observability
    topology = Topology.from_spec(scenario.topology)
    window = default_window(scenario.timeseries_interval, settings.window)
    metrics = window_metrics(result.requests, result.timeseries, result.attempts, Placement.of(topology), window)
    # The first window only holds the requests quick enough to finish in it: no baseline.
    start = max(scenario.warmup, window)
    span = Span(window, start if start < scenario.duration else scenario.warmup, scenario.duration)
    alerts = alerts_frame(detect(settings.detectors, scenario.sla, result.requests, metrics, result.health, topology, span))
    graph = SignalGraph.build(metrics, window, 0.0, scenario.duration)
    # A ranking can use the metrics of the window the alert fell in once that window closes.
    closes = window_end(alerts["time"].to_numpy() - 1e-9, window).tolist()
    rankings = [graph.rank(t, s) for t, s in zip(closes, alerts["signal"].tolist())]
    alerts["root_cause"] = [r[0][0] if r else "" for r in rankings]
    alerts["root_causes"] = [json.dumps([c for c, _ in r[:5]]) for r in rankings]
    faults = result.faults if not result.faults.empty else _no_faults()
    card, summary = score(alerts, faults, settings.match_grace, (span.start, span.stop))
    verdicts = objective_verdicts(settings.objectives, card, summary)
    return Observation(metrics, alerts, card, summary, verdicts, graph, window)


def write_observation(result: Result, out: Path) -> dict[str, Path]:
    """Write the observation's files into ``out``; returns name → path."""
    from testbed.observe.prometheus import exposition
    from testbed.observe.traces import run_sampler, write_traces

    observation: Observation = result.observation
    paths = {
        "metrics": out / "metrics.parquet",
        "alerts": out / "alerts.parquet",
        "scorecard": out / "scorecard.parquet",
        "scorecard_summary": out / "scorecard.json",
        "prometheus": out / "metrics.prom",
        "traces": out / "traces.jsonl",
    }
    observation.metrics.to_parquet(paths["metrics"], index=False)
    observation.alerts.to_parquet(paths["alerts"], index=False)
    observation.scorecard.to_parquet(paths["scorecard"], index=False)
    paths["scorecard_summary"].write_text(json.dumps(as_jsonable(observation.summary.as_dict()), indent=2) + "\n")
    paths["prometheus"].write_bytes(exposition(result))
    if run_sampler(result).exports:
        write_traces(result, paths["traces"])
    else:  # traces: none; a file left by an earlier run into the same directory would be mistaken for this one's
        paths.pop("traces").unlink(missing_ok=True)
    return paths


def _no_faults() -> pd.DataFrame:
    return pd.DataFrame({"fault_id": pd.Series(dtype="int64"), "kind": pd.Series(dtype=object), "target": pd.Series(dtype=object),
                         "start": pd.Series(dtype=float), "end": pd.Series(dtype=float)})
