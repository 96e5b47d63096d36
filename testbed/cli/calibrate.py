"""``testbed calibrate``: time the real engine over a grid, fit the simulator's table model, write a profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from testbed.cli.output import EXIT_BAD_INPUT, EXIT_PASS, console, errors


def calibrate(
    out: Annotated[Path, typer.Option(help="profile JSON to write, e.g. profiles/cpu-fp32-tiny.json")],
    engine: Annotated[str, typer.Option(help="torch (the built-in replica server), torch-runner (the bare model) or vllm")] = "torch",
    model: Annotated[str, typer.Option(help="built-in model (tiny, small) or a local HF model directory")] = "tiny",
    device: Annotated[str, typer.Option(help="device kind the profile is for: cpu-fp32 or cpu-int8 (quantized)")] = "cpu-fp32",
    grid: Annotated[str, typer.Option(help="quick or standard measurement grid")] = "standard",
    parallel: Annotated[int, typer.Option(help="engines measured side by side (as many as will share this machine live)")] = 1,
) -> None:
    """Time the real engine over a grid, fit the simulator's table model, write a profile (with its held-out error)."""
    raise typer.Exit(calibrate_command(out, engine, model, device, grid, parallel, console, errors))


def calibrate_command(
    out: Path, engine: str, model: str, device: str, grid_name: str, parallel: int, console: Console, errors: Console
) -> int:
    """Measure (with ``parallel`` engines side by side), fit, write the profile, print the held-out error."""
    from testbed.live.calibrate import (
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
