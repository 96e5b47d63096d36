"""Token lengths drawn from a length spec, shared by single requests and agent sessions' calls and turns.

A leaf below :mod:`testbed.workload` and :mod:`testbed.agents` (which both draw lengths), so
neither needs the other to draw one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from testbed.spec import EmpiricalLength, FixedLength, LengthSpec, LognormalLength, UniformLength


def categorical(rng: np.random.Generator, shares: Sequence[float], n: int) -> np.ndarray:
    """n indices drawn with probability proportional to ``shares`` (zero shares never drawn)."""
    cdf = np.cumsum(np.asarray(shares, dtype=np.float64))
    cdf /= cdf[-1]
    return np.searchsorted(cdf, rng.random(n), side="right")


def sample_lengths(spec: LengthSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """n int32 token counts, each at least 1."""
    match spec:
        case FixedLength(value=value):
            return np.full(n, value, dtype=np.int32)
        case UniformLength(low=low, high=high):
            return rng.integers(low, high, size=n, endpoint=True, dtype=np.int32)
        case LognormalLength(median=median, sigma=sigma, max=top):
            raw = median * np.exp(sigma * rng.standard_normal(n))
            return np.clip(np.rint(raw), 1, top).astype(np.int32)
        case EmpiricalLength(values=values, weights=weights):
            table = np.asarray(values, dtype=np.int32)
            return table[categorical(rng, weights or [1.0] * len(values), n)]
    raise TypeError(f"not a length spec: {spec!r}")
