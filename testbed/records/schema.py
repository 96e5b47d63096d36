"""The request record: one row per request that entered, identical for simulation and live runs.

Records are kept in preallocated typed columns while a run is going (a million requests must fit
in well under a GiB and cost no per-request Python objects), and become a pandas DataFrame at
the end. Everything downstream — verdicts, reports, the explorer — reads only these frames.
"""

from __future__ import annotations

import math
from array import array

import numpy as np
import pandas as pd

from testbed.policy.outcomes import Status

# A request's final status is a testbed.policy.outcomes.Status; "pending" only while it runs.
STATUSES = ("pending", *(status.value for status in Status))
PENDING, OK, FAILED, TIMEOUT, SHED, CLIENT_ERROR = range(len(STATUSES))

# Column -> dtype of the request table. Times are seconds from the start of the run; NaN where
# an event did not happen (no first token for a failed request). replica is -1 when none served.
# hedged: a duplicate attempt was sent; failed_over: served outside the region of its first
# attempt; fallback: served by the fallback tier (e.g. CPU int8: quality may be lower);
# fault_overlap: the request was in flight while some fault was active. Agent calls carry their
# session_id, turn (within the session) and stage; single requests have -1, -1 and "".
# degraded: an agent loop sent this call to its stage's downgrade pool to save the turn's budget.
# cached_tokens: prompt tokens the serving replica found in its prefix cache (0 with caching off).
REQUEST_COLUMNS: dict[str, str] = {
    "request_id": "int64",
    "session_id": "int64",
    "turn": "int32",
    "stage": "category",
    "request_class": "category",
    "priority": "int16",
    "client_region": "category",
    "arrival": "float64",
    "first_token": "float64",
    "finish": "float64",
    "prompt_tokens": "int32",
    "output_tokens": "int32",
    "cached_tokens": "int32",
    "status": "category",
    "replica": "int32",
    "region": "category",
    "retries": "int16",
    "hedged": "bool",
    "failed_over": "bool",
    "fallback": "bool",
    "degraded": "bool",
    "fault_overlap": "bool",
}


class RequestLog:
    """Columnar, append-by-index store of request outcomes for requests 0..n-1.

    A driver reads and writes a few cells per request as it goes, and one cell of an
    ``array.array`` costs a fraction of one of a numpy array from Python (no numpy scalar is
    made), so the columns are typed arrays — 8 bytes a float as in numpy — and :meth:`numpy`
    views one as a numpy array, without a copy, for the vector work at the end of a run.
    """

    DTYPES = {"first_token": "float64", "finish": "float64", "status": "int8", "replica": "int32",
              "retries": "int16", "cached_tokens": "int32"}

    def __init__(self, n: int) -> None:
        self.first_token = array("d", [math.nan]) * n
        self.finish = array("d", [math.nan]) * n
        self.status = array("b", [PENDING]) * n
        self.replica = array("i", [-1]) * n
        self.retries = array("h", [0]) * n
        self.cached_tokens = array("i", [0]) * n

    def numpy(self, column: str) -> np.ndarray:
        """``column`` as a numpy array sharing its memory."""
        return np.frombuffer(getattr(self, column), dtype=self.DTYPES[column])

    def pending(self) -> int:
        """How many requests have not ended: must be 0 when a run finishes (conservation)."""
        return int(np.count_nonzero(self.numpy("status") == PENDING))

    def end(self, rid: int, status: int, now: float) -> None:
        """Close request ``rid``; ending one twice is a bug in the driver, so it raises."""
        if self.status[rid] != PENDING:
            raise RuntimeError(f"request {rid} ended twice ({STATUSES[self.status[rid]]}, then {STATUSES[status]})")
        self.status[rid] = status
        self.finish[rid] = now


def empty_requests() -> pd.DataFrame:
    """A request table with the right columns and no rows."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in REQUEST_COLUMNS.items()})


def status_names(codes: np.ndarray) -> pd.Categorical:
    return pd.Categorical.from_codes(codes.astype(np.int8), categories=list(STATUSES))


def string_values(column: pd.Series) -> np.ndarray:
    """A column's values as an object array of ``str``, as ``column.astype(str)`` gives them (a
    missing value stays NaN).

    The record's text columns are categoricals; converting them row by row costs about a tenth
    of a second per 300k-row column with pandas' arrow-backed strings, and a report converts
    several. A categorical is converted once per category instead.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = np.array([str(c) for c in column.cat.categories] + [np.nan], dtype=object)
        return names[column.cat.codes.to_numpy()]  # code -1 (missing) picks the NaN at the end
    return column.astype(str).to_numpy(dtype=object)


def string_labels(column: pd.Series) -> pd.Series:
    """:func:`string_values` as a categorical Series on ``column``'s index, for grouping by text.

    Grouping by it (``observed=True``) gives the groups, in the order, that grouping by
    ``column.astype(str)`` gives, without making a string per row.
    """
    if not isinstance(column.dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical(string_values(column)), index=column.index, name=column.name)
    names = np.array([str(c) for c in column.cat.categories], dtype=object)
    codes = column.cat.codes.to_numpy().astype(np.int64)
    used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(names)))
    labels, inverse = np.unique(names[used].astype(str), return_inverse=True)  # sorted, as groupby sorts strings
    remap = np.full(len(names) + 1, -1, dtype=np.int64)  # the extra slot: code -1, missing, stays missing
    remap[used] = inverse
    return pd.Series(pd.Categorical.from_codes(remap[codes], categories=labels.astype(object)), index=column.index, name=column.name)


def latency_columns(requests: pd.DataFrame) -> pd.DataFrame:
    """TTFT, TPOT and end-to-end latency per request (NaN where undefined).

    TPOT is the time per output token after the first, as vLLM and DistServe define it; it is
    undefined for requests with a single output token.
    """
    # In numpy, not as Series: a run's reports and detectors ask for these a dozen times, and
    # pandas' index alignment and block building cost more than the arithmetic.
    arrival, first_token, finish, output_tokens = (
        requests[c].to_numpy(dtype=float) for c in ("arrival", "first_token", "finish", "output_tokens")
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(output_tokens > 1, (finish - first_token) / (output_tokens - 1), np.nan)
    return pd.DataFrame({"ttft": first_token - arrival, "tpot": tpot, "e2e": finish - arrival}, index=requests.index, copy=False)


def turn_table(requests: pd.DataFrame) -> pd.DataFrame:
    """One row per agent turn: session_id, turn, start, end, latency, calls and ok (all calls ok)."""
    calls = requests[requests["session_id"] >= 0] if "session_id" in requests else requests.iloc[:0]
    if calls.empty:
        return pd.DataFrame(columns=["session_id", "turn", "start", "end", "latency", "calls", "ok"])
    grouped = calls.assign(call_ok=calls["status"] == "ok").groupby(["session_id", "turn"], sort=True, observed=True)
    turns = grouped.agg(
        start=("arrival", "min"), end=("finish", "max"), calls=("arrival", "size"), ok=("call_ok", "all")
    ).reset_index()
    turns["latency"] = turns["end"] - turns["start"]
    return turns[["session_id", "turn", "start", "end", "latency", "calls", "ok"]]
