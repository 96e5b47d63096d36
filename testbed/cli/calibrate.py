"""``testbed calibrate``: time the real engine over a grid, fit the simulator's table model, write a profile.

``--startup-only`` re-measures just a replica's start (process start, model load, warm-up) into
an existing profile, leaving its tables alone: the figures the simulator's cold starts are made of.
"""

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
    startup_only: Annotated[bool, typer.Option(
        "--startup-only", help="re-measure only the replica's start-up (process, model load, warm-up) into the existing profile --out")] = False,
    starts: Annotated[int, typer.Option(help="replica starts to time with --startup-only, one at a time")] = 5,
) -> None:
    """Time the real engine over a grid, fit the simulator's table model, write a profile (with its held-out error)."""
    if startup_only:
        raise typer.Exit(startup_command(out, engine, model, device, starts, console, errors))
    raise typer.Exit(calibrate_command(out, engine, model, device, grid, parallel, console, errors))


def startup_command(out: Path, engine: str, model: str, device: str, starts: int, console: Console, errors: Console) -> int:
    """Time ``starts`` replica start-ups and write them into the profile at ``out``."""
    import os

    from testbed.live.calibrate import measure_startup, profile_model_name, with_startup
    from testbed.perf import TableModel
    from testbed.spec import SpecError

    if engine != "torch":
        errors.print("[bold red]error:[/] --startup-only: times the built-in replica server; use --engine torch")
        return EXIT_BAD_INPUT
    if starts < 1:
        errors.print(f"[bold red]error:[/] --starts: expected an integer >= 1, got {starts}")
        return EXIT_BAD_INPUT
    try:
        profile = TableModel.from_json(out).profile
        name = profile_model_name(model)
        if (profile.device, profile.model) != (device, name):
            raise ValueError(f"{out}: the profile is for {profile.device} / {profile.model}, not {device} / {name}; "
                             "pass its --device and --model")
        measured = measure_startup(model, device, starts, progress=lambda m: console.print(f"  {m}", highlight=False))
    except (SpecError, ValueError, RuntimeError) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_INPUT
    load = os.getloadavg()[0]
    note = (f"startup_seconds, load_seconds, warmup_seconds: medians of {starts} replica-server starts one at a time "
            f"(testbed calibrate --startup-only), load average {load:.1f}")
    updated = with_startup(profile, measured, note)
    out.write_text(json.dumps(updated.model_dump(mode="json"), indent=2) + "\n")
    process = updated.startup_seconds - updated.load_seconds - updated.warmup_seconds
    console.print(f"start-up {updated.startup_seconds:.2f} s: process and server {process:.2f} s, model load "
                  f"{updated.load_seconds:.2f} s, warm-up {updated.warmup_seconds:.2f} s (medians of {starts})")
    console.print(f"profile [bold]{out}[/] updated; its tables are unchanged")
    return EXIT_PASS


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
