"""Which requests leave a trace: every one that had something happen to it, and a seeded share of the rest.

A 300k-request run would write hundreds of megabytes of spans for requests that went straight
through, which nobody opens; the requests an on-call engineer opens a trace for are the ones
that failed, were retried, hedged, migrated, failed over, or degraded. So by default
(``observability.traces: sampled``) those are all traced, plus ``trace_sample`` (0.1% unless
set) of the others, chosen by a hash of the request id and the seed: the same seed traces the
same requests, and the simulated and the live run of one draw trace the same ids. 0.1% is
enough healthy traces to see what normal looks like (300 of a 300k-request run) and few enough
that a fleet-day of 200M requests writes 200k of them, not the 2M a 1% share would. ``all``
traces every request, ``none`` writes no traces.

Both planes use :class:`TraceSampler`: the simulation's exporter and ``testbed live`` on the
records (:func:`notable_requests`), the live gateway's span exporter per finished request
(:mod:`testbed.live.trace_sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
import pandas as pd

from testbed.spec.observability import ObservabilitySpec, TraceMode

TRACE_MODES: tuple[str, ...] = get_args(TraceMode)
TRACES_OPTION_HELP = (
    "sampled (the default: every failed, retried, hedged, migrated or degraded request, and trace_sample of the rest), "
    "all, none, or a share of the rest such as 0.05 or 5%"
)


def in_share(request_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Whether each request id falls in the seeded share (a splitmix64 hash below ``share``)."""
    with np.errstate(over="ignore"):
        z = np.asarray(request_ids).astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < share


@dataclass(frozen=True, slots=True)
class TraceSampler:
    """The trace decision of one run: ``mode``, the share of unremarkable requests, the seed."""

    mode: TraceMode = "sampled"
    share: float = 0.001
    seed: int = 0

    @classmethod
    def of(cls, settings: ObservabilitySpec, seed: int) -> TraceSampler:
        return cls(settings.traces, settings.trace_sample, seed)

    @property
    def exports(self) -> bool:
        """False when no trace is written at all (``none``)."""
        return self.mode != "none"

    def keep(self, request_ids: np.ndarray, notable: np.ndarray) -> np.ndarray:
        """Which of the requests to trace, given which had something happen to them."""
        if self.mode == "all":
            return np.ones(len(request_ids), dtype=bool)
        if self.mode == "none":
            return np.zeros(len(request_ids), dtype=bool)
        return np.asarray(notable, dtype=bool) | in_share(request_ids, self.share, self.seed)

    def keeps(self, request_id: int, notable: bool) -> bool:
        """:meth:`keep` for one request (the live gateway decides as each request ends)."""
        return bool(self.keep(np.array([request_id], dtype=np.int64), np.array([notable]))[0])


def notable_requests(requests: pd.DataFrame, attempts: pd.DataFrame) -> np.ndarray:
    """Requests that had something happen to them: not ``ok``, retried, hedged, failed over,
    served by the fallback tier or a downgrade pool (degraded), or with an attempt that did not
    end ``ok`` (a migrated stream, a cancelled hedge) in the attempt records."""
    notable = (requests["status"] != "ok").to_numpy() | (requests["retries"] > 0).to_numpy()
    for flag in ("hedged", "failed_over", "fallback", "degraded"):
        if flag in requests:
            notable |= requests[flag].to_numpy(dtype=bool)
    if not attempts.empty:
        broken = attempts.loc[(attempts["outcome"] != "ok").to_numpy(), "request_id"].unique()
        notable |= np.isin(requests["request_id"].to_numpy(), broken)
    return notable


def parse_traces_option(text: str) -> dict[str, object]:
    """``--traces`` as an update of the observability section: a mode, or a share (sampled at it).

    Raises ValueError naming what was expected.
    """
    value = text.strip().lower()
    if value in TRACE_MODES:
        return {"traces": value}
    try:
        share = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"--traces: expected sampled, all, none or a share between 0 and 1 (0.05 or 5%), got {text!r}")
    return {"traces": "sampled", "trace_sample": share}


def with_traces_option(settings: ObservabilitySpec, text: str) -> ObservabilitySpec:
    """The observability section with ``--traces`` applied; ValueError for a bad value, or for
    asking for traces from a run whose observability is off (it would write none)."""
    update = parse_traces_option(text)
    if not settings.enabled and update["traces"] != "none":
        raise ValueError(f"--traces {text}: the scenario sets observability.enabled: false, so the run writes no traces; "
                         "enable observability or drop --traces")
    return settings.model_copy(update=update)
