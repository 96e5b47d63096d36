"""``testbed validate``: check spec files, one message per invalid file, exit 2 if any is invalid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from testbed.cli.output import EXIT_BAD_INPUT, EXIT_PASS, console, print_error, print_warnings
from testbed.spec import Scenario, SpecError, TopologySpec, load_spec, read_yaml


def validate(files: Annotated[list[Path], typer.Argument(help="scenario, topology or campaign YAML files")]) -> None:
    """Check spec files; print one message per invalid file and exit 2 if any is invalid."""
    bad = 0
    for path in files:
        try:
            kind = _spec_kind(read_yaml(path))  # unreadable, non-UTF-8 or too deep: a SpecError for this file only
            if kind == "campaign":
                from testbed.campaign.spec import load_campaign

                load_campaign(path)  # validates every cell's scenario too
            else:
                spec = load_spec(path, TopologySpec if kind == "topology" else Scenario)
                if isinstance(spec, Scenario):
                    print_warnings(path, spec.warnings())
            console.print(f"[green]ok[/] {path} ({kind})")
        except SpecError as exc:
            print_error(str(exc))
            bad += 1
    raise typer.Exit(EXIT_BAD_INPUT if bad else EXIT_PASS)


def _spec_kind(data: object) -> str:
    """Topologies are recognised by their providers list, campaigns by their base ``scenario``
    (a scenario has a ``topology`` instead); everything else is a scenario."""
    if not isinstance(data, dict):
        return "scenario"
    if "providers" in data:
        return "topology"
    return "campaign" if "scenario" in data and "topology" not in data else "scenario"
