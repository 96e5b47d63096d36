"""How long an engine iteration takes: a roofline per device type, or a table calibrated on a real engine.

The simulator asks a :class:`PerfModel` three questions on its hot path, so every answer is a few
float operations (no numpy, no loops over steps):

* :meth:`~PerfModel.iteration_time` — one engine iteration that prefills some prompt tokens and
  advances some decoding sequences by a token each;
* :meth:`~PerfModel.decode_stretch_time` — ``steps`` back-to-back pure-decode iterations, so the
  simulator can schedule one event per stretch instead of one per token;
* :meth:`~PerfModel.steps_within` — its inverse, to cut a stretch short when a request arrives.

Both models make the per-step time of a decode stretch a *piecewise-linear* function of the step
index (the KV cache grows by ``decode_seqs`` tokens a step), so the stretch time is an exact sum
of arithmetic series over at most a handful of pieces and its inverse is a quadratic root: the
stretch functions agree with summing :meth:`iteration_time` step by step up to float rounding.

Roofline
--------
Per iteration, with ``p`` prefill tokens, ``n`` decoding sequences, ``c`` KV tokens they attend
over, ``P`` parameters, ``L`` layers, ``H`` hidden size, on ``tp`` devices::

    flops   = 2 P (p + n)            # every token through every weight
            + 2 L H p^2              # causal prefill attention, the p tokens taken as one sequence
            + 4 L H c                # decode attention: QK^T and AV over c cached tokens
    bytes   = P * weight_bytes_per_param + (c + p + n) * kv_bytes_per_token   # weights, KV read, KV written
    compute = flops / (tp * peak_flops * compute_efficiency)
    memory  = bytes / (tp * memory_bandwidth * bandwidth_efficiency)
    time    = max(compute, memory) + step_overhead + all_reduce

Weights and KV cache are sharded over the ``tp`` devices. The input embedding table counts as
weights read and multiplied although only a few of its rows are touched (up to ~6% high for
Llama 3 8B, whose vocabulary is large). ``all_reduce`` (only when ``tp > 1``) is two all-reduces
per layer (after attention and after the MLP) of ``(p + n) * H * 2`` bytes, each costing
``ALL_REDUCE_LATENCY + 2 (tp-1)/tp * bytes / interconnect_bandwidth`` (ring all-reduce). It is not
overlapped with compute, which is what makes tensor parallelism sub-linear.

Known limits: treating all prefill tokens of an iteration as one sequence overstates attention
when several prompts are batched (by at most ~13% of the FLOPs for an 8B model at 8192 batched
tokens) and understates it for a later chunk of a long prompt; ``max(compute, memory)`` assumes
perfect overlap, so near the ridge point (a prefill of ~100-300 tokens) the roofline is
optimistic — TensorRT-LLM's published first-token latency for LLaMA-7B at 128 tokens on A100 is
16 ms where this model says 10 ms.

Efficiency defaults and the published figures they were checked against are in
:mod:`testbed.catalog` and ``tests/test_perf.py``.

Calibrated profile (JSON)
-------------------------
Written by ``testbed calibrate`` from timings of the live engine, read by :class:`TableModel`::

    {
      "version": 1,
      "device": "cpu-fp32",              # device kind it was measured on
      "model": "qwen2.5-1.5b",           # model name it was measured with
      "tensor_parallel": 1,
      "source": "torch 2.13 CPU, 2025-01-01, host x",   # free text: how it was measured
      "held_out_error": {"prefill_median": 0.03, "decode_max": 0.08},  # optional: fit error off the grid
      "prefill_padding": "longest",      # optional: the engine pads a batch to its longest prompt
      "startup_seconds": 2.9,            # optional: a (re)started replica serves after this long
      "load_seconds": 1.8,               # optional: of which the model load (libraries, weights)
      "warmup_seconds": 0.1,             # optional: of which the engine's warm-up
      "prefill": {"tokens": [16, 128, 512], "seconds": [0.05, 0.2, 0.7]},
      "decode": {
        "batch_sizes": [1, 4, 16],
        "context_tokens": [128, 1024, 4096],   # KV tokens per sequence
        "seconds": [[0.03, 0.04, 0.06],        # one row per batch size, one column per context
                    [0.04, 0.05, 0.09],
                    [0.06, 0.09, 0.20]]
      }
    }

Axes are strictly increasing with at least two points; times are positive seconds (a prefill
iteration; one decode step of the whole batch). Lookups interpolate linearly (bilinearly for
decode); below an axis' first point they clamp to it, above its last point they extrapolate the
last segment's slope, floored at zero so that a noisy table never predicts shrinking times. A
mixed iteration costs ``prefill(p) + decode(n, c / n)``: the sum is what an engine without chunked
prefill does, and overstates a fused iteration by at most one pass over the weights.

An engine that left-pads a batch of prompts to the longest (the built-in PyTorch engine) computes
``B x longest`` tokens, not their sum: such a profile says ``prefill_padding: longest`` and
:meth:`TableModel.prefill_charge` charges that. ``startup_seconds`` is how long a replica takes
from (re)start to serving; the simulator keeps a repaired replica refusing connections that long.
``load_seconds`` and ``warmup_seconds`` split it as the replica measured it; an elastic fleet's
lifecycle takes its *loading* (everything but the warm-up) and *warming* phases from them.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from testbed.catalog import DeviceKind, ModelKind
from testbed.spec import SpecError, TopologySpec, format_validation_error

# Seconds of fixed cost per all-reduce (launch and synchronisation): NCCL's small-message latency
# inside an NVLink node is ~10-20 us; TensorRT-LLM's custom all-reduce gets under 10 us.
ALL_REDUCE_LATENCY = 15e-6
# Bytes per activation value exchanged by tensor-parallel all-reduces (fp16/bf16).
ACTIVATION_BYTES = 2.0
# A step that ends within this many seconds of `elapsed` counts as done (float rounding of sums).
_TIME_EPSILON = 1e-9


class PerfModel(Protocol):
    """What the simulator needs to know about an engine's speed."""

    def iteration_time(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """Seconds for one iteration that prefills ``prefill_tokens`` prompt tokens and advances
        ``decode_seqs`` decoding sequences by a token each, whose KV caches total ``context_tokens``."""
        ...

    def decode_stretch_time(self, decode_seqs: int, context_tokens: int, steps: int) -> float:
        """Seconds for ``steps`` consecutive pure-decode iterations of the same sequences, starting
        with KV total ``context_tokens`` (growing by ``decode_seqs`` a step)."""
        ...

    def steps_within(self, decode_seqs: int, context_tokens: int, elapsed: float) -> int:
        """Whole steps of such a stretch completed after ``elapsed`` seconds."""
        ...

    def prefill_charge(self, prefill_tokens: int, prompts: list[int]) -> int:
        """Prompt tokens an iteration that prefills ``prefill_tokens`` of these prompts costs: those
        tokens, or the batch size times the longest prompt for an engine that left-pads a batch."""
        ...

    @property
    def startup_seconds(self) -> float:
        """Seconds from a repaired replica's start to its serving (process start and weight load)."""
        ...

    @property
    def warmup_seconds(self) -> float:
        """Of ``startup_seconds``, the engine's warm-up."""
        ...


# A decode stretch's per-step time as pieces (first step index, time of that step, increase per
# step); each piece runs until the next one starts, the last one forever.
_Piece = tuple[int, float, float]


def _check_stretch(decode_seqs: int) -> None:
    if decode_seqs < 1:
        raise ValueError(f"a decode stretch needs at least one decoding sequence, got {decode_seqs}")


def _series(first: float, slope: float, m: int) -> float:
    """Seconds for m steps taking first, first + slope, first + 2 slope, ..."""
    return m * first + slope * m * (m - 1) / 2


def _series_steps(first: float, slope: float, budget: float, limit: int | None) -> int:
    """Largest m (at most limit) with _series(first, slope, m) <= budget.

    The quadratic root in its cancellation-free form (valid for either sign of slope while step
    times stay positive) lands within one of the answer; the loops settle float rounding.
    """
    half = first - slope / 2
    root = math.sqrt(max(half * half + 2 * slope * budget, 0.0))
    m = int(2 * budget / (half + root)) if half + root > 0 else 0
    if limit is not None:
        m = min(m, limit)
    while (limit is None or m < limit) and _series(first, slope, m + 1) <= budget:
        m += 1
    while m > 0 and _series(first, slope, m) > budget:
        m -= 1
    return m


def _stretch_time(pieces: list[_Piece], steps: int) -> float:
    """Sum of the per-step times of steps 0..steps-1: an arithmetic series per piece."""
    total = 0.0
    for i, (start, first, slope) in enumerate(pieces):
        if start >= steps:
            break
        end = pieces[i + 1][0] if i + 1 < len(pieces) else steps
        total += _series(first, slope, min(end, steps) - start)
    return total


def _steps_within(pieces: list[_Piece], elapsed: float) -> int:
    """Inverse of :func:`_stretch_time`: skip whole pieces, then solve the series of the last one."""
    budget = elapsed + _TIME_EPSILON
    if budget <= 0:
        return 0
    for (start, first, slope), (next_start, _, _) in zip(pieces, pieces[1:]):
        whole = _series(first, slope, next_start - start)
        if whole > budget:
            return start + _series_steps(first, slope, budget, next_start - start)
        budget -= whole
    start, first, slope = pieces[-1]
    return start + _series_steps(first, slope, budget, None)


class Roofline:
    """Iteration time from FLOPs and bytes moved, against a device's peaks and efficiencies.

    All per-iteration constants are folded into a few coefficients at construction, so that
    :meth:`iteration_time` is a dozen multiply-adds.
    """

    def __init__(self, model: ModelKind, device: DeviceKind, tensor_parallel: int = 1) -> None:
        if tensor_parallel < 1:
            raise ValueError(f"tensor_parallel must be at least 1, got {tensor_parallel}")
        self.model = model
        self.device = device
        self.tensor_parallel = tp = tensor_parallel
        flop_rate = tp * device.peak_flops * device.compute_efficiency
        byte_rate = tp * device.memory_bandwidth * device.bandwidth_efficiency
        layer_width = model.layers * model.hidden
        self._token_compute = 2 * model.params / flop_rate
        self._prefill_attention = 2 * layer_width / flop_rate
        self._decode_attention = 4 * layer_width / flop_rate
        self._weights_memory = model.params * device.weight_bytes_per_param / byte_rate
        self._kv_memory = model.kv_bytes_per_token / byte_rate
        self._fixed = device.step_overhead
        self._token_comm = 0.0
        if tp > 1:
            all_reduces = 2 * model.layers
            self._fixed += all_reduces * ALL_REDUCE_LATENCY
            ring = 2 * (tp - 1) / tp
            self._token_comm = all_reduces * ring * model.hidden * ACTIVATION_BYTES / device.interconnect_bandwidth

    def _parts(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> tuple[float, float, float]:
        """(compute seconds, memory seconds, unoverlapped seconds) of one iteration."""
        tokens = prefill_tokens + decode_seqs
        compute = (
            tokens * self._token_compute
            + prefill_tokens * prefill_tokens * self._prefill_attention
            + context_tokens * self._decode_attention
        )
        memory = self._weights_memory + (context_tokens + tokens) * self._kv_memory
        return compute, memory, self._fixed + tokens * self._token_comm

    def iteration_time(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        if prefill_tokens + decode_seqs <= 0:
            return 0.0
        compute, memory, fixed = self._parts(prefill_tokens, decode_seqs, context_tokens)
        return (compute if compute > memory else memory) + fixed

    def _pieces(self, decode_seqs: int, context_tokens: int) -> list[_Piece]:
        """Compute and memory time are both linear in the step index; their max switches at most once."""
        _check_stretch(decode_seqs)
        compute, memory, fixed = self._parts(0, decode_seqs, context_tokens)
        compute_next, memory_next, _ = self._parts(0, decode_seqs, context_tokens + decode_seqs)
        d_compute, d_memory = compute_next - compute, memory_next - memory
        if compute >= memory and d_compute >= d_memory:
            return [(0, compute + fixed, d_compute)]
        if memory >= compute and d_memory >= d_compute:
            return [(0, memory + fixed, d_memory)]
        switch = math.ceil((memory - compute) / (d_compute - d_memory))
        head, head_slope = (compute, d_compute) if compute > memory else (memory, d_memory)
        tail, tail_slope = (compute, d_compute) if d_compute > d_memory else (memory, d_memory)
        return [(0, head + fixed, head_slope), (switch, tail + fixed + switch * tail_slope, tail_slope)]

    def decode_stretch_time(self, decode_seqs: int, context_tokens: int, steps: int) -> float:
        return _stretch_time(self._pieces(decode_seqs, context_tokens), steps)

    def steps_within(self, decode_seqs: int, context_tokens: int, elapsed: float) -> int:
        return _steps_within(self._pieces(decode_seqs, context_tokens), elapsed)

    def prefill_charge(self, prefill_tokens: int, prompts: list[int]) -> int:
        """Serving engines on accelerators pack prompts without padding."""
        return prefill_tokens

    @property
    def startup_seconds(self) -> float:
        """Unknown without a measurement: a calibrated profile carries it; the roofline assumes none."""
        return 0.0

    @property
    def warmup_seconds(self) -> float:
        return 0.0


# --------------------------------------------------------------------------- calibrated tables


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _increasing(name: str, values: list[int]) -> None:
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {values}")


class PrefillTable(_Strict):
    tokens: list[PositiveInt] = Field(min_length=2, description="prompt tokens prefilled in one iteration")
    seconds: list[PositiveFloat] = Field(min_length=2, description="seconds for that iteration")

    @model_validator(mode="after")
    def _shape(self) -> PrefillTable:
        _increasing("tokens", self.tokens)
        if len(self.seconds) != len(self.tokens):
            raise ValueError(f"seconds has {len(self.seconds)} entries but tokens has {len(self.tokens)}")
        return self


class DecodeTable(_Strict):
    batch_sizes: list[PositiveInt] = Field(min_length=2, description="decoding sequences in the batch")
    context_tokens: list[PositiveInt] = Field(min_length=2, description="KV tokens per sequence")
    seconds: list[list[PositiveFloat]] = Field(description="one row per batch size, one column per context")

    @model_validator(mode="after")
    def _shape(self) -> DecodeTable:
        _increasing("batch_sizes", self.batch_sizes)
        _increasing("context_tokens", self.context_tokens)
        if len(self.seconds) != len(self.batch_sizes):
            raise ValueError(f"seconds has {len(self.seconds)} rows but batch_sizes has {len(self.batch_sizes)}")
        for i, row in enumerate(self.seconds):
            if len(row) != len(self.context_tokens):
                raise ValueError(
                    f"seconds row {i} has {len(row)} entries but context_tokens has {len(self.context_tokens)}"
                )
        return self


class PerfProfile(_Strict):
    """A calibrated profile: measured iteration times of one model on one device kind."""

    version: Literal[1] = 1
    device: str = Field(min_length=1)
    model: str = Field(min_length=1)
    tensor_parallel: PositiveInt = 1
    source: str = ""
    held_out_error: dict[str, float] = Field(
        default_factory=dict, description="calibration's relative error on points off the grid, e.g. decode_median"
    )
    prefill_padding: Literal["none", "longest"] = Field(
        "none",
        description="how the engine lays out a batch of prompts: packed ('none', charged by total tokens) "
        "or left-padded to the longest ('longest', charged batch size x longest prompt)",
    )
    startup_seconds: float = Field(
        0.0, ge=0, description="seconds from starting a replica (after a repair) to serving: process start, model load"
    )
    load_seconds: float = Field(0.0, ge=0, description="of startup_seconds, the model load (libraries and weights), as measured")
    warmup_seconds: float = Field(0.0, ge=0, description="of startup_seconds, the engine's warm-up, as measured")
    prefill: PrefillTable
    decode: DecodeTable


def _bracket(xs: list[float], x: float) -> int:
    """Index of the segment that interpolates (or extrapolates) at x; -1 below the first point."""
    if x <= xs[0]:
        return -1
    return min(bisect_right(xs, x) - 1, len(xs) - 2)


def _segment(xs: list[float], i: int, y0: float, y1: float, x: float) -> float:
    """Linear through (xs[i], y0), (xs[i+1], y1); beyond the last point the slope is floored at 0."""
    if x > xs[-1] and y1 < y0:
        return y1
    return y0 + (y1 - y0) / (xs[i + 1] - xs[i]) * (x - xs[i])


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    i = _bracket(xs, x)
    return ys[0] if i < 0 else _segment(xs, i, ys[i], ys[i + 1], x)


class TableModel:
    """Iteration times interpolated from a calibrated :class:`PerfProfile` (see module docstring)."""

    def __init__(self, profile: PerfProfile) -> None:
        self.profile = profile
        self._prefill_tokens = [float(t) for t in profile.prefill.tokens]
        self._prefill_seconds = list(profile.prefill.seconds)
        self._batches = [float(b) for b in profile.decode.batch_sizes]
        self._contexts = [float(c) for c in profile.decode.context_tokens]
        # Columns (one per context, over batch sizes): a decode lookup interpolates two of them.
        self._columns = [list(column) for column in zip(*profile.decode.seconds)]

    @classmethod
    def from_json(cls, path: str | Path) -> TableModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise SpecError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
        try:
            return cls(PerfProfile.model_validate(data))
        except ValidationError as exc:
            raise SpecError(format_validation_error(str(path), exc)) from None

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.profile.model_dump(mode="json"), indent=2) + "\n")

    def _prefill(self, tokens: int) -> float:
        return _interp(self._prefill_tokens, self._prefill_seconds, tokens) if tokens > 0 else 0.0

    def _decode(self, seqs: int, context_per_seq: float) -> float:
        i = _bracket(self._contexts, context_per_seq)
        if i < 0:
            return _interp(self._batches, self._columns[0], seqs)
        low = _interp(self._batches, self._columns[i], seqs)
        high = _interp(self._batches, self._columns[i + 1], seqs)
        return _segment(self._contexts, i, low, high, context_per_seq)

    def iteration_time(self, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        decode = self._decode(decode_seqs, context_tokens / decode_seqs) if decode_seqs > 0 else 0.0
        return self._prefill(prefill_tokens) + decode

    def _pieces(self, decode_seqs: int, context_tokens: int) -> list[_Piece]:
        """Per-sequence context grows by one a step, so a new piece starts each time it reaches a grid point."""
        _check_stretch(decode_seqs)
        x0 = context_tokens / decode_seqs
        xs = self._contexts
        values = [_interp(self._batches, column, decode_seqs) for column in self._columns]
        region = bisect_right(xs, x0) - 1
        pieces: list[_Piece] = [(0, _interp(xs, values, x0), self._slope(values, region))]
        for i in range(region + 1, len(xs)):
            start = math.ceil(xs[i] - x0)
            pieces.append((start, _interp(xs, values, x0 + start), self._slope(values, i)))
        return pieces

    def _slope(self, values: list[float], region: int) -> float:
        """Increase per step (per context token) from grid point ``region`` on, matching :func:`_interp`:
        flat before the grid, the segment's slope inside it, the last slope floored at 0 beyond it."""
        xs = self._contexts
        if region < 0:
            return 0.0
        if region >= len(xs) - 1:
            return max((values[-1] - values[-2]) / (xs[-1] - xs[-2]), 0.0)
        return (values[region + 1] - values[region]) / (xs[region + 1] - xs[region])

    def decode_stretch_time(self, decode_seqs: int, context_tokens: int, steps: int) -> float:
        return _stretch_time(self._pieces(decode_seqs, context_tokens), steps)

    def steps_within(self, decode_seqs: int, context_tokens: int, elapsed: float) -> int:
        return _steps_within(self._pieces(decode_seqs, context_tokens), elapsed)

    def prefill_charge(self, prefill_tokens: int, prompts: list[int]) -> int:
        if self.profile.prefill_padding == "longest" and prompts:
            return len(prompts) * max(prompts)
        return prefill_tokens

    @property
    def startup_seconds(self) -> float:
        return self.profile.startup_seconds

    @property
    def warmup_seconds(self) -> float:
        return self.profile.warmup_seconds


# --------------------------------------------------------------------------- capacity and selection


def kv_capacity_tokens(model: ModelKind, device: DeviceKind, tensor_parallel: int, fraction: float) -> int:
    """KV-cache tokens one replica holds: the share ``fraction`` of memory left after the weights."""
    weights = model.params * device.weight_bytes_per_param
    memory = tensor_parallel * device.memory_bytes
    if weights >= memory:
        raise ValueError(
            f"model weights ({weights / 1e9:.1f} GB at {device.weight_bytes_per_param:g} bytes/parameter) do not fit "
            f"in {tensor_parallel} x {device.memory_bytes / 1e9:.1f} GB of device memory; "
            f"raise tensor_parallel or use a larger device"
        )
    return int((memory - weights) * fraction / model.kv_bytes_per_token)


def perf_model_for(
    topology: TopologySpec, device_kind: str, tensor_parallel: int, model: str | None = None
) -> PerfModel:
    """The calibrated table if the topology names a profile for this device kind, else the roofline.

    Profile paths were resolved against the topology file's directory when the spec was loaded.
    A profile is only trusted for what it measured: a different device kind, model or tensor
    parallelism is a :class:`SpecError` rather than a silently wrong latency. A rack serving a
    model of its own (``model``) gets the roofline: profiles are measured for the topology's model.
    """
    profile_path = topology.profiles.get(device_kind)
    if profile_path is None or model is not None:
        return Roofline(topology.model_kind(model), topology.device_kind(device_kind), tensor_parallel)
    path = Path(profile_path)
    table = TableModel.from_json(path)
    profile = table.profile
    if profile.device != device_kind:
        raise SpecError(f"{path}: device: profile was measured on {profile.device!r} but is used for {device_kind!r}")
    if isinstance(topology.model, str) and profile.model != topology.model:
        raise SpecError(
            f"{path}: model: profile was measured with {profile.model!r} but the topology serves {topology.model!r}"
        )
    if profile.tensor_parallel != tensor_parallel:
        raise SpecError(
            f"{path}: tensor_parallel: profile was measured at {profile.tensor_parallel} "
            f"but the replica uses {tensor_parallel}"
        )
    return table
