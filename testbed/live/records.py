"""Request records of a live run, in exactly the simulator's schema.

The live gateway opens a row when a request arrives and closes it when the gateway policy
finishes it; :meth:`LiveRecorder.frame` turns the rows into the same DataFrame
:data:`~testbed.records.schema.REQUEST_COLUMNS` describes, so verdicts, reports and the
sim-vs-live comparison read live and simulated runs alike. Times are seconds from the stack's
start. A row still open when the frame is taken keeps status ``pending``: a live request that
was never answered shows up as exactly that, rather than vanishing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.records.schema import REQUEST_COLUMNS, STATUSES


@dataclass(slots=True)
class LiveRow:
    """One request's record while it is being served (mutable until it ends)."""

    request_id: int
    arrival: float
    request_class: str = "default"
    priority: int = 0
    client_region: str = ""
    session_id: int = -1
    turn: int = -1
    stage: str = ""
    degraded: bool = False
    first_token: float = math.nan
    finish: float = math.nan
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    status: str = "pending"
    replica: int = -1
    region: str = ""
    retries: int = 0
    hedged: bool = False
    failed_over: bool = False
    fallback: bool = False


class DuplicateRequestId(ValueError):
    """A client named its request with an id that is already recorded."""


class LiveRecorder:
    """Rows in arrival order, opened by :meth:`open` and closed by :meth:`close`.

    Request ids are unique: a client may choose its request's id (a replay does, to join records
    to its workload exactly), and requests without one get the lowest id nobody has taken.
    """

    def __init__(self, regions: Sequence[str] = ()) -> None:
        self.regions = list(regions)
        self.rows: list[LiveRow] = []
        self._taken: set[int] = set()
        self._next = 0  # every id below it is taken

    def open(self, arrival: float, request_id: int | None = None, **fields: object) -> LiveRow:
        """A request arrived at ``arrival``: its row, with ``request_id`` or the next free id."""
        if request_id is None:
            while self._next in self._taken:
                self._next += 1
            request_id = self._next
        elif request_id in self._taken:
            raise DuplicateRequestId(f"header x-request-id: request id {request_id} is already taken; ids must be unique")
        row = LiveRow(request_id, arrival, **fields)  # type: ignore[arg-type]
        self._taken.add(request_id)
        self.rows.append(row)
        return row

    def snapshot(self) -> LiveRecorder:
        """A copy whose rows no longer change: another thread may build a frame from it at leisure."""
        copy = LiveRecorder(self.regions)
        copy.rows = [dataclasses.replace(row) for row in self.rows]
        return copy

    def close(self, row: LiveRow, status: str, finish: float) -> None:
        """End ``row``; ending a request twice is a bug in the gateway, so it raises."""
        if status not in STATUSES or status == "pending":
            raise ValueError(f"unknown final status {status!r}")
        if row.status != "pending":
            raise RuntimeError(f"request {row.request_id} ended twice ({row.status}, then {status})")
        row.status = status
        row.finish = finish

    def pending(self) -> int:
        """Requests not answered yet; after a drain, each one is a lost request."""
        return sum(row.status == "pending" for row in self.rows)

    def frame(self, fault_windows: Sequence[tuple[float, float]] = ()) -> pd.DataFrame:
        """The request table (REQUEST_COLUMNS, in order); ``fault_overlap`` against ``fault_windows``.

        A request still pending is in flight until the end of time, so it overlaps every fault
        that started after it arrived.
        """
        rows = self.rows
        columns: dict[str, object] = {name: [getattr(row, name) for row in rows] for name in REQUEST_COLUMNS if name != "fault_overlap"}
        arrival = np.array(columns["arrival"], dtype=float)
        finish = np.array(columns["finish"], dtype=float)
        open_until = np.where(np.isnan(finish), np.inf, finish)
        overlap = np.zeros(len(rows), dtype=bool)
        for start, end in fault_windows:  # a live run has a handful of faults
            overlap |= (arrival < end) & (open_until > start)
        columns["fault_overlap"] = overlap
        frame = pd.DataFrame(columns)
        regions = list(dict.fromkeys(self.regions + [r for r in frame["region"].tolist() if r]))
        frame["region"] = frame["region"].where(frame["region"] != "")
        categories = {"status": list(STATUSES), "region": regions}
        for name, dtype in REQUEST_COLUMNS.items():
            if dtype == "category" and name in categories:
                frame[name] = pd.Categorical(frame[name], categories=categories[name])
            else:
                frame[name] = frame[name].astype(dtype)
        return frame
