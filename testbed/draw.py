"""What both planes start from: one draw of a scenario under one seed.

The simulation and the live replay must face the same world — the same topology, the same
requests at the same times with the same lengths, classes and client regions, the same fault
schedule and the same random decisions inside the gateway policy — or their records cannot be
compared. So neither plane draws anything itself: both call :func:`draw` and read the
:class:`Draw` it returns. A new source of randomness gets a named stream here (or from
``Draw.streams``), never a ``random.Random`` of its own, so that adding it moves nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from testbed import workload
from testbed.faults import Fault, build_schedule
from testbed.policy.gateway import RNG_STREAM
from testbed.rng import RandomStreams
from testbed.spec import Scenario
from testbed.topology import Topology



def policy_rng(seed: int) -> random.Random:
    """The gateway policy's generator for ``seed``: the same stream in every plane.

    A free function as well as :meth:`Draw.policy_rng` because a live gateway started on its
    own (``testbed serve``) has a seed but no scenario to draw.
    """
    return RandomStreams(seed).python(RNG_STREAM)


@dataclass(frozen=True, slots=True)
class Draw:
    """Everything decided by ``(scenario, seed)`` before either plane runs anything."""

    scenario: Scenario
    seed: int
    topology: Topology
    streams: RandomStreams
    primary_regions: list[str]  # where clients are: regions with a primary replica (all if none)
    arrivals: workload.Arrivals
    horizon: float  # duration + drain: faults starting later are never injected
    schedule: list[Fault]

    def policy_rng(self) -> random.Random:
        """A fresh generator for the gateway policy (each call starts the stream over)."""
        return policy_rng(self.seed)


def draw(scenario: Scenario, seed: int | None = None) -> Draw:
    """Draw ``scenario`` under ``seed`` (the scenario's own when ``None``)."""
    seed = scenario.seed if seed is None else seed
    topology = Topology.from_spec(scenario.topology)
    streams = RandomStreams(seed)
    serving = {p.region for p in topology.replicas if p.tier == "primary"}
    primary = [r for r in topology.regions if r in serving] or topology.regions
    arrivals = workload.generate(scenario.workload, scenario.duration, primary, streams)
    horizon = scenario.duration + scenario.drain
    schedule = build_schedule(scenario.faults, topology, horizon, streams)
    return Draw(scenario, seed, topology, streams, primary, arrivals, horizon, schedule)
