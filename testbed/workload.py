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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from testbed import prefixes, traces
from testbed.agents import SESSIONS, AgentPlan, plan_sessions
from testbed.lengths import categorical, sample_lengths
from testbed.prefixes import PrefixColumns
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
PREFIX = "workload.prefix"  # the stream of prefix draws: which system prompt, which conversation


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
    prefix: PrefixColumns | None = None  # block chains of the requests above, when the workload shares prefixes
    call_prefix: PrefixColumns | None = None  # block chains of the agent plan's calls (prefix.agent_context)

    def __len__(self) -> int:
        return len(self.time)


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
        source = traces.replay(spec.arrival, duration, Path(base_dir) / spec.arrival.path, class_names, region_names)
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
        prefix=source.prefix,
    )
    if spec.prefix is not None:
        arrivals = _with_prefixes(spec, arrivals, streams)
    return _split_sessions(spec, arrivals, streams) if spec.agents is not None else arrivals


def _with_prefixes(spec: WorkloadSpec, arrivals: Arrivals, streams: RandomStreams) -> Arrivals:
    """Give every request its block chain: its class's system prompt, then its conversation.

    Prompt lengths change accordingly: a system prompt's tokens come before the drawn prompt
    (the user part), and a chat turn's prompt carries its conversation so far. Draws come from
    the ``workload.prefix`` stream only, so arrivals and drawn lengths stay where they were.
    """
    prefix = spec.prefix
    assert prefix is not None
    rng = streams.numpy(PREFIX)
    n = len(arrivals)
    block = prefix.block_tokens
    prompt = arrivals.prompt_tokens.astype(np.int64)
    runs = []
    reserved = 0
    if prefix.system_prompts is not None:
        runs.append(prefixes.system_prompts(prefix.system_prompts, arrivals.request_class, block, rng))
        reserved = prefix.system_prompts.tokens
    session = np.full(n, -1, dtype=np.int64)
    if prefix.chat is not None:
        turns = sample_lengths(prefix.chat.turns, max(n, 1), rng)
        session, context = prefixes.chat_conversations(
            prefix.chat, prompt, arrivals.output_tokens.astype(np.int64), turns, rng, reserved
        )
        prompt = prompt + context
        if runs:  # a conversation keeps the system prompt its first turn drew: its context follows it
            runs[0] = prefixes.per_conversation(runs[0], session)
        runs.append(prefixes.conversation_runs(session, prompt // block))
    prompt = np.minimum(prompt + reserved, np.iinfo(np.int32).max)
    columns = prefixes.from_runs(runs, session, block)
    return replace(arrivals, prompt_tokens=prompt.astype(np.int32), prefix=columns)


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
    prefix = arrivals.prefix.take(single) if arrivals.prefix is not None else None
    call_prefix = None
    if spec.prefix is not None and spec.prefix.agent_context:
        plan, call_prefix = _agent_context(plan, spec.prefix.block_tokens)
    elif prefix is not None:
        call_prefix = PrefixColumns.none(plan.calls, prefix.block_tokens)
    return replace(
        arrivals,
        **{name: getattr(arrivals, name)[single] for name in columns},
        agents=plan,
        prefix=prefix,
        call_prefix=call_prefix,
    )


def _agent_context(plan: AgentPlan, block_tokens: int) -> tuple[AgentPlan, PrefixColumns]:
    """Every call's prompt extends its session's conversation: all earlier calls' prompts and answers.

    Calls are planned session by session in order, so the context is a running sum restarted at
    each session. (A call the agent loop later skips still counts: the plan is fixed up front.)
    """
    session = plan.call_session()
    grown = plan.prompt_tokens.astype(np.int64) + plan.output_tokens.astype(np.int64)
    running = np.cumsum(grown) - grown
    first_call = np.searchsorted(session, session, side="left")
    context = running - running[first_call]
    prompt = np.minimum(plan.prompt_tokens.astype(np.int64) + context, np.iinfo(np.int32).max)
    first, count = prefixes.agent_runs(session, prompt // block_tokens)
    columns = prefixes.from_runs([(first, count)], session.astype(np.int64), block_tokens)
    return replace(plan, prompt_tokens=prompt.astype(np.int32)), columns


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
            trace = traces.replay(spec, duration, Path(base_dir) / spec.path, [], [], labels=False)
            return len(trace.time) / duration
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


def _synthesise(spec: WorkloadSpec, duration: float, streams: RandomStreams) -> traces.Trace:
    """Generated arrivals and lengths; classes and regions are left to be drawn by share."""
    time = arrival_times(spec.arrival, duration, streams.numpy("workload.arrivals"))
    n = len(time)
    unset = np.full(n, -1, dtype=np.int16)
    return traces.Trace(
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
