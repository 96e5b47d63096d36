"""Figures written into the docs by the scripts that measure them, never by hand.

Each benchmark script takes ``--markdown PATH`` (``docs/benchmarks.md``; ``docs/fidelity.md``
for the fidelity benchmark) and replaces its own block in that page, between the markers
``<!-- begin: NAME -->`` and ``<!-- end: NAME -->``, with its figures and a line saying how and
when they were measured. Prose around the blocks is written by people and says what the figures
mean; a missing block is appended at the end of the page, so a new script needs no hand edit.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- begin: {name} -->", f"<!-- end: {name} -->"


def provenance(load_before: float | None = None) -> str:
    """How the figures were made: the command, the date, the cores and the load average."""
    command = " ".join(["python", *map(shlex.quote, [os.path.relpath(sys.argv[0]) if sys.argv[0] else "?", *sys.argv[1:]])])
    load = f"{os.getloadavg()[0]:.1f}"
    if load_before is not None:
        load = f"{load_before:.1f} → {load}"
    cores = len(os.sched_getaffinity(0))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"*Measured by `{command}` on {when}: {cores} cores, load average {load}.*"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_table(page: Path, name: str, intro: str, header: list[str], rows: list[list[str]], load_before: float) -> None:
    """Block ``name`` of ``page``: a line saying what was run, the table, and how it was measured."""
    write_block(page, name, intro + "\n\n" + table(header, rows) + "\n\n" + provenance(load_before))


def print_columns(header: list[str], rows: list[list[str]]) -> None:
    """The same table for a terminal: columns padded to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def write_block(page: Path, name: str, body: str) -> None:
    """Replace block ``name`` of ``page`` with ``body`` (append it when the page lacks it)."""
    begin, end = _markers(name)
    text = page.read_text() if page.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    page.write_text(text)
    print(f"figures written to {page} (block {name})", file=sys.stderr)
