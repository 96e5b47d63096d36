"""The ``testbed`` command: one module per command, exit codes and console output in :mod:`.output`.

Exit codes are part of the interface, so scripts and CI can gate on them: 0 when every SLA
holds, 1 when one is violated, 2 on bad input or usage (with one message, never a traceback).
"""

from __future__ import annotations

import typer

from testbed.cli import calibrate, campaign, explore, hunt, live, run, schema, serve, validate

app = typer.Typer(
    help="Chaos and resilience testbed for LLM inference serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run.run)
app.command("validate")(validate.validate)
app.command("campaign")(campaign.campaign)
app.command("hunt")(hunt.hunt_command)
app.command("calibrate")(calibrate.calibrate)
app.command("live")(live.live)
app.command("serve")(serve.serve)
app.command("explore")(explore.explore)
app.command("schema")(schema.schema)
