"""The ``testbed`` command: one module per command, exit codes and console output in :mod:`.output`.

Exit codes are part of the interface, so scripts and CI can gate on them: 0 when every SLA
holds, 1 when one is violated, 2 on bad input or usage (with one message, never a traceback).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from testbed.cli.memory import keep_freed_memory

keep_freed_memory()  # before the run allocates anything large: see testbed/cli/memory.py


@contextmanager
def _imports_uncollected() -> Iterator[None]:
    """Load the commands' modules with the cyclic collector paused, then freeze what they made.

    Their imports (pandas, numpy, networkx, pydantic, rich...) make a few hundred thousand
    objects that live as long as the process. Every 700 of them set off a collection that walks
    the young ones and frees nothing: a fifth of the import's time. Frozen, they are out of the
    collector's sight, so no later full collection walks them again either.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


with _imports_uncollected():
    import typer

    from testbed.cli import calibrate, campaign, compare, explore, hunt, live, report, run, schema, serve, validate

app = typer.Typer(
    help="Chaos and resilience testbed for LLM inference serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        try:
            print(f"testbed {version('testbed')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("testbed (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Chaos and resilience testbed for LLM inference serving."""


app.command("run")(run.run)
app.command("validate")(validate.validate)
app.command("compare")(compare.compare)
app.command("report")(report.report)
app.command("campaign")(campaign.campaign)
app.command("hunt")(hunt.hunt_command)
app.command("calibrate")(calibrate.calibrate)
app.command("live")(live.live)
app.command("serve")(serve.serve)
app.command("explore")(explore.explore)
app.command("schema")(schema.schema)
