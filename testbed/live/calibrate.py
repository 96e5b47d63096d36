"""Calibration: time a real engine over a grid, fit the table model, report its held-out error.

The simulator's :class:`~testbed.perf.TableModel` answers two questions: how long a prefill of
``p`` prompt tokens takes, and how long one decode step of ``n`` sequences over ``c`` cached
tokens each takes. Calibration asks the real engine exactly those questions:

* **prefill** — a batch of ``B`` prompts of ``L`` tokens, timed end to end; the table is indexed
  by the total ``B * L``, and when several grid points share a total the table takes their
  median. The built-in engine left-pads a batch to its longest prompt, so its profile says
  ``prefill_padding: longest`` and the simulator charges a batch of uneven prompts
  ``B * longest`` — what the engine computes — rather than their sum.
* **start-up** — a timer that starts server processes (the built-in server, vLLM) reports how
  long each took from spawn to ready; their median is the profile's ``startup_seconds``, the
  time a repaired replica takes to serve again in the simulation. The built-in server also says
  how much of it was the model load and the warm-up (``load_seconds``, ``warmup_seconds``): the
  simulator's elastic lifecycle takes a new or repaired replica's *loading* and *warming* phases
  from them (:meth:`testbed.policy.lifecycle.LifecycleTimings.for_replica`), so its cold start is
  the measured one. ``testbed calibrate --startup-only`` re-measures just these, on servers
  started one at a time, into an existing profile.
* **decode** — ``B`` sequences prefilled (untimed) to ``c - steps/2`` tokens, then ``steps`` decode
  steps timed, so that the mean context over the timed steps is the grid's ``c``.

Every point is run ``warmup`` times untimed (allocator and kernel caches settle) and then
``repetitions`` times; the median is kept, because a 2-core machine shared with other work has
outliers only on the slow side.

The fit is judged on points it has not seen: **held-out points** lie between the fit grid's
points (the integer geometric midpoint of each pair of neighbours on each axis), so their error
is the interpolation error a simulation will actually make. The profile records it under
``held_out_error``. Timers for the built-in PyTorch engine and for an OpenAI-compatible server
(vLLM) live in :mod:`testbed.live.timers`; this module needs only the :class:`StepTimer` protocol.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Protocol

from testbed.perf import DecodeTable, PerfProfile, PrefillTable, TableModel

ProgressCallback = Callable[[str], None]


class StepTimer(Protocol):
    """What calibration needs from an engine: one timed prefill and one timed decode stretch."""

    def prefill(self, batch: int, prompt_tokens: int) -> float:
        """Seconds to prefill ``batch`` prompts of ``prompt_tokens`` tokens each (one call)."""
        ...

    def decode(self, batch: int, context_tokens: int, steps: int) -> float:
        """Seconds for ``steps`` decode steps of ``batch`` sequences prefilled to ``context_tokens``."""
        ...


@dataclass(frozen=True)
class Grid:
    """Where to measure: the fit axes, and how hard to measure each point."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    prompt_tokens: tuple[int, ...] = (16, 64, 256)
    context_tokens: tuple[int, ...] = (32, 128, 512)
    decode_steps: int = 8
    repetitions: int = 3
    warmup: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "prompt_tokens", "context_tokens"):
            axis = getattr(self, name)
            if len(axis) < 2 or any(v < 1 for v in axis) or any(b <= a for a, b in zip(axis, axis[1:])):
                raise ValueError(f"{name} must be at least two strictly increasing positive integers, got {axis}")
        if self.decode_steps < 1 or self.repetitions < 1 or self.warmup < 0:
            raise ValueError("decode_steps and repetitions must be at least 1, warmup at least 0")
        if self.context_tokens[0] <= self.decode_steps // 2:
            raise ValueError(f"context_tokens must start above decode_steps / 2 ({self.decode_steps // 2})")

    def prefill_points(self) -> list[tuple[int, int]]:
        return [(b, p) for b in self.batch_sizes for p in self.prompt_tokens]

    def decode_points(self) -> list[tuple[int, int]]:
        return [(b, c) for b in self.batch_sizes for c in self.context_tokens]

    def held_out_prefill(self) -> list[tuple[int, int]]:
        return _held_out(self.batch_sizes, self.prompt_tokens)

    def held_out_decode(self) -> list[tuple[int, int]]:
        return _held_out(self.batch_sizes, self.context_tokens)


