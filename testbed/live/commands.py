"""What ``testbed calibrate`` and ``testbed live`` do, kept out of ``cli.py`` (which only parses).

Both return the command's exit code: 0 success / all SLAs met, 1 an SLA violated, 2 bad input
(one message on stderr, no traceback).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from testbed.spec import Scenario, SpecError
from testbed.units import parse_duration

EXIT_PASS, EXIT_SLA_VIOLATED, EXIT_BAD_INPUT = 0, 1, 2


def calibrate_command(
    out: Path, engine: str, model: str, device: str, grid_name: str, parallel: int, console: Console, errors: Console
) -> int:
    """Measure (with ``parallel`` engines side by side), fit, write the profile, print the held-out error."""
    from testbed.calibrate import (
        GRIDS, PADDING, check_engine, fit_with_error, measure_grid, measure_in_parallel, open_timer, profile_model_name, source_note,
    )

    if grid_name not in GRIDS:
        errors.print(f"[bold red]error:[/] --grid: expected one of {sorted(GRIDS)}, got {grid_name!r}")
        return EXIT_BAD_INPUT
    if parallel < 1 or (parallel > 1 and engine == "vllm"):
        errors.print("[bold red]error:[/] --parallel: expected an integer >= 1 (above 1 not with --engine vllm)")
        return EXIT_BAD_INPUT
    grid = GRIDS[grid_name]
    try:
        check_engine(engine, device)
        profile_model_name(model)
        if parallel > 1:
            console.print(f"measuring with {parallel} engines side by side ...")
            measured = measure_in_parallel(engine, model, device, grid, parallel)
        else:
            timer = open_timer(engine, model, device)
            try:
                measured = measure_grid(timer, grid, progress=lambda m: console.print(f"  {m}", highlight=False))
            finally:
                close = getattr(timer, "close", None)
                if close is not None:
                    close()
    except (ValueError, RuntimeError) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_INPUT
    profile, point_errors = fit_with_error(
        measured, grid, device, profile_model_name(model), source_note(engine, grid_name, parallel), PADDING[engine]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile.model_dump(mode="json"), indent=2) + "\n")
    summary = ", ".join(f"{k} {v * 100:.1f}%" for k, v in profile.held_out_error.items())
    console.print(f"held-out error on {len(point_errors)} points off the grid: {summary}")
    console.print(f"profile for {profile.device} / {profile.model} written to [bold]{out}[/]")
    return EXIT_PASS


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
) -> int:
    """Replay a scenario live (optionally beside its simulation) and print verdicts and fidelity."""
    from testbed.cli import _print_verdicts
    from testbed.live.injector import LiveUnsupported
    from testbed.live.replay import run_live

    try:
        scenario = Scenario.from_yaml(scenario_file)
        override = parse_duration(duration) if duration is not None else None
        out_dir = out or Path("out") / f"{scenario.name}-live"
        result = run_live(
            scenario, seed=seed, out_dir=None, engine=engine, scale=scale, duration=override,
            progress=lambda m: errors.print(f"[dim]{m}[/]", highlight=False),
        )
    except (SpecError, LiveUnsupported, ValueError) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    result.write(out_dir)
    _print_verdicts(result)
    for failure in result.stats.get("live_action_failures", []):
        errors.print(f"[yellow]warning:[/] fault action failed: {failure}", highlight=False)
    if compare:
        from testbed.fidelity import compare as compare_runs
        from testbed.sim import simulate

        simulated = simulate(result.scenario, seed=result.seed)
        comparison = compare_runs(simulated, result)
        path = comparison.write(out_dir)
        console.print(comparison.markdown(), markup=False, highlight=False)
        console.print(f"fidelity report written to [bold]{path}[/]")
    console.print(f"records and report written to [bold]{out_dir}[/]")
    return EXIT_PASS if result.passed else EXIT_SLA_VIOLATED
