"""Request records of a live run, in exactly the simulator's schema.

The live gateway opens a row when a request arrives and closes it when the gateway policy
finishes it; :meth:`LiveRecorder.frame` turns the rows into the same DataFrame
:data:`~testbed.observe.records.REQUEST_COLUMNS` describes, so verdicts, reports and the
sim-vs-live comparison read live and simulated runs alike. Times are seconds from the stack's
start. A row still open when the frame is taken keeps status ``pending``: a live request that
was never answered shows up as exactly that, rather than vanishing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.observe.records import REQUEST_COLUMNS, STATUSES


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
    status: str = "pending"
    replica: int = -1
    region: str = ""
    retries: int = 0
    hedged: bool = False
    failed_over: bool = False
    fallback: bool = False


class LiveRecorder:
    """Rows by request id, opened by :meth:`open` and closed by :meth:`close`."""

    def __init__(self, regions: Sequence[str] = ()) -> None:
        self.regions = list(regions)
        self.rows: list[LiveRow] = []

    def open(self, arrival: float, **fields: object) -> LiveRow:
        """A request arrived at ``arrival``: its row, with the next request id."""
        row = LiveRow(len(self.rows), arrival, **fields)  # type: ignore[arg-type]
        self.rows.append(row)
        return row

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
