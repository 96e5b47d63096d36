"""Sim-vs-real fidelity: the same scenario's simulated and live records, side by side.

Both runs leave the same records, so the comparison reads only those: latency percentiles of
successful requests (TTFT, TPOT, end-to-end), throughput, availability, the prefix-cache hit
rate (cached / prompt tokens, when the replicas cache) and the outcome ledger,
each with the simulation's relative error against the live run (``sim / live - 1``: negative
means the simulation is optimistic); whether each SLA verdict agrees; and, fault by fault (the
schedules are identical by construction), how long detection and SLA recovery took in each.
Only requests that arrived in the scored window ``[warmup, duration)`` count, as for verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.records.result import Result
from testbed.records.schema import latency_columns
from testbed.report.markdown import format_value, outcome_counts

PERCENTILES = (50, 90, 99)
LATENCY_METRICS = ("ttft", "tpot", "e2e")


@dataclass
class Comparison:
    """What ``--compare`` reports: metric rows, verdict rows and fault-timing rows."""

    scenario: str
    metrics: pd.DataFrame  # metric, unit, sim, live, rel_error
    verdicts: pd.DataFrame  # objective, sim, live, agree
    faults: pd.DataFrame  # kind, target, start, sim/live detected and recovered after

    @property
    def verdicts_agree(self) -> bool:
        return bool(self.verdicts["agree"].all()) if len(self.verdicts) else True

    def error(self, metric: str) -> float:
        """Relative error of one metric row, e.g. ``error("e2e p99")``."""
        row = self.metrics[self.metrics["metric"] == metric]
        return float(row["rel_error"].iloc[0]) if len(row) else math.nan

    def markdown(self) -> str:
        return fidelity_markdown(self)

    def write(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / "fidelity.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown())
        return path


def scored(result: Result) -> pd.DataFrame:
    """Requests that arrived in the scored window [warmup, duration)."""
    requests, scenario = result.requests, result.scenario
    arrival = requests["arrival"]
    return requests[(arrival >= scenario.warmup) & (arrival < scenario.duration)]


def summary(result: Result) -> dict[str, tuple[float, str]]:
    """The compared figures of one run: name -> (value, unit)."""
    requests = scored(result)
    span = result.scenario.duration - result.scenario.warmup
    ok = requests[requests["status"] == "ok"]
    latency = latency_columns(ok)
    figures: dict[str, tuple[float, str]] = {}
    for metric in LATENCY_METRICS:
        values = latency[metric].dropna().to_numpy()
        for p in PERCENTILES:
            figures[f"{metric} p{p}"] = (float(np.percentile(values, p)) if len(values) else math.nan, "s")
    figures["throughput"] = (len(ok) / span, "req/s")
    figures["token throughput"] = (float(ok["output_tokens"].sum()) / span, "tok/s")
    figures["availability"] = (len(ok) / len(requests) if len(requests) else math.nan, "share")
    if result.scenario.serving.batching.prefix_caching:
        prompt = float(ok["prompt_tokens"].sum())
        figures["cache hit rate"] = (float(ok["cached_tokens"].sum()) / prompt if prompt else math.nan, "share")
    for status, count in outcome_counts(requests).items():
        figures[f"requests {status}"] = (float(count), "")
    return figures


def relative_error(sim: float, live: float) -> float:
    """sim / live - 1; NaN when undefined (no live value, or both zero: then 0)."""
    if math.isnan(sim) or math.isnan(live):
        return math.nan
    if live == 0:
        return 0.0 if sim == 0 else math.inf
    return sim / live - 1


def compare(sim: Result, live: Result) -> Comparison:
    """Side-by-side figures of a simulated and a live run of the same scenario and seed."""
    sim_figures, live_figures = summary(sim), summary(live)
    metrics = pd.DataFrame(
        [
            {"metric": name, "unit": unit, "sim": value, "live": live_figures[name][0], "rel_error": relative_error(value, live_figures[name][0])}
            for name, (value, unit) in sim_figures.items()
        ]
    )
    live_verdicts = {v.objective: v.passed for v in live.sla}
    verdicts = pd.DataFrame(
        [
            {"objective": v.objective, "sim": v.passed, "live": live_verdicts.get(v.objective), "agree": v.passed == live_verdicts.get(v.objective)}
            for v in sim.sla
        ],
        columns=["objective", "sim", "live", "agree"],
    )
    return Comparison(sim.scenario.name, metrics, verdicts, fault_timings(sim.faults, live.faults))


def fault_timings(sim: pd.DataFrame, live: pd.DataFrame) -> pd.DataFrame:
    """Per fault: seconds from injection to detection and to SLA recovery, in each run."""
    columns = ["kind", "target", "start", "sim_detected", "live_detected", "sim_recovered", "live_recovered"]
    if sim.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for i, fault in enumerate(sim.to_dict("records")):
        other = live.iloc[i].to_dict() if i < len(live) else {}
        rows.append(
            {
                "kind": fault["kind"],
                "target": fault["target"],
                "start": fault["start"],
                "sim_detected": fault.get("detected_at", math.nan) - fault["start"],
                "live_detected": other.get("detected_at", math.nan) - fault["start"],
                "sim_recovered": fault.get("recovered_at", math.nan) - fault["start"],
                "live_recovered": other.get("recovered_at", math.nan) - fault["start"],
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _cell(value: float, unit: str) -> str:
    if unit == "":
        return "n/a" if math.isnan(value) else f"{value:,.0f}"
    return format_value(value, unit)


def _error_cell(error: float) -> str:
    if math.isnan(error):
        return "n/a"
    return "∞" if math.isinf(error) else f"{error * 100:+.1f}%"


def fidelity_markdown(comparison: Comparison) -> str:
    """fidelity.md: the metric table, the verdicts, the fault timings."""
    lines = [
        f"# Fidelity: {comparison.scenario}",
        "",
        "Relative error is `sim / live - 1` (negative: the simulation is optimistic).",
        "",
        "| metric | simulated | live | relative error |",
        "|---|---|---|---|",
    ]
    for row in comparison.metrics.to_dict("records"):
        error = _error_cell(row["rel_error"]) if row["unit"] else ""
        lines.append(f"| {row['metric']} | {_cell(row['sim'], row['unit'])} | {_cell(row['live'], row['unit'])} | {error} |")
    lines += ["", "## SLA verdicts", "", "| objective | simulated | live | agree |", "|---|---|---|---|"]
    for row in comparison.verdicts.to_dict("records"):
        live = "n/a" if row["live"] is None else ("pass" if row["live"] else "FAIL")
        lines.append(f"| {row['objective']} | {'pass' if row['sim'] else 'FAIL'} | {live} | {'yes' if row['agree'] else '**no**'} |")
    if comparison.verdicts.empty:
        lines.append("| (no objectives) | | | |")
    if not comparison.faults.empty:
        lines += [
            "",
            "## Failover timings (seconds after the fault started)",
            "",
            "| fault | target | at | detected (sim) | detected (live) | SLA recovered (sim) | SLA recovered (live) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in comparison.faults.to_dict("records"):
            cells = [format_value(row[c], "s") for c in ("sim_detected", "live_detected", "sim_recovered", "live_recovered")]
            lines.append(f"| {row['kind']} | {row['target']} | {row['start']:.1f} s | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
