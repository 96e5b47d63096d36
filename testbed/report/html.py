"""The per-run HTML report: one self-contained file with the verdicts and the run's figures.

plotly.js is embedded once, inline, so the report opens offline, from a CI artifact or a mail
attachment, with nothing to fetch. Like ``report.md`` it reads only the run's records, so a
simulated and a live run of one scenario give reports that compare line by line.
"""

from __future__ import annotations

import html
import importlib.util
import math
from pathlib import Path
from typing import Any

import pandas as pd

from testbed.records.result import Result
from testbed.report.markdown import format_value, latency_summary, outcome_counts
from testbed.sla import Verdict
from testbed.topology import Topology
from testbed.units import format_duration

STYLE = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
tr.fail td { background: #fde8e8; }
tr.pass td.verdict { color: #137333; font-weight: 600; }
tr.fail td.verdict { color: #b3261e; font-weight: 700; }
.badge { display: inline-block; padding: 0.2rem 0.8rem; border-radius: 1rem; color: white; font-weight: 700; }
.badge.pass { background: #137333; } .badge.fail { background: #b3261e; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.scroll { max-height: 28rem; overflow: auto; }
"""


def verdict_rows(verdicts: list[Verdict]) -> list[dict[str, str]]:
    """Verdicts formatted for people: limit with its bound, observed, margin and pass/FAIL."""
    rows = []
    for v in verdicts:
        op = "≤" if v.bound == "max" else "≥"
        rows.append(
            {
                "objective": v.objective,
                "limit": f"{op} {format_value(v.limit, v.unit)}",
                "observed": format_value(v.observed, v.unit),
                "margin": format_value(v.margin, v.unit),
                "verdict": "pass" if v.passed else "FAIL",
            }
        )
    return rows


def _table(frame: pd.DataFrame, row_class: list[str] | None = None, cell_class: dict[str, str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        attrs = f' class="{row_class[i]}"' if row_class else ""
        cells = "".join(
            f'<td class="{(cell_class or {}).get(str(col), "")}">{html.escape(_cell(value))}</td>'
            for col, value in zip(frame.columns, row)
        )
        body.append(f"<tr{attrs}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(value: object, width: int = 60) -> str:
    """A table cell for people: four significant digits, long text cut (the parquet has it all)."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def observation_summary(result: Result) -> dict[str, float] | None:
    """The run's detection figures (precision, recall, false alerts per hour...) if it was observed."""
    summary = getattr(getattr(result, "observation", None), "summary", None)
    return summary.as_dict() if hasattr(summary, "as_dict") else None


def _figure(fig: Any, first: bool) -> str:
    """A figure's div; the first one carries plotly.js inline, the rest reuse it."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=True if first else False, config={"displaylogo": False})


def _availability_target(result: Result) -> float | None:
    targets = [v.limit for v in result.sla if v.metric == "availability" and v.request_class is None]
    return targets[0] if targets else None


def _faults_table(faults: pd.DataFrame, limit: int = 50) -> str:
    rows = []
    for row in faults.head(limit).to_dict("records"):
        detected = row.get("detected_at", math.nan) - row["start"]
        recovered = row.get("recovered_at", math.nan) - row["start"]
        rows.append(
            {
                "kind": row["kind"],
                "target": row["target"],
                "start": f"{row['start']:.1f} s",
                "end": "never" if math.isinf(row["end"]) else f"{row['end']:.1f} s",
                "detected after": format_value(detected, "s"),
                "SLA recovered after": "held throughout" if recovered == 0 else format_value(recovered, "s"),
            }
        )
    more = f"<p>… and {len(faults) - limit:,} more in faults.parquet</p>" if len(faults) > limit else ""
    return _table(pd.DataFrame(rows)) + more


def observed_frame(result: Result, name: str) -> pd.DataFrame | None:
    """``result.alerts`` / ``result.scorecard`` when the run has them and they are not empty."""
    value = getattr(result, name, None)
    if isinstance(value, pd.DataFrame) and not value.empty:
        return value
    if isinstance(value, dict) and value:
        return pd.DataFrame([{"measure": k, "value": v} for k, v in value.items()])
    return None


def html_report(result: Result) -> str:
    """The report.html of a run: verdicts, outcome ledger, latency table and the figures."""
    from testbed.report import plots  # plotly comes with the explore extra; see write_html_report
    scenario, requests = result.scenario, result.requests
    counts = outcome_counts(requests)
    verdicts = pd.DataFrame(verdict_rows(result.sla), columns=["objective", "limit", "observed", "margin", "verdict"])
    badge = '<span class="badge pass">PASS</span>' if result.passed else '<span class="badge fail">FAIL</span>'
    parts = [
        f"<h1>{html.escape(scenario.name)} {badge}</h1>",
        f"<p>{html.escape(scenario.description.strip())}</p>",
        "<ul>"
        f"<li>seed {result.seed}; duration {format_duration(scenario.duration)}; topology {html.escape(scenario.topology.name)}; "
        f"batching {scenario.serving.batching.policy}; routing {scenario.serving.routing.policy}</li>"
        f"<li>requests: {len(requests):,} — " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + "</li></ul>",
        "<h2>SLA verdicts</h2>",
        _table(verdicts, ["pass" if v.passed else "fail" for v in result.sla], {"verdict": "verdict"})
        if len(verdicts)
        else "<p>(no objectives)</p>",
        "<h2>Latency of successful requests</h2>",
        _table(_latency_table(requests)),
    ]
    figures = [
        plots.percentiles_over_time(requests, result.faults, "ttft"),
        plots.percentiles_over_time(requests, result.faults, "e2e"),
    ]
    grid = [plots.latency_cdf(requests, "ttft"), plots.latency_cdf(requests, "e2e")]
    parts.append("<h2>Latency over time</h2>")
    parts += [_figure(fig, first=i == 0) for i, fig in enumerate(figures)]
    parts.append("<h2>Latency distributions</h2><div class='grid'>")
    parts += [f"<div>{_figure(fig, first=False)}</div>" for fig in grid]
    parts.append("</div><h2>Availability</h2>")
    parts.append(_figure(plots.availability_by_region(requests, target=_availability_target(result)), first=False))
    alerts = observed_frame(result, "alerts")
    if not result.faults.empty or alerts is not None:
        parts.append("<h2>Faults, detection and recovery</h2>")
        parts.append(_figure(plots.fault_timeline(result.faults, alerts), first=False))
        if not result.faults.empty:
            parts.append(_faults_table(result.faults))
    scorecard, summary = observed_frame(result, "scorecard"), observation_summary(result)
    if scorecard is not None or summary is not None:
        parts.append("<h2>Observability scorecard</h2>")
    if summary is not None:
        parts.append(_table(pd.DataFrame([summary])))
    if scorecard is not None:
        parts.append(f"<div class='scroll'>{_table(scorecard)}</div>")
    if alerts is not None:
        parts += [f"<h2>Alerts ({len(alerts):,})</h2>", f"<div class='scroll'>{_table(alerts.head(500))}</div>"]
    parts += ["<h2>Topology</h2>", _figure(plots.topology_graph(Topology.from_spec(scenario.topology)), first=False)]
    if result.stats:
        parts.append(
            f"<p><em>simulated {result.stats.get('requests', 0):,} requests in {result.stats.get('wall_s', 0):.2f} s wall time</em></p>"
        )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(scenario.name)} — testbed report</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def _latency_table(requests: pd.DataFrame) -> pd.DataFrame:
    summary = latency_summary(requests)
    columns = ["ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p50", "e2e_p99"]
    table = summary[["class", "requests"]].copy()
    table["requests"] = table["requests"].map("{:,}".format)
    for column in columns:
        table[column.replace("_", " ")] = summary[column].map(lambda v: format_value(v, "s"))
    return table


def write_html_report(result: Result, path: str | Path) -> bool:
    """Write report.html; False (nothing written) when plotly, of the explore extra, is missing,
    so a core install still runs scenarios and writes report.md."""
    if importlib.util.find_spec("plotly") is None:
        return False
    Path(path).write_text(html_report(result), encoding="utf-8")
    return True
