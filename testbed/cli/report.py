"""``testbed report DIR``: rebuild report.md and report.html from the records a run left in DIR.

Reports read only records, so a report can be rebuilt after changing the report code, or for a
run copied from CI, without simulating again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from testbed.cli.output import EXIT_PASS, console, fail
from testbed.report.html import write_html_report
from testbed.report.markdown import markdown_report
from testbed.report.read import read_run
from testbed.spec import SpecError


def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by testbed run or testbed live, e.g. out/baseline")],
) -> None:
    """Rebuild report.md and report.html from the records in a run directory (no simulation)."""
    try:
        result = read_run(run_dir)
    except SpecError as exc:
        raise fail(str(exc)) from None
    (run_dir / "report.md").write_text(markdown_report(result), encoding="utf-8")
    written = ["report.md"]
    if write_html_report(result, run_dir / "report.html"):
        written.append("report.html")
    console.print(f"{' and '.join(written)} rebuilt in [bold]{run_dir}[/] from its records", highlight=False)
    raise typer.Exit(EXIT_PASS)
