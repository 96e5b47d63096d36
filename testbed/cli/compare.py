"""``testbed compare A B``: two runs side by side — verdicts, outcome counts and latency percentiles.

Reads only the records of the two run directories (verdicts.json, requests.parquet), so any two
runs compare: two seeds, two serving configurations, a simulated run and its live replay. The
difference column is B − A (and B/A − 1 for latencies), so "B is worse" reads as a positive
latency difference or a negative availability one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from testbed.cli.output import EXIT_PASS, console, fail
from testbed.records.schema import latency_columns
from testbed.report.markdown import format_value, outcome_counts
from testbed.report.read import read_frame, read_verdicts
from testbed.sla import Verdict
from testbed.spec import SpecError

PERCENTILES = (50, 90, 99)


def compare(
    run_a: Annotated[Path, typer.Argument(help="first run directory (A), e.g. out/baseline")],
    run_b: Annotated[Path, typer.Argument(help="second run directory (B)")],
) -> None:
    """Compare two run directories: verdicts, outcomes and latency percentiles side by side, with B − A."""
    try:
        header_a, verdicts_a = read_verdicts(run_a)
        header_b, verdicts_b = read_verdicts(run_b)
        requests_a, requests_b = read_frame(run_a, "requests"), read_frame(run_b, "requests")
    except SpecError as exc:
        raise fail(str(exc)) from None
    label_a, label_b = f"A: {header_a.get('scenario')} seed {header_a.get('seed')}", f"B: {header_b.get('scenario')} seed {header_b.get('seed')}"
    console.print(f"A = {escape(str(run_a))} ({escape(label_a[3:])}); B = {escape(str(run_b))} ({escape(label_b[3:])})", highlight=False)
    console.print(verdict_table(verdicts_a, verdicts_b))
    console.print(percentile_table(requests_a, requests_b))
    console.print(f"overall: A {_overall(header_a)}, B {_overall(header_b)}")
    raise typer.Exit(EXIT_PASS)


def verdict_table(a: list[Verdict], b: list[Verdict]) -> Table:
    """One row per objective of either run (matched by name), with both observations and verdicts."""
    table = Table(title="SLA verdicts", title_justify="left")
    for column in ("objective", "A observed", "A", "B observed", "B", "B − A"):
        table.add_column(column, justify="left" if column == "objective" else "right", overflow="fold")
    by_a, by_b = {v.objective: v for v in a}, {v.objective: v for v in b}
    for name in dict.fromkeys([*by_a, *by_b]):
        va, vb = by_a.get(name), by_b.get(name)
        unit = (va or vb).unit
        diff = vb.observed - va.observed if va and vb else math.nan
        table.add_row(
            escape(name),
            format_value(va.observed, unit) if va else "—",
            _verdict(va),
            format_value(vb.observed, unit) if vb else "—",
            _verdict(vb),
            _signed(diff, unit),
        )
    return table


def percentile_table(a: pd.DataFrame, b: pd.DataFrame) -> Table:
    """Outcome counts, availability and TTFT/TPOT/e2e percentiles of successful requests."""
    table = Table(title="requests and latency (successful requests)", title_justify="left")
    for column in ("measure", "A", "B", "B − A", "change"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    counts_a, counts_b = outcome_counts(a), outcome_counts(b)
    table.add_row("requests", f"{len(a):,}", f"{len(b):,}", f"{len(b) - len(a):+,}", _change(len(a), len(b)))
    for status in counts_a:
        table.add_row(status, f"{counts_a[status]:,}", f"{counts_b[status]:,}", f"{counts_b[status] - counts_a[status]:+,}", "")
    avail_a = counts_a["ok"] / len(a) if len(a) else math.nan
    avail_b = counts_b["ok"] / len(b) if len(b) else math.nan
    table.add_row("availability", format_value(avail_a, "share"), format_value(avail_b, "share"), _signed(avail_b - avail_a, "share"), "")
    lat_a, lat_b = _latencies(a), _latencies(b)
    for metric in ("ttft", "tpot", "e2e"):
        for p in PERCENTILES:
            qa, qb = _quantile(lat_a[metric], p), _quantile(lat_b[metric], p)
            table.add_row(f"{metric} p{p}", format_value(qa, "s"), format_value(qb, "s"), _signed(qb - qa, "s"), _change(qa, qb))
    return table


def _latencies(requests: pd.DataFrame) -> pd.DataFrame:
    return latency_columns(requests[requests["status"] == "ok"])


def _quantile(values: pd.Series, p: float) -> float:
    return float(values.quantile(p / 100)) if len(values) else math.nan


def _overall(header: dict) -> str:
    return "[green]pass[/]" if header.get("passed") else "[bold red]FAIL[/]"


def _verdict(v: Verdict | None) -> str:
    if v is None:
        return "—"
    return "[green]pass[/]" if v.passed else "[bold red]FAIL[/]"


def _signed(diff: float, unit: str) -> str:
    if isinstance(diff, float) and math.isnan(diff):
        return "—"
    text = format_value(abs(diff), unit)
    return ("+" if diff > 0 else "−" if diff < 0 else "±") + text


def _change(a: float, b: float) -> str:
    if not a or math.isnan(a) or math.isnan(b):
        return ""
    return f"{(b / a - 1) * 100:+.1f}%"
