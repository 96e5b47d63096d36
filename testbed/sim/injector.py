"""The simulation's fault injector: applies a schedule of :class:`~testbed.faults.Fault` records.

One SimPy process walks the schedule's start and end times in order. Faults may overlap on the
same replica (a node crash during a rack outage), so each replica counts its active faults of
each kind and is only repaired when the last one ends; speed and KV capacity take the product
and the minimum of what is active.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import simpy

from testbed.faults import Fault
from testbed.policy.batching import Sequence as Work
from testbed.sim.network import NetworkState
from testbed.sim.replica import SimReplica

CRASHES = frozenset({"accelerator_failure", "node_crash", "outage", "capacity_loss"})
# Crashes that take the machine (or its network) away: connections to it go unanswered until the
# connect timeout. An accelerator failure kills the serving process on a running host, whose
# kernel refuses connections at once.
HOST_DOWN = frozenset({"node_crash", "outage", "capacity_loss"})
NETWORK = frozenset({"partition", "latency", "packet_loss", "bandwidth"})


@dataclass(slots=True)
class ReplicaFaults:
    """The faults active on one replica."""

    kv_capacity: int
    down: int = 0
    host_down: int = 0
    hung: int = 0
    speeds: list[float] = field(default_factory=list)
    kv_fractions: list[float] = field(default_factory=list)
    errors: list[tuple[float, int]] = field(default_factory=list)  # (rate, status)

    @property
    def error_rate(self) -> float:
        return max((rate for rate, _ in self.errors), default=0.0)


class FaultInjector:
    """Applies faults to replicas and the network at their scheduled times."""

    def __init__(
        self,
        env: simpy.Environment,
        schedule: Sequence[Fault],
        replicas: Sequence[SimReplica],
        network: NetworkState,
        on_lost_work: Callable[[Work, float], None],
    ) -> None:
        self.env = env
        self.schedule = schedule
        self.replicas = replicas
        self.network = network
        self.on_lost_work = on_lost_work
        self.state = [ReplicaFaults(getattr(r.batcher, "kv_capacity", 0)) for r in replicas]

    def run(self) -> Iterator[simpy.Event]:
        transitions = sorted(
            [(f.start, 1, i) for i, f in enumerate(self.schedule)]
            + [(f.end, 0, i) for i, f in enumerate(self.schedule) if f.end != float("inf")]
        )  # at equal times, repairs (0) before new faults (1)
        for at, starting, index in transitions:
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            fault = self.schedule[index]
            if starting:
                self._apply(fault, +1)
            else:
                self._apply(fault, -1)

    def _apply(self, fault: Fault, sign: int) -> None:
        if fault.kind == "stockout":
            return  # no effect on running replicas; the elastic fleet refuses new grants (sim/elastic.py)
        if fault.kind in NETWORK:
            (self.network.add if sign > 0 else self.network.remove)(fault)
            return
        for index in fault.replicas:
            replica, state = self.replicas[index], self.state[index]
            if fault.kind in CRASHES:
                self._crash(replica, state, sign, fault.kind in HOST_DOWN)
            elif fault.kind == "node_hang":
                state.hung += sign
                if state.hung:
                    replica.hang()
                else:
                    replica.resume()
            elif fault.kind == "slowdown":
                _toggle(state.speeds, fault.params["speed"], sign)
                speed = 1.0
                for s in state.speeds:
                    speed *= s
                replica.set_speed(speed)
            elif fault.kind == "memory_pressure":
                _toggle(state.kv_fractions, fault.params["kv_fraction"], sign)
                fraction = min(state.kv_fractions, default=1.0)
                replica.batcher.set_kv_capacity(int(state.kv_capacity * fraction))
            elif fault.kind == "error_injection":
                _toggle(state.errors, (fault.params["rate"], int(fault.params["status"])), sign)
            else:
                raise ValueError(f"the simulator has no effect for fault kind {fault.kind!r}")

    def _crash(self, replica: SimReplica, state: ReplicaFaults, sign: int, host: bool) -> None:
        state.down += sign
        state.host_down += sign if host else 0
        if sign > 0 and state.down == 1:
            now = self.env.now
            for work in replica.crash(refusing=not state.host_down):
                self.on_lost_work(work, now)
        elif sign < 0 and state.down == 0:
            replica.restart()
        elif state.down:
            replica.refusing = not state.host_down  # the host went down too, or came back


def _toggle(active: list, value: object, sign: int) -> None:
    if sign > 0:
        active.append(value)
    else:
        active.remove(value)
