"""The ``testbed`` command.

Exit codes are part of the interface, so scripts and CI can gate on them: 0 when every SLA
holds, 1 when one is violated, 2 on bad input or usage (with one message, never a traceback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from testbed.result import Result
from testbed.sim import simulate
from testbed.spec import Scenario, SpecError, TopologySpec, load_spec
from testbed.units import parse_duration

app = typer.Typer(
    help="Chaos and resilience testbed for LLM inference serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

EXIT_PASS, EXIT_SLA_VIOLATED, EXIT_BAD_INPUT = 0, 1, 2


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(EXIT_BAD_INPUT)


@app.command()
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
        raise _fail(f"--duration: {exc}" if isinstance(exc, ValueError) else str(exc)) from None
    try:
        result = _simulate_with_progress(scenario, seed, override, quiet)
    except SpecError as exc:
        raise _fail(str(exc)) from None
    out_dir = out or Path("out") / scenario.name
    result.write(out_dir)
    _print_verdicts(result)
    console.print(f"records and report written to [bold]{out_dir}[/]")
    raise typer.Exit(EXIT_PASS if result.passed else EXIT_SLA_VIOLATED)


def _simulate_with_progress(scenario: Scenario, seed: int | None, duration: float | None, quiet: bool) -> Result:
    if quiet:
        return simulate(scenario, seed=seed, duration=duration)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=errors, transient=True) as bar:
        task = bar.add_task(f"simulating {scenario.name}", total=1.0)
        result = simulate(scenario, seed=seed, duration=duration, progress=lambda f: bar.update(task, completed=f))
    return result


def _print_verdicts(result: Result) -> None:
    from testbed.report import format_value, outcome_counts

    counts = outcome_counts(result.requests)
    console.print(
        f"[bold]{result.scenario.name}[/] seed={result.seed}: {len(result.requests):,} requests — "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items())
    )
    table = Table(title="SLA verdicts", title_justify="left")
    for column in ("objective", "limit", "observed", "margin", "verdict"):
        table.add_column(column, justify="left" if column == "objective" else "right")
    for v in result.sla:
        op = "≤" if v.bound == "max" else "≥"
        verdict = "[green]pass[/]" if v.passed else "[bold red]FAIL[/]"
        table.add_row(escape(v.objective), f"{op} {format_value(v.limit, v.unit)}", format_value(v.observed, v.unit), format_value(v.margin, v.unit), verdict)
    console.print(table)
    console.print("[bold green]all SLAs met[/]" if result.passed else "[bold red]SLA violated[/]")


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="scenario or topology YAML files")]) -> None:
    """Check spec files; print one message per invalid file and exit 2 if any is invalid."""
    bad = 0
    for path in files:
        try:
            kind = _spec_kind(path)
            load_spec(path, TopologySpec if kind == "topology" else Scenario)
            console.print(f"[green]ok[/] {path} ({kind})")
        except SpecError as exc:
            errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            bad += 1
    raise typer.Exit(EXIT_BAD_INPUT if bad else EXIT_PASS)


def _spec_kind(path: Path) -> str:
    """Topologies are recognised by their providers list; everything else is a scenario."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return "scenario"  # load_spec reports the read or parse error precisely
    return "topology" if isinstance(data, dict) and "providers" in data else "scenario"


@app.command()
def schema(
    kind: Annotated[str, typer.Option(help="scenario or topology")] = "scenario",
) -> None:
    """Print the JSON Schema of the scenario (or topology) spec, for editors."""
    models = {"scenario": Scenario, "topology": TopologySpec}
    if kind not in models:
        raise _fail(f"--kind: expected one of {sorted(models)}, got {kind!r}")
    print(json.dumps(models[kind].model_json_schema(by_alias=True), indent=2))
