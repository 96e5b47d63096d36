"""The observability scorecard for people: a rich table for the terminal, lines for report.md."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from testbed.records.result import Result

MAX_ROWS = 20
TARGET_WIDTH = 60  # longer targets fold onto a second line


def _seconds(value: float) -> str:
    return "—" if value != value else f"{value:.0f} s"


def _rank(value: float) -> str:
    return "—" if value != value else f"#{int(value)}"


def _share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0%}"


def summary_line(result: Result) -> str:
    s = result.observation.summary
    per_hour = "n/a" if math.isnan(s.false_alerts_per_hour) else f"{s.false_alerts_per_hour:.1f}"
    return (
        f"{s.alerts} alerts, {s.false_alerts} outside faults ({per_hour}/h over {s.fault_free_hours:.2f} fault-free h); "
        f"detected {s.detected}/{s.faults} faults; precision {_share(s.precision)}, recall {_share(s.recall)}; "
        f"root cause top-1 {_share(s.top1)}, top-3 {_share(s.top3)}"
    )


def scorecard_table(result: Result) -> Table | None:
    """One row per injected fault (the first ``MAX_ROWS``), or None when nothing was observed."""
    if result.observation is None:
        return None
    table = Table(title="Observability scorecard", title_justify="left", caption=summary_line(result), caption_justify="left")
    rows = result.scorecard.head(MAX_ROWS).to_dict("records")
    # The target is the key information: the other columns wrap first on a narrow (80-column)
    # terminal, so it stays whole on one line; nothing is ever cut to "…".
    target_width = min(TARGET_WIDTH, max((len(str(row["target"])) for row in rows), default=6))
    for column in ("fault", "target", "start", "detected by", "after", "root cause rank"):
        table.add_column(column, justify="left" if column in ("fault", "target", "detected by") else "right",
                         overflow="fold", min_width=target_width if column == "target" else None)
    for row in rows:
        detector = row["detector"] if row["detected"] else "[bold red]missed[/]"
        table.add_row(escape(row["kind"]), escape(row["target"]), f"{row['start']:.0f} s", detector, _seconds(row["time_to_detect"]), _rank(row["root_cause_rank"]))
    if len(result.scorecard) > MAX_ROWS:
        table.add_row(f"… {len(result.scorecard) - MAX_ROWS} more in scorecard.parquet", "", "", "", "", "")
    return table


def scorecard_markdown(result: Result) -> list[str]:
    """The report.md section: summary, per-fault rows and the first alerts."""
    if result.observation is None:
        return []
    lines = ["", "## Observability scorecard", "", summary_line(result), ""]
    if not result.scorecard.empty:
        lines += ["| fault | target | start | detected by | after | root-cause rank |", "|---|---|---|---|---|---|"]
        for row in result.scorecard.head(50).to_dict("records"):
            detector = row["detector"] if row["detected"] else "**missed**"
            lines.append(f"| {row['kind']} | {row['target']} | {row['start']:.0f} s | {detector} | {_seconds(row['time_to_detect'])} | {_rank(row['root_cause_rank'])} |")
    alerts = result.alerts
    if not alerts.empty:
        lines += ["", f"First alerts ({len(alerts)} in alerts.parquet):", "", "| time | detector | severity | target | likely root cause |", "|---|---|---|---|---|"]
        for row in alerts.head(15).to_dict("records"):
            lines.append(f"| {row['time']:.0f} s | {row['detector']} | {row['severity']} | {row['target']} | {row['root_cause']} |")
    return lines
