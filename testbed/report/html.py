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
from testbed.records.schema import latency_columns
import testbed.report.figures as figures
from testbed.report.markdown import fleet_load, format_value, latency_summary, outcome_counts, served_by_region
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
nav.toc { background: #f8f8f8; border: 1px solid #e4e4e4; border-radius: 0.4rem; padding: 0.4rem 1.2rem; }
nav.toc ol { columns: 2; margin: 0.3rem 0; } nav.toc a { color: #1a56a8; text-decoration: none; }
h2 { border-bottom: 1px solid #e4e4e4; padding-bottom: 0.2rem; margin-top: 2rem; }
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


def _share(value: float) -> str:
    return "n/a" if value != value else f"{value:.0%}"


def summary_table(summary: dict[str, float]) -> pd.DataFrame:
    """The detection figures as one row for people: counts, shares and rates with their units."""
    per_hour = summary["false_alerts_per_hour"]
    return pd.DataFrame([{
        "faults detected": f"{summary['detected']:,} of {summary['faults']:,}",
        "alerts": f"{summary['alerts']:,}",
        "outside faults": f"{summary['false_alerts']:,} ({'n/a' if per_hour != per_hour else f'{per_hour:.1f}'}/h over "
        f"{summary['fault_free_hours']:.2f} fault-free h)",
        "precision": _share(summary["precision"]), "recall": _share(summary["recall"]),
        "root cause top-1": _share(summary["top1"]), "root cause top-3": _share(summary["top3"]),
    }])


def scorecard_rows(scorecard: pd.DataFrame) -> pd.DataFrame:
    """One row per injected fault: caught or missed, by which detector, how soon, root-cause rank."""
    rows = [{
        "fault": row["kind"], "target": row["target"], "start": f"{row['start']:.0f} s",
        "detected by": row["detector"] if row["detected"] else "missed",
        "after": format_value(row["time_to_detect"], "s") if row["detected"] else "—",
        "root-cause rank": "—" if row["root_cause_rank"] != row["root_cause_rank"] else f"#{int(row['root_cause_rank'])}",
    } for row in scorecard.to_dict("records")]
    return pd.DataFrame(rows, columns=["fault", "target", "start", "detected by", "after", "root-cause rank"])


def alert_rows(alerts: pd.DataFrame) -> pd.DataFrame:
    """Alerts for people: when, which detector and severity, on what, and the likely root cause."""
    rows = [{
        "time": f"{row['time']:.0f} s", "detector": row["detector"], "severity": row["severity"],
        "target": row["target"], "signal": str(row.get("signal") or "").split("|")[-1] or "—",
        "likely root cause": row.get("root_cause") or "—",
    } for row in alerts.to_dict("records")]
    return pd.DataFrame(rows, columns=["time", "detector", "severity", "target", "signal", "likely root cause"])


class _Page:
    """Sections in order, each with an anchor, so the page opens with a table of contents."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str]] = []
        self.parts: list[str] = []
        self.template: dict[str, Any] | None = None  # plotly's default template, once figures are drawn

    def section(self, title: str) -> None:
        anchor = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
        self.sections.append((anchor, title))
        self.parts.append(f"<h2 id='{anchor}'>{html.escape(title)}</h2>")

    def add(self, *parts: str) -> None:
        self.parts += parts

    def toc(self) -> str:
        items = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t in self.sections)
        return f"<nav class='toc'><strong>Contents</strong><ol>{items}</ol></nav>"

    def figure(self, fig: figures.Figure) -> str:
        """A figure's div; the page's first one carries plotly.js inline, the rest reuse it."""
        import plotly.io as pio

        first = self.template is None  # no figure drawn yet: this one brings plotly.js
        if first:
            self.template = default_template()
        return pio.to_html(as_plotly_json(fig, self.template), full_html=False, include_plotlyjs=first,
                           config={"displaylogo": False}, validate=False)


def default_template() -> dict[str, Any]:
    """plotly's default template (``plotly.io.templates.default``) as a dict; {} when there is none."""
    import plotly.io as pio

    return {} if pio.templates.default is None else pio.templates[pio.templates.default].to_plotly_json()


def as_plotly_json(fig: figures.Figure, template: dict[str, Any]) -> figures.Figure:
    """``fig`` as a :class:`plotly.graph_objects.Figure` of it hands itself to plotly.js: with
    ``template`` (:func:`default_template`; ``plotly.io.to_html`` adds none to a dict) in its
    layout and numeric arrays as base64 typed arrays, converted in place."""
    from _plotly_utils.utils import convert_to_base64

    converted = {"data": fig["data"], "layout": dict(fig["layout"])}
    convert_to_base64(converted)  # before the template goes in: it holds no arrays, and is large
    if template and "template" not in converted["layout"]:
        converted["layout"]["template"] = template
    return converted


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


def html_report(result: Result, latency: pd.DataFrame | None = None) -> str:
    """The report.html of a run: verdicts, outcome ledger, where requests were served, latency,
    fleet load and availability over time per region, faults, detection and the topology.

    ``latency`` is the run's :func:`~testbed.report.markdown.latency_summary` if the caller has it.
    """
    scenario, requests = result.scenario, result.requests
    latencies = latency_columns(requests)  # for every latency figure
    counts = outcome_counts(requests)
    verdicts = pd.DataFrame(verdict_rows(result.sla), columns=["objective", "limit", "observed", "margin", "verdict"])
    badge = '<span class="badge pass">PASS</span>' if result.passed else '<span class="badge fail">FAIL</span>'
    head = [
        f"<h1>{html.escape(scenario.name)} {badge}</h1>",
        f"<p>{html.escape(scenario.description.strip())}</p>",
        "<ul>"
        f"<li>seed {result.seed}; duration {format_duration(scenario.duration)}; topology {html.escape(scenario.topology.name)}; "
        f"batching {scenario.serving.batching.policy}; routing {scenario.serving.routing.policy}</li>"
        f"<li>requests: {len(requests):,} — " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + "</li></ul>",
    ]
    page = _Page()
    page.section("SLA verdicts")
    page.add(
        _table(verdicts, ["pass" if v.passed else "fail" for v in result.sla], {"verdict": "verdict"})
        if len(verdicts) else "<p>(no objectives)</p>"
    )
    served = served_by_region(requests)
    if len(served):
        page.section("Where requests were served")
        page.add(_table(served.assign(**{c: served[c].map("{:,}".format) for c in served.columns[1:]})))
    page.section("Latency of successful requests")
    page.add(_table(_latency_table(latency_summary(requests) if latency is None else latency)))
    page.section("Latency over time")
    page.add(*(page.figure(figures.percentiles_over_time(requests, result.faults, m, latency=latencies)) for m in ("ttft", "e2e")))
    page.section("Latency distributions")
    page.add("<div class='grid'>", *(f"<div>{page.figure(figures.latency_cdf(requests, m, latency=latencies))}</div>"
                                     for m in ("ttft", "e2e")), "</div>")
    target = _availability_target(result)
    page.section("Availability")
    page.add(page.figure(figures.availability_over_time(requests, result.faults, target=target)),
             page.figure(figures.availability_by_region(requests, target=target)))
    if not result.timeseries.empty:
        page.section("Fleet load by region")
        page.add(page.figure(figures.fleet_over_time(result.timeseries, result.health, result.faults)))
        load = fleet_load(result.timeseries)
        page.add("<p>Means over the run's samples:</p>", _table(pd.DataFrame({
            "region": load["region"], "utilisation": load["utilisation"].map("{:.1%}".format),
            "queue depth": load["queue depth"].map("{:.2f}".format), "running batch": load["running batch"].map("{:.2f}".format),
        })))
    alerts = observed_frame(result, "alerts")
    if not result.faults.empty or alerts is not None:
        page.section("Faults, detection and recovery")
        page.add(page.figure(figures.fault_timeline(result.faults, alerts)))
        if not result.faults.empty:
            page.add(_faults_table(result.faults))
    scorecard, summary = observed_frame(result, "scorecard"), observation_summary(result)
    if scorecard is not None or summary is not None:
        page.section("Observability scorecard")
    if summary is not None:
        page.add(_table(summary_table(summary)))
    if scorecard is not None:
        page.add(f"<div class='scroll'>{_table(scorecard_rows(scorecard))}</div>")
    if alerts is not None:
        shown = alerts.head(500)
        page.section(f"Alerts ({len(alerts):,})")
        more = f"<p>… the first {len(shown):,}; all in alerts.parquet</p>" if len(alerts) > len(shown) else ""
        page.add(f"<div class='scroll'>{_table(alert_rows(shown))}</div>{more}")
    page.section("Topology")
    page.add(page.figure(figures.topology_graph(Topology.from_spec(scenario.topology))))
    if result.stats:
        page.add(f"<p><em>simulated {result.stats.get('requests', 0):,} requests in {result.stats.get('wall_s', 0):.2f} s wall time</em></p>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(scenario.name)} — testbed report</title><style>{STYLE}</style></head><body>"
        + "\n".join([*head, page.toc(), *page.parts])
        + "</body></html>\n"
    )


def _latency_table(summary: pd.DataFrame) -> pd.DataFrame:
    columns = ["ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p50", "e2e_p99"]
    table = summary[["class", "requests"]].copy()
    table["requests"] = table["requests"].map("{:,}".format)
    for column in columns:
        table[column.replace("_", " ")] = summary[column].map(lambda v: format_value(v, "s"))
    return table


def write_html_report(result: Result, path: str | Path, latency: pd.DataFrame | None = None) -> bool:
    """Write report.html; False (nothing written) when plotly, of the explore extra, is missing,
    so a core install still runs scenarios and writes report.md."""
    if importlib.util.find_spec("plotly") is None:
        return False
    Path(path).write_text(html_report(result, latency), encoding="utf-8")
    return True
