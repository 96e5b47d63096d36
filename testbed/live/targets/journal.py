"""The journal: every action applied to a target, written and synced as it happens.

One JSON object per line. The first (``begin``) holds the whole target spec, so a journal alone
is enough to undo what its run left behind — ``testbed live --rollback JOURNAL`` reads it after a
crash, a SIGKILL or a power cut. Then ``applied`` for each action performed, with the key of
what would undo it (``undoes`` when it undid an earlier one), ``failed`` for actions that could
not be carried out, and ``end``. Each line is flushed and fsynced before the action's effect is
relied on, so what is on disk is never behind what was done to the target.

The undo keys are ``restart:<endpoint>`` (after kill), ``resume:<endpoint>`` (after pause),
``hooks:<endpoint>`` (slowdown or injected errors switched on), ``heal:<region>`` (a region cut
through the chaos proxies) and ``untoxic:<region>:<name>`` (a network toxic).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Entry:
    seq: int
    verb: str
    key: str  # what undoes it (see the module docstring)
    endpoint: str | None
    region: str | None
    params: dict[str, Any]


class Journal:
    """Appends synced lines to ``path`` and keeps the actions still in force."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run's lifetime
        self.seq = 0
        self.in_force: dict[str, Entry] = {}

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, sort_keys=True, default=str)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def applied(self, verb: str, key: str, how: str, endpoint: str | None = None, region: str | None = None,
                params: dict[str, Any] | None = None, undoes: bool = False, at: float | None = None) -> None:
        """Record an action done; an undo takes its key out of force, any other puts it in."""
        self.seq += 1
        params = dict(params or {})
        undone = self.in_force.pop(key, None) if undoes else None
        if not undoes:
            self.in_force[key] = Entry(self.seq, verb, key, endpoint, region, params)
        self.write("applied", seq=self.seq, verb=verb, key=key, how=how, endpoint=endpoint, region=region, params=params,
                   undo=undoes, undoes=undone.seq if undone is not None else None, at=at)

    def close(self) -> None:
        self._file.close()


def read(path: Path) -> tuple[dict[str, Any], list[Entry], list[dict[str, Any]]]:
    """The ``begin`` line, the entries still in force at the end of the file, and every line.

    Raises ValueError naming the line when the file is not a journal.
    """
    lines: list[dict[str, Any]] = []
    texts = Path(path).read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(texts, 1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            # A crash can cut the last line short; anything before it was synced whole.
            if number == len(texts):
                break
            raise ValueError(f"{path}: line {number} is not JSON") from None
    begins = [line for line in lines if line.get("event") == "begin"]
    if not begins or "target" not in begins[0]:
        raise ValueError(f"{path}: not a testbed target journal (no 'begin' line with the target)")
    in_force: dict[str, Entry] = {}
    for line in lines:
        if line.get("event") != "applied":
            continue
        key = line["key"]
        if line.get("undo"):
            in_force.pop(key, None)
        else:
            in_force[key] = Entry(line["seq"], line["verb"], key, line.get("endpoint"), line.get("region"), line.get("params") or {})
    return begins[-1], sorted(in_force.values(), key=lambda e: e.seq), lines
