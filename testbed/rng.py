"""Named random streams spawned from one seed.

Each source of randomness (arrivals, prompt lengths, each fault process, each policy) draws from
its own stream, keyed by name. Adding a fault process therefore does not move the arrivals, which
is what makes A/B comparisons on common random numbers honest.
"""

from __future__ import annotations

import random
import zlib

import numpy as np


class RandomStreams:
    """Factory of independent, reproducible generators: same seed and name, same numbers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def _key(self, name: str) -> list[int]:
        # crc32 is stable across processes and Python versions, unlike hash().
        return [self.seed & 0xFFFFFFFF, self.seed >> 32 & 0xFFFFFFFF, zlib.crc32(name.encode())]

    def numpy(self, name: str) -> np.random.Generator:
        """A numpy generator for vectorised sampling (workloads, failure processes)."""
        return np.random.default_rng(np.random.SeedSequence(self._key(name)))

    def python(self, name: str) -> random.Random:
        """A stdlib generator for per-decision draws inside policies (cheap scalar calls)."""
        return random.Random(int(np.random.SeedSequence(self._key(name)).generate_state(2, np.uint64)[0]))
