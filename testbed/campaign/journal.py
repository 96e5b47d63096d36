"""The campaign journal: one JSON line per finished run, made durable before the next is counted.

Each row is appended, flushed and fsynced as its run finishes, so a campaign killed at any moment
loses at most the runs in flight. A resumed campaign reads the journal back and skips every run
whose key (cell id + seed) is there with the same scenario digest; a torn last line (the process
died mid-write) is ignored and that run is simply done again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO


class Journal:
    """Append-only JSON-lines file of run rows."""

    def __init__(self, path: str | Path, resume: bool) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.previous = read_journal(self.path) if resume else []
        if resume:
            _drop_torn_tail(self.path)
        self._file: TextIO = self.path.open("a" if resume else "w", encoding="utf-8")

    def finished(self, digests: dict[str, str], retry_errors: bool = False) -> dict[str, dict[str, Any]]:
        """Rows from earlier sessions that still hold, by key: same digest, and not errored if retrying errors."""
        done: dict[str, dict[str, Any]] = {}
        for row in self.previous:
            if digests.get(row.get("cell", "")) != row.get("digest"):
                continue  # the cell changed (or left the matrix) since: its old rows no longer apply
            if retry_errors and row.get("status") == "errored":
                done.pop(row["key"], None)
                continue
            done[row["key"]] = row
        return done

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every complete row of a journal, in order; a missing file is an empty journal."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # torn final write
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
    return rows


def _drop_torn_tail(path: Path) -> None:
    """Cut a final line that has no newline, so appending does not glue a new row onto it."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
