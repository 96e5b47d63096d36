"""Workloads: when requests arrive, how long they are, their SLA class and their client region.

:func:`generate` turns a :class:`~testbed.spec.WorkloadSpec` into :class:`Arrivals`, one numpy
column per attribute and one entry per request, so a million requests cost a few arrays rather
than a million Python objects. Every attribute is drawn from its own named random stream
(``workload.arrivals``, ``workload.prompt_tokens``, ``workload.output_tokens``, ``workload.class``,
``workload.client_region``): changing the length distribution does not move a single arrival,
which keeps A/B comparisons on common random numbers honest.

Arrival times are built from fixed-size blocks of gaps, so a longer duration extends the
arrivals of a shorter run instead of reshuffling them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.agents import SESSIONS, AgentPlan, plan_sessions
from testbed.lengths import categorical, sample_lengths
from testbed.rng import RandomStreams
from testbed.spec import (
    ArrivalSpec,
    DiurnalArrivals,
    GammaArrivals,
    PoissonArrivals,
    SpecError,
    StepArrivals,
    TraceArrivals,
    WorkloadSpec,
)

# Gaps are drawn this many at a time; fixed (not sized to the duration) so that the draws, and
# hence the arrivals, of a short run are a prefix of those of a longer one.
_BLOCK = 1 << 16
_INT32_MAX = int(np.iinfo(np.int32).max)

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
OPTIONAL_TRACE_COLUMNS = ("class", "client_region")


@dataclass(eq=False)
class Arrivals:
    """Columnar: one entry per request, sorted by time."""

    time: np.ndarray  # float64 seconds in [0, duration)
    prompt_tokens: np.ndarray  # int32 >= 1
    output_tokens: np.ndarray  # int32 >= 1
    request_class: np.ndarray  # int16 index into class_names
    priority: np.ndarray  # int16 (the class's priority)
    client_region: np.ndarray  # int16 index into region_names
    class_names: list[str]
    region_names: list[str]
    agents: AgentPlan | None = None  # sessions started by a share of the arrivals (then not in the columns above)

    def __len__(self) -> int:
        return len(self.time)


@dataclass(eq=False)
class Trace:
    """The columns a request source fixes; -1 in a label column means "draw it by share"."""

    time: np.ndarray  # float64, sorted
    prompt_tokens: np.ndarray  # int32
    output_tokens: np.ndarray  # int32
    request_class: np.ndarray  # int16 index into the class names, or -1
    client_region: np.ndarray  # int16 index into the region names, or -1

    def take(self, rows: slice | np.ndarray) -> Trace:
        """The requests at ``rows``: an ordering, or a prefix cut at the run's duration."""
        return Trace(*(getattr(self, column.name)[rows] for column in fields(self)))


# --------------------------------------------------------------------------- generate


def generate(
    spec: WorkloadSpec,
    duration: float,
    regions: list[str],
    streams: RandomStreams,
    base_dir: Path | str = ".",
) -> Arrivals:
    """All requests arriving in [0, duration), with lengths, classes and client regions.

    ``regions`` are the topology's primary regions, over which clients are spread evenly unless
    ``spec.client_regions`` gives shares. A trace's path is relative to ``base_dir``.
    """
    _require_positive(duration)
    class_names = [c.name for c in spec.classes]
    region_names, region_shares = _client_regions(spec, regions)
    if isinstance(spec.arrival, TraceArrivals):
        source = _replay(spec.arrival, duration, Path(base_dir), class_names, region_names)
    else:
        source = _synthesise(spec, duration, streams)
    n = len(source.time)
    drawn_class = categorical(streams.numpy("workload.class"), [c.share for c in spec.classes], n)
    drawn_region = categorical(streams.numpy("workload.client_region"), region_shares, n)
    request_class = np.where(source.request_class >= 0, source.request_class, drawn_class).astype(np.int16)
    priorities = np.array([c.priority for c in spec.classes], dtype=np.int16)
    arrivals = Arrivals(
        time=source.time,
        prompt_tokens=source.prompt_tokens,
        output_tokens=source.output_tokens,
        request_class=request_class,
        priority=priorities[request_class],
        client_region=np.where(source.client_region >= 0, source.client_region, drawn_region).astype(np.int16),
        class_names=class_names,
        region_names=region_names,
    )
    return _split_sessions(spec, arrivals, streams) if spec.agents is not None else arrivals


