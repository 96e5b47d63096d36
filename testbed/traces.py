'''Request traces: today's CSV and three production formats, read with pandas into columns.

Readers return a :class:`Trace` (times in seconds from the trace's first request, lengths, and
any labels or prefix chains the format carries); :func:`replay` applies a scenario's
``copies``/``shift`` overlay and ``time_scale`` and cuts at the run's duration. Any problem
raises :class:`~testbed.spec.SpecError` naming the file, the line and the column (or JSON
field), and what was expected, so the CLI prints it and exits 2.

Formats (see docs/caching.md for the vendored files and their attribution):

* ``csv`` — this project's: ``arrival_s,prompt_tokens,output_tokens[,class,client_region]``.
* ``azure`` — the Azure LLM inference traces (2023 and 2024): ``TIMESTAMP,ContextTokens,
  GeneratedTokens``, wall-clock timestamps replayed relative to the first row.
* ``mooncake`` — Mooncake's FAST'25 traces, JSON lines (optionally gzipped): ``timestamp`` (ms
  from the start), ``input_length``, ``output_length``, ``hash_ids`` (one id per 512-token
  block; equal leading ids are a reusable prefix).
* ``burstgpt`` — BurstGPT: ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log
  Type``. A row with 0 response tokens is a request that failed in the original service: it is
  dropped (there is nothing to generate), and ``Trace.dropped`` counts them. ``Model`` becomes
  the request class when the workload has a class of that name.
'''

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.prefixes import PrefixColumns
from testbed.spec import SpecError, TraceArrivals

MOONCAKE_BLOCK_TOKENS = 512
TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
OPTIONAL_TRACE_COLUMNS = ("class", "client_region")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type")
MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_INT32_MAX = int(np.iinfo(np.int32).max)


@dataclass(eq=False)
class Trace:
    """The columns a request source fixes; -1 in a label column means "draw it by share"."""

    time: np.ndarray  # float64, sorted
    prompt_tokens: np.ndarray  # int32
    output_tokens: np.ndarray  # int32
    request_class: np.ndarray  # int16 index into the class names, or -1
    client_region: np.ndarray  # int16 index into the region names, or -1
    prefix: PrefixColumns | None = None  # block chains, when the format records them
    dropped: int = 0  # rows the reader left out by its format's rule (BurstGPT's failed requests)

    def take(self, rows: slice | np.ndarray) -> Trace:
        """The requests at ``rows``: an ordering, or a prefix cut at the run's duration."""
        columns = {f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name not in ("prefix", "dropped")}
        prefix = self.prefix.take(rows) if self.prefix is not None else None
        return Trace(**columns, prefix=prefix, dropped=self.dropped)


def read(spec: TraceArrivals, path: Path, class_names: list[str], region_names: list[str], labels: bool = True) -> Trace:
    """The trace at ``path`` in ``spec.format``, sorted by time (``labels=False``: CSV labels unchecked)."""
    if spec.format == "csv":
        return read_trace(path, class_names, region_names, labels)
    if spec.format == "azure":
        return read_azure(path)
    if spec.format == "mooncake":
        return read_mooncake(path)
    return read_burstgpt(path, class_names)


def replay(
    spec: TraceArrivals,
    duration: float,
    path: Path,
    class_names: list[str],
    region_names: list[str],
    labels: bool = True,
) -> Trace:
    """The trace overlaid ``copies`` times, scaled in time and cut at the duration."""
    trace = overlay(read(spec, path, class_names, region_names, labels), spec.copies, spec.shift)
    trace = replace(trace, time=trace.time * spec.time_scale)
    return trace.take(slice(0, int(np.searchsorted(trace.time, duration))))


def overlay(trace: Trace, copies: int, shift: float) -> Trace:
    """``copies`` copies of the trace, copy k moved k x ``shift`` later, wrapped around its span.

    The span is the trace's last arrival (plus its mean gap, so a wrapped request does not land
    on the first one). Copy k's prefix ids are moved past copy k-1's: other users of the same
    service share no prefix with the recorded ones.
    """
    if copies == 1:
        return trace
    n = len(trace.time)
    span = float(trace.time[-1] + (trace.time[-1] / max(n - 1, 1))) if n else 0.0
    parts = []
    stride = (trace.prefix.max_id() + 1) if trace.prefix is not None else 0
    for k in range(copies):
        moved = np.mod(trace.time + k * shift, span) if span > 0 else trace.time.copy()
        prefix = trace.prefix.shifted(k * stride) if trace.prefix is not None else None
        parts.append(replace(trace, time=moved, prefix=prefix))
    merged = Trace(
        *(np.concatenate([getattr(p, name) for p in parts]) for name in ("time", "prompt_tokens", "output_tokens", "request_class", "client_region")),
        prefix=PrefixColumns.concat([p.prefix for p in parts]) if trace.prefix is not None else None,  # type: ignore[misc]
        dropped=trace.dropped * copies,
    )
    return merged.take(np.argsort(merged.time, kind="stable"))


# --------------------------------------------------------------------------- cells


