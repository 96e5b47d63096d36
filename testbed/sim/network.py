"""Network faults on the paths between clients and regions, and between regions.

An attempt from a client near region ``C`` to a replica in region ``R`` travels the path
``clients:C <-> R``; when ``C != R`` it also crosses ``C <-> R``. A fault between either pair of
endpoints applies to it, in both directions — the toxics Toxiproxy users know: a partition drops
everything, added latency (with jitter) delays it, packet loss drops a share of attempts, and a
bandwidth limit adds transfer time for the prompt and the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from testbed.faults import Fault

BYTES_PER_TOKEN = 4  # text on the wire, roughly, for the bandwidth toxic


@dataclass(slots=True)
class PathEffect:
    """What the active faults do to one attempt's path."""

    partitioned: bool = False
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth: float | None = None

    def sample_delay(self, rng: random.Random) -> float:
        return self.delay + (rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)


class NetworkState:
    """The network faults active right now, indexed by the pair of endpoints they sit between."""

    def __init__(self) -> None:
        self._active: dict[frozenset[str], list[Fault]] = {}

    def add(self, fault: Fault) -> None:
        assert fault.endpoints is not None
        self._active.setdefault(frozenset(fault.endpoints), []).append(fault)

    def remove(self, fault: Fault) -> None:
        assert fault.endpoints is not None
        key = frozenset(fault.endpoints)
        self._active[key].remove(fault)
        if not self._active[key]:
            del self._active[key]

    def path(self, client_region: str, region: str) -> PathEffect | None:
        """The combined effect on a client-to-replica path, or None when nothing is wrong."""
        if not self._active:
            return None
        faults = list(self._active.get(frozenset((f"clients:{client_region}", region)), ()))
        if client_region != region:
            faults += self._active.get(frozenset((client_region, region)), ())
        if not faults:
            return None
        effect = PathEffect()
        for fault in faults:
            if fault.kind == "partition":
                effect.partitioned = True
            elif fault.kind == "latency":
                effect.delay += fault.params["delay"]
                effect.jitter += fault.params.get("jitter", 0.0)
            elif fault.kind == "packet_loss":
                effect.loss = 1 - (1 - effect.loss) * (1 - fault.params["loss"])
            elif fault.kind == "bandwidth":
                limit = fault.params["limit"]
                effect.bandwidth = limit if effect.bandwidth is None else min(effect.bandwidth, limit)
        return effect
