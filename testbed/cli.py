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
    written = result.write(out_dir)
    _print_verdicts(result)
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
    from testbed.observe.render import scorecard_table

    scorecard = scorecard_table(result)
    if scorecard is not None:
        console.print(scorecard)
    console.print("[bold green]all SLAs met[/]" if result.passed else "[bold red]SLA violated[/]")


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="scenario, topology or campaign YAML files")]) -> None:
    """Check spec files; print one message per invalid file and exit 2 if any is invalid."""
    bad = 0
    for path in files:
        try:
            kind = _spec_kind(path)
            if kind == "campaign":
                from testbed.campaign.spec import load_campaign

                load_campaign(path)  # validates every cell's scenario too
            else:
                load_spec(path, TopologySpec if kind == "topology" else Scenario)
            console.print(f"[green]ok[/] {path} ({kind})")
        except SpecError as exc:
            errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            bad += 1
    raise typer.Exit(EXIT_BAD_INPUT if bad else EXIT_PASS)


def _spec_kind(path: Path) -> str:
    """Topologies are recognised by their providers list, campaigns by their base ``scenario``
    (a scenario has a ``topology`` instead); everything else is a scenario."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return "scenario"  # load_spec reports the read or parse error precisely
    if not isinstance(data, dict):
        return "scenario"
    if "providers" in data:
        return "topology"
    return "campaign" if "scenario" in data and "topology" not in data else "scenario"


@app.command()
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
    from testbed.campaign.console import campaign_command

    code = campaign_command(campaign_file, workers, executor, address, out, resume, retry_errors, quiet, console, errors)
    raise typer.Exit(code)


@app.command()
def hunt(
    scenario_file: Annotated[Path, typer.Argument(help="scenario YAML whose SLA should survive faults")],
    budget: Annotated[int, typer.Option(min=1, help="fault schedules to simulate while searching")] = 100,
    shrink_budget: Annotated[Optional[int], typer.Option(min=0, help="simulations for shrinking (default 2 x budget, at least 50)")] = None,
    max_faults: Annotated[int, typer.Option(min=1, help="faults per schedule at most")] = 3,
    kinds: Annotated[Optional[str], typer.Option(help="comma-separated fault kinds, e.g. node_crash,outage (default: all)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="override the scenario's simulation seed")] = None,
    search_seed: Annotated[int, typer.Option(help="seed of the search itself")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="where minimal-failure.yaml goes (default out/<scenario name>)")] = None,
    quiet: Annotated[bool, typer.Option(help="no live status line")] = False,
) -> None:
    """Search fault schedules that break the SLA; shrink the first to a minimal runnable scenario (exit 1 if found)."""
    from testbed.hunt_cli import run_hunt

    code = run_hunt(
        scenario_file, budget=budget, shrink_budget=shrink_budget, max_faults=max_faults, kinds=kinds, seed=seed,
        search_seed=search_seed, out=out, quiet=quiet, console=console, errors=errors,
    )
    raise typer.Exit(code)


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option(help="profile JSON to write, e.g. profiles/cpu-fp32-tiny.json")],
    engine: Annotated[str, typer.Option(help="torch (the built-in replica server), torch-runner (the bare model) or vllm")] = "torch",
    model: Annotated[str, typer.Option(help="built-in model (tiny, small) or a local HF model directory")] = "tiny",
    device: Annotated[str, typer.Option(help="device kind the profile is for: cpu-fp32 or cpu-int8 (quantized)")] = "cpu-fp32",
    grid: Annotated[str, typer.Option(help="quick or standard measurement grid")] = "standard",
    parallel: Annotated[int, typer.Option(help="engines measured side by side (as many as will share this machine live)")] = 1,
) -> None:
    """Time the real engine over a grid, fit the simulator's table model, write a profile (with its held-out error)."""
    from testbed.live.commands import calibrate_command

    raise typer.Exit(calibrate_command(out, engine, model, device, grid, parallel, console, errors))