def _split_sessions(spec: WorkloadSpec, arrivals: Arrivals, streams: RandomStreams) -> Arrivals:
    """A share of the arrivals start agent sessions instead of being single calls."""
    assert spec.agents is not None
    starts = streams.numpy(SESSIONS).random(len(arrivals)) < spec.agents.share
    single = ~starts
    plan = plan_sessions(
        spec.agents,
        arrivals.time[starts],
        arrivals.priority[starts],
        arrivals.request_class[starts],
        arrivals.client_region[starts],
        streams,
    )
    columns = ("time", "prompt_tokens", "output_tokens", "request_class", "priority", "client_region")
    return replace(arrivals, **{name: getattr(arrivals, name)[single] for name in columns}, agents=plan)


def mean_rate(spec: ArrivalSpec, duration: float, base_dir: Path | str = ".") -> float:
    """Expected arrivals per second over [0, duration) (for a trace: the rows it replays)."""
    _require_positive(duration)
    match spec:
        case PoissonArrivals() | GammaArrivals():
            return spec.rate
        case DiurnalArrivals():
            return _diurnal_cumulative(spec, duration) / duration
        case StepArrivals():
            bounds, rates = _step_segments(spec, duration)
            return float(np.dot(rates, np.diff(bounds))) / duration
        case TraceArrivals():
            path = Path(base_dir) / spec.path
            times = _arrival_column(_read_csv(path), path) * spec.time_scale
            return int(np.count_nonzero(times < duration)) / duration
    raise TypeError(f"not an arrival spec: {spec!r}")


def _require_positive(duration: float) -> None:
    if not duration > 0:
        raise ValueError(f"duration must be positive, got {duration!r}")


def _client_regions(spec: WorkloadSpec, regions: list[str]) -> tuple[list[str], list[float]]:
    """Region names and their shares: the spec's, or the primary regions evenly."""
    if spec.client_regions:
        return list(spec.client_regions), list(spec.client_regions.values())
    if not regions:
        raise SpecError(
            "workload: the topology has no primary region to place clients in; give workload.client_regions"
        )
    return list(regions), [1.0] * len(regions)


def _synthesise(spec: WorkloadSpec, duration: float, streams: RandomStreams) -> Trace:
    """Generated arrivals and lengths; classes and regions are left to be drawn by share."""
    time = arrival_times(spec.arrival, duration, streams.numpy("workload.arrivals"))
    n = len(time)
    unset = np.full(n, -1, dtype=np.int16)
    return Trace(
        time=time,
        prompt_tokens=sample_lengths(spec.prompt_tokens, n, streams.numpy("workload.prompt_tokens")),
        output_tokens=sample_lengths(spec.output_tokens, n, streams.numpy("workload.output_tokens")),
        request_class=unset,
        client_region=unset,
    )


# --------------------------------------------------------------------------- arrival processes