def midpoints(axis: Iterable[int]) -> list[int]:
    """Integer geometric midpoints strictly between neighbours (none between 1 and 2)."""
    values = list(axis)
    mids = []
    for a, b in zip(values, values[1:]):
        m = round(math.sqrt(a * b))
        if a < m < b:
            mids.append(m)
    return mids


def _held_out(rows: tuple[int, ...], columns: tuple[int, ...]) -> list[tuple[int, int]]:
    """Points off the fit grid: a midpoint on at least one axis, grid or midpoint on the other."""
    row_mids, column_mids = midpoints(rows), midpoints(columns)
    all_rows = sorted({*rows, *row_mids})
    all_columns = sorted({*columns, *column_mids})
    return [(r, c) for r in all_rows for c in all_columns if r in row_mids or c in column_mids]


@dataclass
class Measurements:
    """Median seconds per point: prefill by (batch, prompt tokens), decode step by (batch, context)."""

    prefill: dict[tuple[int, int], float] = field(default_factory=dict)
    decode: dict[tuple[int, int], float] = field(default_factory=dict)
    startup: list[float] = field(default_factory=list)  # seconds from spawn to ready, per server started
    load: list[float] = field(default_factory=list)  # of which the model load, per server (when it says)
    warmup: list[float] = field(default_factory=list)  # of which the warm-up, per server (when it says)


def _median_time(run: Callable[[], float], grid: Grid) -> float:
    for _ in range(grid.warmup):
        run()
    return statistics.median(run() for _ in range(grid.repetitions))


def measure(
    timer: StepTimer,
    grid: Grid,
    prefill_points: Iterable[tuple[int, int]],
    decode_points: Iterable[tuple[int, int]],
    progress: ProgressCallback | None = None,
) -> Measurements:
    """Time each point (warm-up, then the median of the repetitions)."""
    result = Measurements()
    steps = grid.decode_steps
    for batch, prompt in prefill_points:
        result.prefill[batch, prompt] = _median_time(lambda: timer.prefill(batch, prompt), grid)
        if progress:
            progress(f"prefill batch {batch} x {prompt} tokens: {result.prefill[batch, prompt] * 1e3:.1f} ms")
    for batch, context in decode_points:
        start = context - steps // 2  # the timed steps' mean context is the grid's
        result.decode[batch, context] = _median_time(lambda: timer.decode(batch, start, steps) / steps, grid)
        if progress:
            progress(f"decode batch {batch} at {context} tokens: {result.decode[batch, context] * 1e3:.2f} ms/step")
    return result


def fit(
    measured: Measurements, grid: Grid, device: str, model: str, source: str = "", padding: str = "none"
) -> PerfProfile:
    """The table model through the fit grid's medians (prefill collapsed onto total tokens), with
    the engine's prompt ``padding`` and its measured start-up time."""
    by_total: dict[int, list[float]] = {}
    for (batch, prompt), seconds in measured.prefill.items():
        if batch in grid.batch_sizes and prompt in grid.prompt_tokens:
            by_total.setdefault(batch * prompt, []).append(seconds)
    tokens = sorted(by_total)
    rows = [[measured.decode[b, c] for c in grid.context_tokens] for b in grid.batch_sizes]
    return PerfProfile(
        device=device,
        model=model,
        source=source,
        prefill_padding=padding,
        **startup_fields(measured),
        prefill=PrefillTable(tokens=tokens, seconds=[statistics.median(by_total[t]) for t in tokens]),
        decode=DecodeTable(
            batch_sizes=list(grid.batch_sizes), context_tokens=list(grid.context_tokens), seconds=rows
        ),
    )


