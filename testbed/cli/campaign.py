"""``testbed campaign``: run a campaign file with a progress bar and print its verdicts per cell.

Exit codes follow the rest of the CLI: 0 when every cell passed on every seed, 1 when a verdict
failed or a run errored, 2 on a bad campaign file or option (one message, never a traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from testbed.cli.output import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_PASS, EXIT_SLA_VIOLATED, console, errors
from testbed.spec import SpecError

if TYPE_CHECKING:
    from testbed.campaign.driver import CampaignResult


def campaign(
    campaign_file: Annotated[Path, typer.Argument(help="campaign YAML, e.g. faults/campaigns/failover-matrix.yaml")],
    workers: Annotated[int, typer.Option(help="runs at a time (processes, or Ray CPUs)")] = 1,
    executor: Annotated[str, typer.Option(help="local (process pool) or ray")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local cluster)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output directory (default out/campaigns/<name>)")] = None,
    resume: Annotated[bool, typer.Option(help="keep the runs already in the journal, do the rest")] = False,
    retry_errors: Annotated[bool, typer.Option(help="with --resume, also redo runs that errored")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Run every cell x seed of a campaign; journal, summarise and report it (exit 1 if a cell fails)."""
    code = campaign_command(campaign_file, workers, executor, address, out, resume, retry_errors, quiet, console, errors)
    raise typer.Exit(code)


def campaign_command(
    path: Path,
    workers: int,
    executor: str,
    address: str | None,
    out: Path | None,
    resume: bool,
    retry_errors: bool,
    quiet: bool,
    console: Console,
    errors: Console,
) -> int:
    """Run the campaign at ``path``; print a verdict table; return the exit code."""
    # Imported here: the campaign machinery (scipy's statistics among it) would otherwise load
    # with every command, `testbed run` included, since the CLI imports all of them.
    from testbed.campaign.driver import run_campaign
    from testbed.campaign.executors import EXECUTORS
    from testbed.campaign.spec import load_campaign

    if executor not in EXECUTORS:
        return _bad(errors, f"--executor: expected one of {list(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        return _bad(errors, f"--workers: expected at least 1, got {workers}")
    try:
        campaign = load_campaign(path)
    except SpecError as exc:
        return _bad(errors, str(exc))
    out_dir = out or Path("out") / "campaigns" / campaign.spec.name
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors, transient=True, disable=quiet) as bar:
        task = bar.add_task(f"campaign {campaign.spec.name}", total=campaign.runs, status="")
        tally = {"pass": 0, "fail": 0, "errored": 0}

        def advance(row: dict) -> None:
            outcome = "errored" if row["status"] == "errored" else "pass" if row["passed"] else "fail"
            tally[outcome] += 1
            bar.update(task, advance=1, status=f"pass {tally['pass']} fail {tally['fail']} errored {tally['errored']}")

        try:
            if resume:
                bar.update(task, description=f"campaign {campaign.spec.name} (resuming)")
            result = run_campaign(
                campaign, workers=workers, executor=executor, address=address, out_dir=out_dir,
                resume=resume, retry_errors=retry_errors, on_row=advance,
            )
        except ValueError as exc:
            return _bad(errors, str(exc))
        except KeyboardInterrupt:
            errors.print(f"interrupted: finished runs are in {escape(str(out_dir))}/journal.jsonl; rerun with --resume to continue")
            return EXIT_INTERRUPTED
    print_cells(result, console)
    console.print(f"journal, results, summary and reports written to [bold]{escape(str(out_dir))}[/]")
    return EXIT_PASS if result.passed else EXIT_SLA_VIOLATED


def print_cells(result: CampaignResult, console: Console) -> None:
    """The verdict of every cell, and a one-line account of the whole campaign."""
    from testbed.campaign.matrix import short_key

    keys = list(result.campaign.spec.matrix)
    table = Table(title=f"campaign {result.campaign.spec.name}: verdicts per cell", title_justify="left")
    for column in ("cell", *(short_key(k) for k in keys), "passed", "errored", "verdict"):
        table.add_column(column)
    for cell in result.cells.to_dict("records"):
        ran = cell["passed"] + cell["failed"]
        verdict = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "error": "[bold yellow]error[/]"}[cell["verdict"]]
        table.add_row(cell["cell"], *(escape(str(cell[k])) for k in keys), f"{cell['passed']}/{ran}", str(cell["errored"]), verdict)
    console.print(table)
    runs = len(result.results)
    console.print(
        f"{runs} runs ({result.reused} from the journal), {result.errored} errored; "
        + ("[bold green]every cell passed[/]" if result.passed else "[bold red]some cells did not pass[/]")
    )


def _bad(errors: Console, message: str) -> int:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return EXIT_BAD_INPUT
