"""``testbed hunt``: run a hunt with a live status line and print what it found, for people.

The command's job is to make a shrunk failure easy to act on: the minimal schedule as a
table, which objectives it breaks and by how much, what the search cost, and the file plus
the command that reproduce it. Exit codes follow the CLI: 1 when a failure was found, 0 when
the SLA held for every schedule within the budget, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbed.cli.output import EXIT_BAD_INPUT, EXIT_FOUND, EXIT_NONE_FOUND, console, errors
from testbed.explain import fault_parameters, reproduce_command
from testbed.spec import Scenario, SpecError

if TYPE_CHECKING:
    from testbed.hunt import HuntResult


def hunt_command(
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
    code = run_hunt(
        scenario_file, budget=budget, shrink_budget=shrink_budget, max_faults=max_faults, kinds=kinds, seed=seed,
        search_seed=search_seed, out=out, quiet=quiet, console=console, errors=errors,
    )
    raise typer.Exit(code)


def parse_kinds(text: str | None) -> list[str] | None:
    """``"node_crash, outage"`` -> ["node_crash", "outage"]; None keeps every kind."""
    from testbed.strategies import DEFAULT_KINDS  # hypothesis: loaded only by the hunt, not by every command

    if text is None:
        return None
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    expected = f"expected a comma-separated list of {', '.join(DEFAULT_KINDS)}"
    if not kinds:
        raise ValueError(f"--kinds: no kind given; {expected}")
    for kind in kinds:
        if kind not in DEFAULT_KINDS:
            raise ValueError(f"--kinds: unknown fault kind {kind!r}; {expected}")
    return kinds


def run_hunt(
    scenario_file: Path,
    *,
    budget: int,
    shrink_budget: int | None,
    max_faults: int,
    kinds: str | None,
    seed: int | None,
    search_seed: int,
    out: Path | None,
    quiet: bool,
    console: Console,
    errors: Console,
) -> int:
    """Load, hunt, print, write ``minimal-failure.yaml``; return the exit code."""
    from testbed.hunt import hunt
    from testbed.strategies import DEFAULT_KINDS

    try:
        scenario = Scenario.from_yaml(scenario_file)
        chosen = parse_kinds(kinds)
    except (SpecError, ValueError) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    run_seed = scenario.seed if seed is None else seed
    console.print(
        f"hunting [bold]{escape(scenario.name)}[/] (seed {run_seed}): up to {max_faults} faults of "
        f"{', '.join(chosen) if chosen else f'{len(DEFAULT_KINDS)} kinds'} within {scenario.duration:g} s; "
        f"budget {budget} schedules", highlight=False,
    )
    with errors.status("searching", spinner="dots") as status:

        def progress(phase: str, used: int, limit: int) -> None:
            if not quiet:
                status.update(f"{'searching' if phase == 'search' else 'shrinking'}: {used}/{limit} simulations")

        found = hunt(
            scenario,
            budget=budget,
            shrink_budget=shrink_budget,
            max_faults=max_faults,
            kinds=chosen,
            seed=seed,
            search_seed=search_seed,
            progress=progress,
        )
    if not found.found:
        console.print(
            f"[bold green]no SLA violation[/] in {found.search_evaluations} schedules "
            f"({found.wall_time:.1f} s wall time)", highlight=False,
        )
        return EXIT_NONE_FOUND
    print_failure(found, console)
    path = found.write(out or Path("out") / scenario.name)
    console.print(f"minimal failure written to [bold]{escape(str(path))}[/]", highlight=False)
    console.print(f"reproduce: [bold]{escape(reproduce_command(str(path), found.seed))}[/]", highlight=False)
    return EXIT_FOUND


def print_failure(found: HuntResult, console: Console) -> None:
    """The minimal schedule, the verdicts it breaks, and the cost of finding it."""
    from testbed.report.markdown import format_value, outcome_counts

    assert found.schedule is not None and found.result is not None
    before = len(found.first_failure or [])
    console.print(
        f"[bold red]SLA violated[/] by a schedule found after {found.search_evaluations} schedules; "
        f"shrunk from {_count(before)} to {_count(len(found.schedule))} in {found.shrink_evaluations} simulations",
        highlight=False,
    )
    schedule = Table(title=f"minimal failing schedule ({_count(len(found.schedule))})", title_justify="left")
    for column in ("#", "kind", "target", "start", "duration", "parameters"):
        schedule.add_column(column, justify="right" if column in ("#", "start", "duration") else "left")
    for index, fault in enumerate(found.schedule, 1):
        between = getattr(fault, "between", None)
        params = ", ".join(f"{k} {v:g}" for k, v in fault_parameters(fault).items())
        schedule.add_row(
            str(index),
            fault.kind,
            escape("<->".join(between) if between else fault.target),
            f"{fault.at:g} s",
            "never repaired" if fault.duration is None else f"{fault.duration:g} s",
            params,
        )
    console.print(schedule)
    why = Table(title="why it fails", title_justify="left")
    for column in ("objective", "limit", "observed", "margin"):
        why.add_column(column, justify="left" if column == "objective" else "right")
    for v in found.violations:
        op = "≤" if v.bound == "max" else "≥"
        why.add_row(escape(v.objective), f"{op} {format_value(v.limit, v.unit)}", format_value(v.observed, v.unit),
                    f"[bold red]{format_value(v.margin, v.unit)}[/]")
    console.print(why)
    requests = found.result.requests
    counts = outcome_counts(requests)
    console.print("requests: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), highlight=False)
    failed = requests.loc[requests["status"] != "ok", "arrival"]
    if len(failed) and found.schedule:
        # Failures that outlast the faults point at the policies (breakers, ejection, health checks).
        ends = [f.at + f.duration for f in found.schedule if f.duration is not None]
        span = f"{min(f.at for f in found.schedule):g} s to {max(ends):g} s" if ends else "never repaired"
        console.print(
            f"requests not ok arrived from {failed.min():.1f} s to {failed.max():.1f} s; the faults span {span}",
            highlight=False,
        )
    if found.scenario.faults:
        console.print(f"(added to the scenario's own {len(found.scenario.faults)} faults)", highlight=False)
    console.print(
        f"hunt took {found.wall_time:.1f} s wall time: {found.evaluations} simulations "
        f"({found.search_evaluations} searching, {found.shrink_evaluations} shrinking)",
        highlight=False,
    )


def _count(faults: int) -> str:
    return f"{faults} fault" if faults == 1 else f"{faults} faults"
