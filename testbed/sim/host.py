"""Replicas sharing one machine's cores: processor sharing in simulated time.

A performance profile measures a replica with a core (or a device) to itself. On a laptop the
live stack's replicas — and its gateway, proxies and load generator — share a couple of cores,
and a replica there runs slower the more of its neighbours are working at the same moment. The
simulation models that as an operating system's scheduler does, to first order: a host with
``C`` cores and ``k`` replicas working gives each ``min(1, C / k)`` of a core, re-timing every
running iteration whenever ``k`` changes. ``C`` is the topology's ``host_cores``; a calibrated,
fractional figure accounts for what the gateway and the rest take from the same cores.
"""

from __future__ import annotations

from collections.abc import Sequence

from testbed.sim.replica import SimReplica


class SharedHost:
    """``cores`` shared by ``members``; each member calls :meth:`changed` when it starts or stops working."""

    def __init__(self, cores: float, members: Sequence[SimReplica]) -> None:
        self.cores = cores
        self.members = list(members)
        for member in self.members:
            member.host = self

    def share(self, working: int) -> float:
        """Each working member's share of a core when ``working`` of them work at once."""
        return min(1.0, self.cores / working) if working else 1.0

    def changed(self) -> None:
        share = self.share(sum(1 for m in self.members if m.working))
        for member in self.members:
            if member.working:
                member.set_share(share)