def _bad_cell(frame: pd.DataFrame, column: str, bad: np.ndarray, path: Path, expected: str, what: str = "column") -> SpecError:
    """One message for the first bad cell of a column, counting the rest."""
    first = int(np.flatnonzero(bad)[0])
    line = int(frame.index[first]) + 2  # 1-based, after the header line
    if what == "field":
        line -= 1  # JSON lines have no header
    more = int(np.count_nonzero(bad)) - 1
    tail = f" ({more} more bad row{'s' if more > 1 else ''})" if more else ""
    value = frame[column].iloc[first]
    return SpecError(f"{path}: line {line}, {what} {column!r}: expected {expected}, got {value!r}{tail}")


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The column as float64, NaN where a cell is not a number."""
    cells = frame[column]
    if cells.dtype == object:
        cells = pd.to_numeric(cells.astype(str).str.strip(), errors="coerce")
    return pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _seconds_column(
    frame: pd.DataFrame, column: str, path: Path, scale: float = 1.0, what: str = "column", unit: str = "seconds"
) -> np.ndarray:
    values = _numbers(frame, column)
    bad = ~(np.isfinite(values) & (values >= 0))
    if bad.any():
        raise _bad_cell(frame, column, bad, path, f"a number of {unit} >= 0", what)
    return values * scale


def _token_column(frame: pd.DataFrame, column: str, path: Path, what: str = "column", low: int = 1) -> np.ndarray:
    values = _numbers(frame, column)
    bad = ~((values >= low) & (values <= _INT32_MAX) & (values == np.floor(values)))
    if bad.any():
        raise _bad_cell(frame, column, bad, path, f"an integer between {low} and {_INT32_MAX}", what)
    return values.astype(np.int32)


def _label_column(frame: pd.DataFrame, column: str, what: str, names: list[str], path: Path) -> np.ndarray:
    """Indices into ``names``; -1 where the cell is blank or the column is absent."""
    if column not in frame.columns:
        return np.full(len(frame), -1, dtype=np.int16)
    cells = frame[column].str.strip()
    codes = cells.map({name: i for i, name in enumerate(names)}).to_numpy(dtype=np.float64, na_value=np.nan)
    blank = (cells == "").to_numpy()
    bad = np.isnan(codes) & ~blank
    if bad.any():
        raise _bad_cell(frame, column, bad, path, f"{what}, one of {names} (or blank to draw by share)")
    return np.where(blank, -1, codes).astype(np.int16)


def _unlabelled(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int16)


def _sorted(trace: Trace) -> Trace:
    return trace.take(np.argsort(trace.time, kind="stable"))


def _read_csv(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """The file as text cells, blank lines dropped, the index still counting file lines."""
    expected = f"a header line naming {', '.join(required)}" + (f" (optional: {', '.join(optional)})" if optional else "")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    except pd.errors.EmptyDataError:
        raise SpecError(f"{path}: trace is empty; expected {expected}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not a valid CSV trace: {exc}") from None
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas silently takes a first column without a header name as the row index.
        raise SpecError(f"{path}: not a valid CSV trace: line 2 has more fields than the header line")
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in frame.columns:
        if column not in required + optional:
            raise SpecError(f"{path}: unknown column {column!r}; expected {expected}")
    for column in required:
        if column not in frame.columns:
            raise SpecError(f"{path}: missing column {column!r}; expected {expected}")
    blank = (frame.apply(lambda c: c.str.strip()) == "").all(axis=1)
    return frame[~blank]


# --------------------------------------------------------------------------- formats


def read_trace(path: Path | str, class_names: list[str], region_names: list[str], labels: bool = True) -> Trace:
    """Read a request trace from this project's CSV format, with a header line.

    Columns:

    - ``arrival_s`` (required): arrival time in seconds from the start of the run, a number >= 0.
      Rows need not be sorted. The scenario's ``time_scale`` multiplies these times, and rows
      that land at or after the run's duration are dropped.
    - ``prompt_tokens`` (required): prompt length in tokens, an integer >= 1.
    - ``output_tokens`` (required): tokens to generate, an integer >= 1.
    - ``class`` (optional): the request's SLA class, one of the workload's ``classes`` names.
    - ``client_region`` (optional): the region the client is near, a ``provider/region`` path
      (one of ``workload.client_regions``, or of the topology's primary regions if that is empty).

    A blank ``class`` or ``client_region`` cell, or a missing column, means the value is drawn
    from the workload's shares, as for generated workloads. Other columns are errors (nearly
    always typos). Blank lines are skipped. ``labels=False`` leaves the label columns unread
    (to count arrivals before the scenario's names are known).
    """
    path = Path(path)
    frame = _read_csv(path, TRACE_COLUMNS, OPTIONAL_TRACE_COLUMNS)
    if not labels:
        frame = frame.drop(columns=[c for c in OPTIONAL_TRACE_COLUMNS if c in frame.columns])
    return _sorted(
        Trace(
            time=_seconds_column(frame, "arrival_s", path),
            prompt_tokens=_token_column(frame, "prompt_tokens", path),
            output_tokens=_token_column(frame, "output_tokens", path),
            request_class=_label_column(frame, "class", "a class name", class_names, path),
            client_region=_label_column(frame, "client_region", "a region path", region_names, path),
        )
    )


def read_azure(path: Path | str) -> Trace:
    """The Azure LLM inference trace (2023 and 2024 schema), relative to its first request."""
    path = Path(path)
    frame = _read_csv(path, AZURE_COLUMNS)
    stamps = pd.to_datetime(frame["TIMESTAMP"].str.strip(), format="ISO8601", errors="coerce", utc=True)
    bad = stamps.isna().to_numpy()
    if bad.any():
        raise _bad_cell(frame, "TIMESTAMP", bad, path, "a timestamp like 2023-11-16 18:15:46.6805900")
    time = (stamps - stamps.min()).dt.total_seconds().to_numpy() if len(stamps) else np.empty(0)
    n = len(frame)
    return _sorted(
        Trace(
            time=time.astype(np.float64),
            prompt_tokens=_token_column(frame, "ContextTokens", path),
            output_tokens=_token_column(frame, "GeneratedTokens", path),
            request_class=_unlabelled(n),
            client_region=_unlabelled(n),
        )
    )


def read_burstgpt(path: Path | str, class_names: list[str]) -> Trace:
    """BurstGPT: seconds from the start; failed requests (0 response tokens) dropped."""
    path = Path(path)
    frame = _read_csv(path, BURSTGPT_COLUMNS)
    time = _seconds_column(frame, "Timestamp", path)
    prompt = _token_column(frame, "Request tokens", path, low=0)
    output = _token_column(frame, "Response tokens", path, low=0)
    _token_column(frame, "Total tokens", path, low=0)
    empty_prompt = prompt < 1
    if empty_prompt.any():
        raise _bad_cell(frame, "Request tokens", empty_prompt, path, f"an integer between 1 and {_INT32_MAX}")
    served = output > 0
    models = frame["Model"].str.strip()
    codes = models.map({name: i for i, name in enumerate(class_names)}).to_numpy(dtype=np.float64, na_value=np.nan)
    request_class = np.where(np.isnan(codes), -1, codes).astype(np.int16)
    trace = Trace(
        time=time - (time.min() if len(time) else 0.0),
        prompt_tokens=prompt,
        output_tokens=output,
        request_class=request_class,
        client_region=_unlabelled(len(frame)),
    ).take(served)
    return replace(_sorted(trace), dropped=int(np.count_nonzero(~served)))


def read_mooncake(path: Path | str) -> Trace:
    """Mooncake JSON lines (``.jsonl`` or ``.jsonl.gz``): lengths and 512-token ``hash_ids`` chains."""
    path = Path(path)
    try:
        frame = pd.read_json(path, lines=True, dtype=False, compression="infer")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    except ValueError:
        raise _json_error(path) from None
    if frame.empty:
        raise SpecError(f"{path}: trace is empty; expected JSON lines with {', '.join(MOONCAKE_FIELDS)}")
    for name in frame.columns:
        if name not in MOONCAKE_FIELDS:
            raise SpecError(f"{path}: line 1: unknown field {name!r}; expected {', '.join(MOONCAKE_FIELDS)}")
    for name in MOONCAKE_FIELDS:
        if name not in frame.columns:
            raise SpecError(f"{path}: missing field {name!r}; expected JSON lines with {', '.join(MOONCAKE_FIELDS)}")
        missing = frame[name].isna().to_numpy()
        if missing.any():
            raise _bad_cell(frame, name, missing, path, "a value on every line", "field")
    time = _seconds_column(frame, "timestamp", path, scale=1e-3, what="field", unit="milliseconds")
    prompt = _token_column(frame, "input_length", path, "field")
    output = _token_column(frame, "output_length", path, "field")
    hash_ids = frame["hash_ids"]
    good_list = hash_ids.map(lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v))
    bad = ~good_list.to_numpy(dtype=bool)
    if bad.any():
        raise _bad_cell(frame, "hash_ids", bad, path, "a list of integer block ids >= 0", "field")
    lengths = hash_ids.map(len).to_numpy(dtype=np.int64)
    ids = np.fromiter((x for v in hash_ids for x in v), dtype=np.int64, count=int(lengths.sum()))
    n = len(frame)
    prefix = PrefixColumns.from_id_lists(ids, lengths, MOONCAKE_BLOCK_TOKENS)
    return _sorted(Trace(time, prompt, output, _unlabelled(n), _unlabelled(n), prefix=prefix))


def _json_error(path: Path) -> SpecError:
    """Find the first line that is not a JSON object, for a message pandas does not give."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as lines:  # type: ignore[operator]
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                return SpecError(f"{path}: line {number}, column {exc.colno}: not valid JSON: {exc.msg}")
            if not isinstance(value, dict):
                return SpecError(f"{path}: line {number}: expected a JSON object with {', '.join(MOONCAKE_FIELDS)}")
    return SpecError(f"{path}: not a valid JSON lines trace")