def arrival_times(spec: ArrivalSpec, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted float64 arrival times in [0, duration) for a generated (non-trace) arrival spec."""
    match spec:
        case PoissonArrivals(rate=rate):
            return _renewal(lambda n: rng.standard_exponential(n) / rate, duration) if rate > 0 else _none()
        case GammaArrivals(rate=rate, cv=cv):
            # Gamma with mean 1/rate and CV cv: shape 1/cv^2, scale cv^2/rate.
            return _renewal(lambda n: rng.gamma(1 / cv**2, cv**2 / rate, n), duration) if rate > 0 else _none()
        case DiurnalArrivals():
            return _diurnal(spec, duration, rng)
        case StepArrivals():
            return _step(spec, duration, rng)
    raise TypeError(f"{type(spec).__name__} has no generated arrival times (a trace is replayed, not drawn)")


def _none() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


def _renewal(gaps: Callable[[int], np.ndarray], horizon: float) -> np.ndarray:
    """Running sums of ``gaps`` below ``horizon``, drawn in fixed-size blocks (prefix-stable)."""
    blocks = []
    last = 0.0
    while last < horizon:
        block = last + np.cumsum(gaps(_BLOCK))
        blocks.append(block)
        last = float(block[-1])
    times = np.concatenate(blocks)
    return times[: np.searchsorted(times, horizon)]


def _diurnal(spec: DiurnalArrivals, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Non-homogeneous Poisson by thinning: candidates at the peak rate, kept with p = rate(t)/peak.

    Acceptance uniforms come from a child of the arrival stream, one per candidate, so thinning
    stays prefix-stable: candidate i always meets uniform i whatever the duration.
    """
    peak = spec.rate * (1 + spec.amplitude)
    if peak <= 0:
        return _none()
    accept = rng.spawn(1)[0]
    candidates = _renewal(lambda n: rng.standard_exponential(n) / peak, duration)
    relative = 1 + spec.amplitude * np.sin(2 * np.pi * (candidates - spec.phase) / spec.period)
    return candidates[accept.random(len(candidates)) * (1 + spec.amplitude) < relative]


def _diurnal_cumulative(spec: DiurnalArrivals, t: float) -> float:
    """Expected arrivals in [0, t): the integral of the sinusoidal rate."""
    omega = 2 * np.pi / spec.period
    swing = spec.amplitude / omega * (np.cos(omega * -spec.phase) - np.cos(omega * (t - spec.phase)))
    return float(spec.rate * (t + swing))


def _step_segments(spec: StepArrivals, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Segment bounds (0 .. duration) and the rate in each; of steps at the same time the last wins."""
    steps = sorted(spec.steps, key=lambda s: s.at)
    bounds = np.array([0.0, *(min(s.at, duration) for s in steps), duration])
    rates = np.array([spec.rate, *(s.rate for s in steps)])
    return bounds, rates


def _step(spec: StepArrivals, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Piecewise-constant Poisson by time change: unit-rate epochs mapped through the inverse
    cumulative rate. A segment with rate 0 has a flat cumulative rate, so no epoch maps into it."""
    bounds, rates = _step_segments(spec, duration)
    cumulative = np.concatenate([[0.0], np.cumsum(rates * np.diff(bounds))])
    if cumulative[-1] <= 0:
        return _none()
    epochs = _renewal(rng.standard_exponential, float(cumulative[-1]))
    segment = np.searchsorted(cumulative, epochs, side="right") - 1
    times = bounds[segment] + (epochs - cumulative[segment]) / rates[segment]
    # Clamp rounding at segment edges so times stay sorted and inside their segment.
    times = np.clip(times, bounds[segment], bounds[segment + 1])
    return times[times < duration]


# --------------------------------------------------------------------------- trace replay


def _replay(
    spec: TraceArrivals, duration: float, base_dir: Path, class_names: list[str], region_names: list[str]
) -> Trace:
    """The trace's rows scaled in time and cut at the duration."""
    trace = read_trace(base_dir / spec.path, class_names, region_names)
    trace = replace(trace, time=trace.time * spec.time_scale)
    return trace.take(slice(0, int(np.searchsorted(trace.time, duration))))


def read_trace(path: Path | str, class_names: list[str], region_names: list[str]) -> Trace:
    """Read a request trace from a CSV file with a header line.

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
    always typos). Blank lines are skipped. Any problem raises :class:`SpecError` naming the
    file, the line and column, and what was expected.
    """
    path = Path(path)
    frame = _read_csv(path)
    trace = Trace(
        time=_arrival_column(frame, path),
        prompt_tokens=_token_column(frame, "prompt_tokens", path),
        output_tokens=_token_column(frame, "output_tokens", path),
        request_class=_label_column(frame, "class", "a class name", class_names, path),
        client_region=_label_column(frame, "client_region", "a region path", region_names, path),
    )
    return trace.take(np.argsort(trace.time, kind="stable"))


def _read_csv(path: Path) -> pd.DataFrame:
    """The trace as text cells, blank lines dropped, the index still counting file lines."""
    expected = f"a header line naming {', '.join(TRACE_COLUMNS)} (optional: {', '.join(OPTIONAL_TRACE_COLUMNS)})"
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
        if column not in TRACE_COLUMNS + OPTIONAL_TRACE_COLUMNS:
            raise SpecError(f"{path}: unknown column {column!r}; expected {expected}")
    for column in TRACE_COLUMNS:
        if column not in frame.columns:
            raise SpecError(f"{path}: missing column {column!r}; expected {expected}")
    blank = (frame.apply(lambda c: c.str.strip()) == "").all(axis=1)
    return frame[~blank]


def _bad_cell(frame: pd.DataFrame, column: str, bad: np.ndarray, path: Path, expected: str) -> SpecError:
    """One message for the first bad cell of a column, counting the rest."""
    first = int(np.flatnonzero(bad)[0])
    line = int(frame.index[first]) + 2  # 1-based, after the header line
    more = int(np.count_nonzero(bad)) - 1
    tail = f" ({more} more bad row{'s' if more > 1 else ''})" if more else ""
    value = frame[column].iloc[first]
    return SpecError(f"{path}: line {line}, column {column!r}: expected {expected}, got {value!r}{tail}")


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The column as float64, NaN where a cell is not a number."""
    return pd.to_numeric(frame[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _arrival_column(frame: pd.DataFrame, path: Path) -> np.ndarray:
    values = _numbers(frame, "arrival_s")
    bad = ~(np.isfinite(values) & (values >= 0))
    if bad.any():
        raise _bad_cell(frame, "arrival_s", bad, path, "a number of seconds >= 0")
    return values


def _token_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = _numbers(frame, column)
    bad = ~((values >= 1) & (values <= _INT32_MAX) & (values == np.floor(values)))
    if bad.any():
        raise _bad_cell(frame, column, bad, path, f"an integer between 1 and {_INT32_MAX}")
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
