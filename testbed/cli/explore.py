"""``testbed explore``: serve the Streamlit what-if explorer on 127.0.0.1."""

from __future__ import annotations

from typing import Annotated

import typer

from testbed.cli.output import console, fail
from testbed.spec import SpecError


def explore(
    port: Annotated[int, typer.Option(help="port to serve the page on")] = 8501,
    address: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 keeps the page on this machine")] = "127.0.0.1",
) -> None:
    """Open the what-if explorer: `streamlit run app.py`, served on 127.0.0.1."""
    from testbed.explore import serve, streamlit_command

    try:
        streamlit_command(address, port)  # checks that app.py and streamlit are there
    except SpecError as exc:
        raise fail(str(exc)) from None
    console.print(f"explorer on [bold]http://{address}:{port}[/] (Ctrl-C stops it)")
    serve(address, port)
