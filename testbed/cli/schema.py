"""``testbed schema``: the JSON Schema of the scenario or topology spec, for editors."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from testbed.cli.output import fail
from testbed.spec import Scenario, TopologySpec


def schema(
    kind: Annotated[str, typer.Option(help="scenario or topology")] = "scenario",
) -> None:
    """Print the JSON Schema of the scenario (or topology) spec, for editors."""
    models = {"scenario": Scenario, "topology": TopologySpec}
    if kind not in models:
        raise fail(f"--kind: expected one of {sorted(models)}, got {kind!r}")
    print(json.dumps(models[kind].model_json_schema(by_alias=True), indent=2))