@app.command()
def live(
    scenario_file: Annotated[Optional[Path], typer.Argument(help="scenario YAML, e.g. faults/live-replica-crash.yaml")] = None,
    engine: Annotated[str, typer.Option(help="torch (built-in engine) or vllm")] = "torch",
    scale: Annotated[Optional[float], typer.Option(help="shrink the scenario to this share of its replicas and load")] = None,
    compare: Annotated[bool, typer.Option(help="also simulate it and write fidelity.md (sim vs live)")] = False,
    seed: Annotated[Optional[int], typer.Option(help="override the scenario's seed")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output directory (default out/<scenario name>-live)")] = None,
    duration: Annotated[Optional[str], typer.Option(help="override the duration, e.g. 30s")] = None,
    target: Annotated[Optional[Path], typer.Option(help="run against your own deployment described by this target YAML")] = None,
    mode: Annotated[Optional[str], typer.Option(help="with --target: client (your entry point) or gateway (the project's gateway)")] = None,
    dry_run: Annotated[bool, typer.Option(help="with --target: print the plan, touch nothing")] = False,
    allow_remote: Annotated[bool, typer.Option(help="with --target: allow addresses outside this machine")] = False,
    journal: Annotated[Optional[Path], typer.Option(help="with --target: journal file (default <out>/journal.jsonl)")] = None,
    rollback: Annotated[Optional[Path], typer.Option(help="undo what the run that wrote this journal left in force")] = None,
) -> None:
    """Replay a scenario on real replicas in wall-clock time, with its faults; same records and verdicts as run."""
    from testbed.live.commands import live_command

    if rollback is not None or target is not None:
        from testbed.live.targets.command import rollback_command, target_command

        if rollback is not None:
            raise typer.Exit(rollback_command(rollback, console, errors))
        assert target is not None
        raise typer.Exit(target_command(scenario_file, target, mode, dry_run, allow_remote, journal, seed, out, duration, console, errors))
    if scenario_file is None:
        raise _fail("give a scenario YAML (or --rollback JOURNAL)")

    raise typer.Exit(live_command(scenario_file, engine, scale, compare, seed, out, duration, console, errors))


@app.command()
def serve(
    replicas: Annotated[int, typer.Option(min=1, help="primary replicas")] = 2,
    regions: Annotated[int, typer.Option(min=1, help="regions the primaries are spread over")] = 1,
    engine: Annotated[str, typer.Option(help="torch or vllm")] = "torch",
    fallback: Annotated[bool, typer.Option(help="add an int8 CPU replica in a fallback-tier region")] = False,
    model: Annotated[str, typer.Option(help="built-in model (tiny, small) or a local HF directory")] = "tiny",
    port: Annotated[int, typer.Option(help="gateway port on 127.0.0.1 (0 picks a free one)")] = 8000,
    scenario: Annotated[Optional[Path], typer.Option(help="take the serving policies from this scenario YAML")] = None,
    trace_file: Annotated[Optional[Path], typer.Option(help="write OpenTelemetry spans here as JSON lines")] = None,
) -> None:
    """Start replicas, a chaos proxy each and the gateway; print the endpoints; Ctrl-C stops it all."""
    from testbed.live.serve import run_serve

    raise typer.Exit(run_serve(replicas, regions, engine, fallback, model, port, scenario, trace_file, console, _fail))


@app.command()
def explore(
    port: Annotated[int, typer.Option(help="port to serve the page on")] = 8501,
    address: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 keeps the page on this machine")] = "127.0.0.1",
) -> None:
    """Open the what-if explorer: `streamlit run app.py`, served on 127.0.0.1."""
    from testbed.explore import serve, streamlit_command

    try:
        streamlit_command(address, port)  # checks that app.py and streamlit are there
    except SpecError as exc:
        raise _fail(str(exc)) from None
    console.print(f"explorer on [bold]http://{address}:{port}[/] (Ctrl-C stops it)")
    serve(address, port)


@app.command()
def schema(
    kind: Annotated[str, typer.Option(help="scenario or topology")] = "scenario",
) -> None:
    """Print the JSON Schema of the scenario (or topology) spec, for editors."""
    models = {"scenario": Scenario, "topology": TopologySpec}
    if kind not in models:
        raise _fail(f"--kind: expected one of {sorted(models)}, got {kind!r}")
    print(json.dumps(models[kind].model_json_schema(by_alias=True), indent=2))
