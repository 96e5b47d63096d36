"""``testbed run``: simulate a scenario, print its SLA verdicts and write records and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from testbed.cli.output import EXIT_PASS, EXIT_SLA_VIOLATED, console, errors, fail, print_verdicts
from testbed.records.result import Result
from testbed.report import write_run
from testbed.sim import simulate
from testbed.spec import Scenario, SpecError
from testbed.units import parse_duration


def run(
    scenario_file: Annotated[Path, typer.Argument(help="scenario YAML, e.g. faults/baseline.yaml")],
    seed: Annotated[Optional[int], typer.Option(help="override the scenario's seed")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output directory (default out/<scenario name>)")] = None,
    duration: Annotated[Optional[str], typer.Option(help="override the duration, e.g. 90s or 30min")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Simulate a scenario, print its SLA verdicts and write records and a report."""
    try:
        scenario = Scenario.from_yaml(scenario_file)
        override = parse_duration(duration) if duration is not None else None
        if override is not None and override <= scenario.warmup:
            raise SpecError(f"--duration: {duration!r} must be longer than the scenario's warmup")
    except (SpecError, ValueError) as exc:
        raise fail(f"--duration: {exc}" if isinstance(exc, ValueError) else str(exc)) from None
    try:
        result = _simulate_with_progress(scenario, seed, override, quiet)
    except SpecError as exc:
        raise fail(str(exc)) from None
    out_dir = out or Path("out") / scenario.name
    written = write_run(result, out_dir)
    print_verdicts(result)
    console.print(f"records and report written to [bold]{out_dir}[/]")
    if not any(path.name == "report.html" for path in written):
        # The core install has no plotly; say so rather than let report.html go missing silently.
        console.print("report.html not written: it needs plotly (pip install -e '.[explore]')", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_PASS if result.passed else EXIT_SLA_VIOLATED)


def _simulate_with_progress(scenario: Scenario, seed: int | None, duration: float | None, quiet: bool) -> Result:
    if quiet:
        return simulate(scenario, seed=seed, duration=duration)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task(f"simulating {scenario.name}", total=1.0)
        result = simulate(scenario, seed=seed, duration=duration, progress=lambda f: bar.update(task, completed=f))
    return result
