"""``testbed run``: simulate a scenario, print its SLA verdicts and write records and a report.

While it works it says what it is doing: the simulated clock against the scenario's duration
with an ETA, then the drain (in-flight requests finishing) and the analysis of the records,
then writing the records and reports — a long run never looks frozen.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from testbed.cli.output import EXIT_PASS, EXIT_SLA_VIOLATED, console, errors, fail, print_verdicts, print_warnings
from testbed.observe.sampling import TRACES_OPTION_HELP, with_traces_option
from testbed.records.result import Result
from testbed.report import write_run
from testbed.sim import simulate
from testbed.spec import Scenario, SpecError
from testbed.units import format_duration, parse_duration


def run(
    scenario_file: Annotated[Path, typer.Argument(help="scenario YAML, e.g. faults/baseline.yaml")],
    seed: Annotated[Optional[int], typer.Option(help="override the scenario's seed")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output directory (default out/<scenario name>)")] = None,
    duration: Annotated[Optional[str], typer.Option(help="override the duration, e.g. 90s or 30min")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    traces: Annotated[Optional[str], typer.Option(help=f"override observability.traces: {TRACES_OPTION_HELP}")] = None,
) -> None:
    """Simulate a scenario, print its SLA verdicts and write records and a report."""
    try:
        scenario = Scenario.from_yaml(scenario_file)
        if traces is not None:
            scenario = scenario.model_copy(update={"observability": with_traces_option(scenario.observability, traces)})
    except (SpecError, ValueError) as exc:
        raise fail(str(exc)) from None
    print_warnings(scenario_file, scenario.warnings())
    override = None
    if duration is not None:
        try:
            override = parse_duration(duration)
        except ValueError as exc:
            raise fail(f"--duration: {exc}, got {duration!r}") from None
        if override <= scenario.warmup:
            raise fail(f"--duration: {duration!r} must be longer than the scenario's warmup ({format_duration(scenario.warmup)})")
    try:
        result = _simulate_with_progress(scenario, seed, override, quiet)
    except SpecError as exc:
        raise fail(str(exc)) from None
    out_dir = out or Path("out") / scenario.name
    with nullcontext() if quiet else errors.status(f"writing records and report to {out_dir}"):
        written = write_run(result, out_dir)
    print_verdicts(result)
    console.print(f"records and report written to [bold]{out_dir}[/]")
    if not any(path.name == "report.html" for path in written):
        # The core install has no plotly; say so rather than let report.html go missing silently.
        console.print("report.html not written: it needs plotly (pip install -e '.[explore]')", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_PASS if result.passed else EXIT_SLA_VIOLATED)


class RunProgress:
    """A progress bar on the simulated clock: arrivals up to ``duration``, then drain and analysis.

    The simulator reports the fraction of its horizon (duration + drain) done; a run usually
    drains in a fraction of the drain allowance and then analyses its records, so the bar is
    measured against the duration and, past it, says what is happening instead of freezing.
    """

    def __init__(self, bar: Progress, name: str, duration: float, drain: float) -> None:
        self.bar, self.name, self.duration, self.horizon = bar, name, duration, duration + drain
        self.task: TaskID = bar.add_task(f"simulating {name}", total=duration, clock=self._clock(0.0))

    def _clock(self, now: float) -> str:
        return f"{_clock(now)} of {_clock(self.duration)} simulated"

    def __call__(self, fraction: float) -> None:
        now = fraction * self.horizon
        if now < self.duration:
            self.bar.update(self.task, completed=now, clock=self._clock(now))
        else:
            self.bar.update(
                self.task, completed=self.duration, clock=self._clock(self.duration),
                description=f"{self.name}: draining in-flight requests, then analysing the records",
            )


def _clock(seconds: float) -> str:
    """Simulated time as m:ss (h:mm:ss past an hour)."""
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_columns() -> tuple:
    return (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[clock]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
    )


def _simulate_with_progress(scenario: Scenario, seed: int | None, duration: float | None, quiet: bool) -> Result:
    if quiet:
        return simulate(scenario, seed=seed, duration=duration)
    with Progress(*progress_columns(), console=errors, transient=True) as bar:
        progress = RunProgress(bar, scenario.name, duration if duration is not None else scenario.duration, scenario.drain)
        return simulate(scenario, seed=seed, duration=duration, progress=progress)
