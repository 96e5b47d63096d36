"""The simulation's fault injector: the schedule's state changes, applied to simulated replicas.

What faults amount to — counting overlaps, repairs before starts, slowdowns multiplying — is
decided by :class:`~testbed.faults.FaultState`, which the live plan reads too. This module only
carries each change out in SimPy time: a replica that goes down crashes (its work is lost), one
that comes back restarts, a hang freezes it, and speed and KV capacity follow the state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import simpy

from testbed.faults import NETWORK_KINDS, Fault, FaultState, ReplicaCondition, StateChange, transitions
from testbed.policy.batching import Sequence as Work
from testbed.sim.network import NetworkState
from testbed.sim.replica import SimReplica
from testbed.topology import Topology


class FaultInjector:
    """Applies faults to replicas and the network at their scheduled times."""

    def __init__(
        self,
        env: simpy.Environment,
        schedule: Sequence[Fault],
        topology: Topology,
        replicas: Sequence[SimReplica],
        network: NetworkState,
        on_lost_work: Callable[[Work, float], None],
    ) -> None:
        self.env = env
        self.schedule = schedule
        self.replicas = replicas
        self.network = network
        self.on_lost_work = on_lost_work
        self.state = FaultState(topology)
        self.kv_capacity = [getattr(r.batcher, "kv_capacity", 0) for r in replicas]

    def run(self) -> Iterator[simpy.Event]:
        # The state changes when its time comes, not when the change is planned: the engine reads
        # it (error rates) between transitions.
        for at, sign, index in transitions(self.schedule):
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            self.apply(self.state.apply(self.schedule[index], sign > 0, at, index))

    def apply(self, change: StateChange) -> None:
        """Carry one state change out on the simulated fleet and network."""
        if change.fault.kind in NETWORK_KINDS:
            (self.network.add if change.starting else self.network.remove)(change.fault)
            return
        for index, before, after in change.replicas:
            self._apply(self.replicas[index], index, before, after)

    def _apply(self, replica: SimReplica, index: int, before: ReplicaCondition, after: ReplicaCondition) -> None:
        if after.down and not before.down:
            now = self.env.now
            for work in replica.crash(refusing=after.refusing):
                self.on_lost_work(work, now)
        elif before.down and not after.down:
            replica.restart()
        elif after.down:
            replica.refusing = after.refusing  # the host went down too, or came back
        if after.hung != before.hung:
            if after.hung:
                replica.hang()
            else:
                replica.resume()
        if after.speeds != before.speeds:
            replica.set_speed(after.speed)
        if after.errors != before.errors:
            replica.error_rate = after.error_rate
        if after.kv_fractions != before.kv_fractions:
            replica.batcher.set_kv_capacity(int(self.kv_capacity[index] * after.kv_fraction))
