"""Attempt and health-probe records: what the gateway saw, beyond one row per request.

Traces need each retry and hedge as its own span, and root-cause ranking needs to know which
replica an attempt failed on (a failed request's row names no replica). Logging every attempt
of a 300k-request run would cost memory for nothing, so only the attempts of requests that had
something happen to them are kept: every attempt that did not end ``ok``, and every attempt of a
request that already had one fail or was hedged (so its winning attempt is there too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

ATTEMPT_COLUMNS = ("request_id", "attempt", "replica", "start", "end", "outcome", "hedge")
HEALTH_COLUMNS = ("time", "replica", "region", "change")


class AttemptLog:
    """Appends (request, attempt, replica, start, end, outcome, hedge) for interesting attempts."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, float, float, str, bool]] = []
        self.traced: set[int] = set()  # requests whose every later attempt is logged

    def ended(self, key: int, attempt: Any, outcome: str, now: float) -> None:
        """Log an attempt that ended now (``attempt`` has rid, replica, started and hedge)."""
        rid = attempt.rid
        if outcome == "ok" and rid not in self.traced:
            return
        self.traced.add(rid)
        self.rows.append((rid, key, attempt.replica, attempt.started, now, outcome, attempt.hedge))

    def frame(self) -> pd.DataFrame:
        return attempts_frame(self.rows)


def attempts_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """The attempt rows as a table (attempts.parquet), sorted by request then start."""
    frame = pd.DataFrame(list(rows), columns=list(ATTEMPT_COLUMNS))
    frame = frame.astype(
        {"request_id": "int64", "attempt": "int64", "replica": "int32", "start": "float64", "end": "float64", "hedge": "bool"}
    )
    frame["outcome"] = frame["outcome"].astype("category")
    return frame.sort_values(["request_id", "start", "attempt"], kind="stable").reset_index(drop=True)


def health_frame(changes: Sequence[tuple[int, float, str]], regions: Sequence[str]) -> pd.DataFrame:
    """The gateway's health-check belief changes: (replica, time, 'unhealthy'/'healthy') rows."""
    if not changes:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in zip(HEALTH_COLUMNS, ("float64", "int32", "object", "object"))})
    replica = np.array([c[0] for c in changes], dtype=np.int32)
    return pd.DataFrame(
        {
            "time": np.array([c[1] for c in changes], dtype=float),
            "replica": replica,
            "region": [regions[i] for i in replica.tolist()],
            "change": [c[2] for c in changes],
        }
    )
