"""``testbed live SCENARIO --target TARGET`` and ``testbed live --rollback JOURNAL`` (options of :mod:`.live`).

Exit codes as everywhere: 0 all SLAs met (and the steady state held, no stop condition
tripped), 1 an objective failed, the run was aborted or the steady state did not hold, 2 bad
input — a spec error, or a fault the target cannot carry out, refused before anything started.
``--rollback`` exits 0 when everything left in force was undone, 1 otherwise.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from testbed.spec import Scenario, SpecError
from testbed.units import parse_duration

from testbed.cli.output import EXIT_BAD_INPUT, EXIT_PASS, EXIT_SLA_VIOLATED as EXIT_FAIL


def target_command(
    scenario_file: Path | None,
    target_file: Path,
    mode: str | None,
    dry_run: bool,
    allow_remote: bool,
    journal: Path | None,
    seed: int | None,
    out: Path | None,
    duration: str | None,
    compare: bool,
    console: Console,
    errors: Console,
    traces: str | None = None,
) -> int:
    from testbed.cli.output import print_verdicts
    from testbed.observe.sampling import with_traces_option
    from testbed.live.injector import LiveUnsupported
    from testbed.live.targets.plan import plan_target
    from testbed.live.targets.run import SteadyStateFailed, run_target, write
    from testbed.live.targets.spec import load_target

    def fail(message: str) -> int:
        errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT

    if scenario_file is None:
        return fail("--target: give the scenario to run against it: testbed live SCENARIO --target TARGET")
    if mode not in (None, "client", "gateway"):
        return fail(f"--mode: expected client or gateway, got {mode!r}")
    try:
        scenario = Scenario.from_yaml(scenario_file)
        if traces is not None:
            scenario = scenario.model_copy(update={"observability": with_traces_option(scenario.observability, traces)})
        target = load_target(target_file, allow_remote=allow_remote)
        override = parse_duration(duration) if duration is not None else None
        if override is not None:
            scenario = scenario.model_copy(update={"duration": override})
        if dry_run:
            plan = plan_target(scenario, target, str(target_file), mode, seed)
            for line in plan.describe():
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            return EXIT_PASS
        out_dir = out or Path("out") / f"{scenario.name}-{target.name}"
        journal_path = journal or out_dir / "journal.jsonl"
        errors.print(f"[dim]journal: {journal_path} (undo a crashed run with: testbed live --rollback {journal_path})[/]", highlight=False)
        outcome = run_target(
            scenario, target, source=str(target_file), base_dir=target_file.resolve().parent, journal_path=journal_path,
            mode=mode, seed=seed, progress=lambda m: errors.print(f"[dim]{escape(m)}[/]", highlight=False),
        )
    except (SpecError, LiveUnsupported, ValueError) as exc:
        return fail(str(exc))
    except SteadyStateFailed as exc:
        errors.print(f"[bold red]{escape(str(exc))}[/]; no fault was injected", highlight=False, soft_wrap=True)
        return EXIT_FAIL
    write(outcome, out_dir)
    result = outcome.result
    print_verdicts(result)
    for failure in result.stats.get("live_action_failures", []):
        errors.print(f"[yellow]warning:[/] fault action failed: {escape(failure)}", highlight=False)
    for failure in result.stats.get("rollback_failures", []):
        errors.print(f"[bold red]rollback failed:[/] {escape(failure)} (retry: testbed live --rollback {journal_path})", highlight=False)
    if result.stats.get("aborted"):
        errors.print(f"[bold red]aborted:[/] {escape(result.stats['aborted'])}", highlight=False)
    if compare:
        from testbed.live.fidelity import compare as compare_runs
        from testbed.sim import simulate

        comparison = compare_runs(simulate(result.scenario, seed=result.seed), result)
        console.print(comparison.markdown(), markup=False, highlight=False)
        console.print(f"fidelity report (simulation vs your deployment) written to [bold]{comparison.write(out_dir)}[/]")
    console.print(f"records, report and target metrics written to [bold]{out_dir}[/]; journal {journal_path}")
    return EXIT_PASS if result.passed and not result.stats.get("rollback_failures") else EXIT_FAIL


def rollback_command(journal: Path, console: Console, errors: Console) -> int:
    from testbed.live.targets.operator import rollback_journal

    try:
        failures = rollback_journal(journal, lambda m: console.print(escape(m), highlight=False))
    except (OSError, ValueError) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    return EXIT_FAIL if failures else EXIT_PASS