def startup_fields(measured: Measurements) -> dict[str, float]:
    """The profile's start-up figures: medians of what the servers reported (0 when none did)."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3) if values else 0.0

    return {"startup_seconds": median(measured.startup), "load_seconds": median(measured.load),
            "warmup_seconds": median(measured.warmup)}


def measure_startup(model: str, device: str, starts: int, progress: ProgressCallback | None = None) -> Measurements:
    """``starts`` start-ups of the built-in replica server serving ``model``, one at a time."""
    from testbed.live.replica.models import resolve_model
    from testbed.live.timers import ServerTimer

    check_engine("torch", device)
    resolve_model(model)  # a bad model is refused before anything starts
    timer = ServerTimer(model if model in _built_in() else str(resolve_model(model)), "int8" if device == "cpu-int8" else None)
    try:
        for i in range(starts):
            timer.time_starts(1)
            if progress:
                progress(f"start {i + 1}/{starts}: {timer.startups[-1]:.2f} s to serving "
                         f"(model load {timer.loads[-1]:.2f} s, warm-up {timer.warmups[-1]:.2f} s)")
    finally:
        timer.close()
    return Measurements(startup=timer.startups, load=timer.loads, warmup=timer.warmups)


def with_startup(profile: PerfProfile, measured: Measurements, note: str) -> PerfProfile:
    """``profile`` with its start-up figures re-measured (its tables untouched), and ``note`` on its source."""
    source = f"{profile.source}; {note}" if profile.source else note
    return profile.model_copy(update={**startup_fields(measured), "source": source})


@dataclass(frozen=True)
class PointError:
    """One held-out point: what was measured and what the fitted table predicts."""

    phase: str  # "prefill" or "decode"
    batch: int
    tokens: int  # prompt tokens (prefill) or context tokens per sequence (decode)
    measured: float
    predicted: float

    @property
    def relative(self) -> float:
        return self.predicted / self.measured - 1


def held_out_errors(profile: PerfProfile, measured: Measurements, grid: Grid) -> list[PointError]:
    """The fitted table against every held-out measurement."""
    table = TableModel(profile)
    errors = []
    for batch, prompt in grid.held_out_prefill():
        if (batch, prompt) in measured.prefill:
            predicted = table.iteration_time(batch * prompt, 0, 0)
            errors.append(PointError("prefill", batch, prompt, measured.prefill[batch, prompt], predicted))
    for batch, context in grid.held_out_decode():
        if (batch, context) in measured.decode:
            predicted = table.iteration_time(0, batch, batch * context)
            errors.append(PointError("decode", batch, context, measured.decode[batch, context], predicted))
    return errors


def error_summary(errors: list[PointError]) -> dict[str, float]:
    """Median and worst absolute relative error per phase, e.g. {"prefill_median": 0.04, ...}."""
    summary: dict[str, float] = {}
    for phase in ("prefill", "decode"):
        values = [abs(e.relative) for e in errors if e.phase == phase]
        if values:
            summary[f"{phase}_median"] = round(statistics.median(values), 4)
            summary[f"{phase}_max"] = round(max(values), 4)
    return summary


def calibrate(
    timer: StepTimer,
    grid: Grid,
    device: str,
    model: str,
    source: str = "",
    progress: ProgressCallback | None = None,
) -> tuple[PerfProfile, list[PointError]]:
    """Measure the fit grid and the held-out points, fit, and attach the held-out error."""
    return fit_with_error(measure_grid(timer, grid, progress), grid, device, model, source)


def measure_grid(timer: StepTimer, grid: Grid, progress: ProgressCallback | None = None) -> Measurements:
    """Every fit and held-out point of ``grid``, and the start-up times of the servers it started."""
    measured = measure(
        timer,
        grid,
        grid.prefill_points() + grid.held_out_prefill(),
        grid.decode_points() + grid.held_out_decode(),
        progress,
    )
    measured.startup = list(getattr(timer, "startups", []))
    measured.load = list(getattr(timer, "loads", []))
    measured.warmup = list(getattr(timer, "warmups", []))
    return measured


def fit_with_error(
    measured: Measurements, grid: Grid, device: str, model: str, source: str = "", padding: str = "none"
) -> tuple[PerfProfile, list[PointError]]:
    profile = fit(measured, grid, device, model, source, padding)
    errors = held_out_errors(profile, measured, grid)
    return profile.model_copy(update={"held_out_error": error_summary(errors)}), errors


def merge(runs: list[Measurements]) -> Measurements:
    """Per point, the median over runs measured side by side (see :func:`measure_in_parallel`)."""
    return Measurements(
        prefill={k: statistics.median(r.prefill[k] for r in runs) for k in runs[0].prefill},
        decode={k: statistics.median(r.decode[k] for r in runs) for k in runs[0].decode},
        startup=[t for r in runs for t in r.startup],
        load=[t for r in runs for t in r.load],
        warmup=[t for r in runs for t in r.warmup],
    )


def _measure_worker(engine: str, model: str, device: str, grid: Grid) -> Measurements:
    return measure_grid(open_timer(engine, model, device), grid)


def measure_in_parallel(engine: str, model: str, device: str, grid: Grid, processes: int) -> Measurements:
    """The grid measured by ``processes`` engines at once, each in its own process.

    Replicas of a live stack share this machine's cores, so an engine that is alone on a core
    during calibration is faster than each of them when several are busy: measuring with as many
    engines side by side as will serve together puts that contention into the profile.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_measure_worker, engine, model, device, grid) for _ in range(processes)]
        return merge([f.result() for f in futures])


