"""Exit codes and console output shared by every ``testbed`` command.

Exit codes are part of the interface, so scripts and CI can gate on them: 0 when every SLA
holds (or a hunt found nothing), 1 when one is violated (or a hunt found a failure), 2 on bad
input or usage (with one message, never a traceback), 130 when a campaign is interrupted.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbed.records.result import Result

EXIT_PASS, EXIT_SLA_VIOLATED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_NONE_FOUND, EXIT_FOUND = EXIT_PASS, EXIT_SLA_VIOLATED  # testbed hunt: a found failure is a violated SLA

console = Console()
errors = Console(stderr=True)


def print_error(message: str, to: Console | None = None) -> None:
    """One ``error:`` line on stderr; the message is text, never Rich markup."""
    (to or errors).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_warnings(source: object, warnings: list[str]) -> None:
    """``warning:`` lines on stderr: the spec is valid, but these values are probably not meant."""
    for warning in warnings:
        errors.print(f"[bold yellow]warning:[/] {escape(f'{source}: {warning}')}", highlight=False, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    """Print ``message`` as an error and return the exit (code 2) for the caller to raise."""
    print_error(message)
    return typer.Exit(EXIT_BAD_INPUT)


def print_verdicts(result: Result, to: Console | None = None) -> None:
    """The run's outcome counts, its SLA verdicts, its detection scorecard and the overall verdict."""
    from testbed.observe.render import scorecard_table
    from testbed.report.markdown import format_value, outcome_counts

    out = to or console
    counts = outcome_counts(result.requests)
    out.print(
        f"[bold]{result.scenario.name}[/] seed={result.seed}: {len(result.requests):,} requests — "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items())
    )
    table = Table(title="SLA verdicts", title_justify="left")
    for column in ("objective", "limit", "observed", "margin", "verdict"):
        table.add_column(column, justify="left" if column == "objective" else "right", overflow="fold")
    for v in result.sla:
        op = "≤" if v.bound == "max" else "≥"
        verdict = "[green]pass[/]" if v.passed else "[bold red]FAIL[/]"
        table.add_row(escape(v.objective), f"{op} {format_value(v.limit, v.unit)}", format_value(v.observed, v.unit), format_value(v.margin, v.unit), verdict)
    out.print(table)
    scorecard = scorecard_table(result)
    if scorecard is not None:
        out.print(scorecard)
    out.print("[bold green]all SLAs met[/]" if result.passed else "[bold red]SLA violated[/]")
