"""``testbed live``: replay a scenario on real replicas in wall-clock time, with its faults.

It returns the command's exit code: 0 all SLAs met, 1 an SLA violated, 2 bad input (one message
on stderr, no traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from testbed.cli.output import EXIT_BAD_INPUT, EXIT_PASS, EXIT_SLA_VIOLATED, console, errors, fail, print_verdicts
from testbed.observe.sampling import TRACES_OPTION_HELP, with_traces_option
from testbed.report import write_run
from testbed.spec import Scenario, SpecError
from testbed.units import parse_duration


def live(
    scenario_file: Annotated[Optional[Path], typer.Argument(help="scenario YAML, e.g. faults/live-replica-crash.yaml")] = None,
    engine: Annotated[str, typer.Option(help="torch (built-in engine) or vllm")] = "torch",
    scale: Annotated[Optional[float], typer.Option(help="shrink the scenario to this share of its replicas and load")] = None,
    compare: Annotated[bool, typer.Option(help="also simulate it and write fidelity.md (sim vs live)")] = False,
    seed: Annotated[Optional[int], typer.Option(help="override the scenario's seed")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output directory (default out/<scenario name>-live)")] = None,
    duration: Annotated[Optional[str], typer.Option(help="override the duration, e.g. 30s")] = None,
    target: Annotated[Optional[Path], typer.Option(help="run against your own deployment, described by this target YAML")] = None,
    mode: Annotated[Optional[str], typer.Option(help="with --target: client (your entry point) or gateway (the project's gateway)")] = None,
    dry_run: Annotated[bool, typer.Option(help="with --target: print the plan, touch nothing")] = False,
    allow_remote: Annotated[bool, typer.Option(help="with --target: allow addresses outside this machine")] = False,
    journal: Annotated[Optional[Path], typer.Option(help="with --target: the journal file (default <out>/journal.jsonl)")] = None,
    rollback: Annotated[Optional[Path], typer.Option(help="undo what the run that wrote this journal left in force")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no fault or counter lines while the replay runs")] = False,
    traces: Annotated[Optional[str], typer.Option(help=f"override observability.traces: {TRACES_OPTION_HELP}")] = None,
) -> None:
    """Replay a scenario on real replicas in wall-clock time, with its faults; same records and verdicts as run.

    With --target the scenario runs against your own deployment instead (docs/targets.md).
    """
    if rollback is not None:
        from testbed.cli.targets import rollback_command

        raise typer.Exit(rollback_command(rollback, console, errors))
    if target is not None:
        from testbed.cli.targets import target_command

        if engine != "torch" or scale is not None:
            raise fail("--engine and --scale choose the project's own replicas; with --target your deployment serves as it is")

        raise typer.Exit(target_command(scenario_file, target, mode, dry_run, allow_remote, journal, seed, out, duration, compare, console, errors, traces))
    if scenario_file is None:
        raise fail("give a scenario YAML (or --rollback JOURNAL)")
    raise typer.Exit(live_command(scenario_file, engine, scale, compare, seed, out, duration, console, errors, quiet, traces))


def live_command(
    scenario_file: Path,
    engine: str,
    scale: float | None,
    compare: bool,
    seed: int | None,
    out: Path | None,
    duration: str | None,
    console: Console,
    errors: Console,
    quiet: bool = False,
    traces: str | None = None,
) -> int:
    """Replay a scenario live (optionally beside its simulation) and print verdicts and fidelity."""
    from testbed.live.injector import LiveUnsupported
    from testbed.live.progress import load_hint
    from testbed.live.replay import run_live

    try:
        scenario = Scenario.from_yaml(scenario_file)
        if traces is not None:
            scenario = scenario.model_copy(update={"observability": with_traces_option(scenario.observability, traces)})
        override = parse_duration(duration) if duration is not None else None
        out_dir = out or Path("out") / f"{scenario.name}-live"
        result = run_live(
            scenario, seed=seed, out_dir=None, engine=engine, scale=scale, duration=override,
            progress=lambda m: errors.print(f"[dim]{m}[/]", highlight=False),
            on_event=None if quiet else lambda e: errors.print(escape(e.describe()), highlight=False, soft_wrap=True),
        )
    except (SpecError, LiveUnsupported, ValueError) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    write_run(result, out_dir)
    print_verdicts(result)
    for failure in result.stats.get("live_action_failures", []):
        errors.print(f"[yellow]warning:[/] fault action failed: {failure}", highlight=False)
    simulated_passed = None
    if compare:
        from testbed.live.fidelity import compare as compare_runs
        from testbed.sim import simulate

        simulated = simulate(result.scenario, seed=result.seed)
        simulated_passed = simulated.passed
        comparison = compare_runs(simulated, result)
        path = comparison.write(out_dir)
        console.print(comparison.markdown(), markup=False, highlight=False)
        console.print(f"fidelity report written to [bold]{path}[/]")
    hint = load_hint(result.stats, result.passed, simulated_passed)
    if hint is not None:
        errors.print(f"[yellow]{escape(hint)}[/]", highlight=False, soft_wrap=True)
    console.print(f"records and report written to [bold]{out_dir}[/]")
    return EXIT_PASS if result.passed else EXIT_SLA_VIOLATED