# --------------------------------------------------------------------------- the command

GRIDS = {
    # under a minute for the tiny model: a quick look
    "quick": Grid(batch_sizes=(1, 2, 4), prompt_tokens=(16, 64, 256), context_tokens=(32, 128, 384), decode_steps=8, repetitions=3),
    # a few minutes for the tiny model: what the committed profiles were made with
    "standard": Grid(
        batch_sizes=(1, 2, 4, 8), prompt_tokens=(16, 64, 256), context_tokens=(32, 128, 384), decode_steps=16, repetitions=5
    ),
}


# torch: the built-in replica server over HTTP (what `testbed live` runs); torch-runner: the bare
# model in this process (faster to measure, optimistic by the server's per-token cost); vllm.
ENGINES = ("torch", "torch-runner", "vllm")
# How each engine lays out a batch of prompts: the built-in engine left-pads to the longest one;
# vLLM packs them (no padding), so its prefill costs the batch's total tokens.
PADDING = {"torch": "longest", "torch-runner": "longest", "vllm": "none"}


def open_timer(engine: str, model: str, device: str) -> StepTimer:
    """The timer for ``engine`` (one of :data:`ENGINES`) serving ``model`` as device kind ``device``."""
    check_engine(engine, device)
    from testbed.live.replica.models import resolve_model

    model_dir = resolve_model(model)
    quantize = "int8" if device == "cpu-int8" else None
    if engine == "torch":
        from testbed.live.timers import ServerTimer

        return ServerTimer(model if model in _built_in() else str(model_dir), quantize)
    if engine == "torch-runner":
        from testbed.live.timers import TorchTimer

        return TorchTimer(model_dir, quantize)
    if engine == "vllm":
        from testbed.live.timers import VllmTimer

        return VllmTimer(model_dir)
    raise AssertionError(engine)


def _built_in() -> set[str]:
    from testbed.live.replica.models import RECIPES

    return set(RECIPES)


def check_engine(engine: str, device: str) -> None:
    """ValueError naming the option when the engine or device kind cannot be calibrated here."""
    if engine not in ENGINES:
        raise ValueError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if device not in ("cpu-fp32", "cpu-int8"):
        raise ValueError(f"--device: the live engines run on this CPU: expected cpu-fp32 or cpu-int8, got {device!r}")


def profile_model_name(model: str) -> str:
    """A built-in model keeps its name (the catalog knows it); a directory is named by its basename."""
    from testbed.live.replica.models import RECIPES

    return model if model in RECIPES else Path(model).expanduser().resolve().name


def source_note(engine: str, grid_name: str, parallel: int = 1) -> str:
    """How a profile was measured, for the profile's ``source`` field."""
    import platform

    import torch

    return (
        f"testbed calibrate --engine {engine} --grid {grid_name} --parallel {parallel}; torch {torch.__version__} on "
        f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores; {date.today().isoformat()}"
    )
