"""The live fault injector: the simulator's fault schedule, turned into actions on real processes.

Faults are data: :func:`testbed.faults.build_schedule` gives the live run exactly the schedule the
simulation injects (same seed, same failure-process draws). :func:`plan` translates it, without any
I/O, into a time-ordered list of :class:`Action` records; :class:`Injector` carries them out on a
live stack at their wall-clock times. Keeping the translation pure makes it testable without a
single process and makes the mapping explicit:

=====================================================  ===========================================
fault                                                  live action
=====================================================  ===========================================
accelerator_failure, node_crash, capacity_loss,        SIGKILL the replica processes (``kill``),
outage of a zone/rack/node/device                      restart them at repair
outage of a region or provider                         the chaos proxy cuts the region (``cut``)
node_hang                                              SIGSTOP (``pause``), SIGCONT at repair
slowdown                                               replica hook ``slowdown`` (1 / speed)
error_injection                                        replica hooks ``error_rate``/``error_status``
partition / latency / bandwidth                        proxy toxics on the replicas of the region
between ``clients:R`` and ``R``                        (the live stack has one gateway, so every
                                                       client's path to R carries them)
=====================================================  ===========================================

Faults overlap (a node crash inside a region outage), so, as in the simulator, each replica and
region counts what is active: a replica is killed when its first crash starts and restarted when
its last one ends; slowdowns multiply and error rates take the maximum, re-sent on every change.
A fault the live stack cannot reproduce (memory pressure; packet loss; a network fault between
two regions, which has no path of its own in a one-gateway stack) raises :class:`LiveUnsupported` before
anything starts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from testbed.faults import NETWORK_KINDS, Fault
from testbed.topology import Topology

CRASH_KINDS = frozenset({"accelerator_failure", "node_crash", "capacity_loss"})
REGION_LEVELS = frozenset({"fleet", "provider", "region"})


class LiveUnsupported(ValueError):
    """A fault of the schedule has no live counterpart; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Action:
    """One thing to do to the live stack at ``at`` seconds from the start of the run.

    ``verb`` is kill | restart | pause | resume | cut | heal | hooks | toxic | untoxic; ``target``
    is a replica index (kill..hooks) or a region path (cut, heal, toxic, untoxic).
    """

    at: float
    verb: str
    target: int | str
    params: dict[str, float] = field(default_factory=dict, hash=False)
    fault: int = -1  # index of the fault in the schedule that caused it


def _transitions(schedule: Sequence[Fault]) -> list[tuple[float, int, int]]:
    """(time, +1 start / -1 end, fault index), repairs before starts at equal times (as the sim)."""
    events = [(f.start, +1, i) for i, f in enumerate(schedule)]
    events += [(f.end, -1, i) for i, f in enumerate(schedule) if not math.isinf(f.end)]
    return sorted(events, key=lambda e: (e[0], e[1], e[2]))


def check_supported(schedule: Sequence[Fault], topology: Topology) -> None:
    """Raise :class:`LiveUnsupported` for the first fault the live stack cannot reproduce."""
    for i, fault in enumerate(schedule):
        if fault.kind == "memory_pressure":
            raise LiveUnsupported(
                f"faults.{i} (memory_pressure on {fault.target}): the live engine has no KV-cache limit to squeeze; "
                "drop this fault for live replay"
            )
        if fault.kind == "packet_loss":
            raise LiveUnsupported(
                f"faults.{i} (packet_loss on {fault.target}): the chaos proxy has no lossy toxic; "
                "use a partition or added latency for live replay"
            )
        if fault.kind in NETWORK_KINDS:
            assert fault.endpoints is not None
            if not any(end.startswith("clients:") for end in fault.endpoints):
                raise LiveUnsupported(
                    f"faults.{i} ({fault.kind} between {fault.endpoints[0]} and {fault.endpoints[1]}): the live stack "
                    "has one gateway and no path between regions; use between: ['clients:<region>', <region>]"
                )


def _toggle(active: list, value: object, sign: int) -> None:
    if sign > 0:
        active.append(value)
    else:
        active.remove(value)


def _network_region(fault: Fault) -> str:
    assert fault.endpoints is not None
    a, b = fault.endpoints
    return b if a.startswith("clients:") else a


def plan(schedule: Sequence[Fault], topology: Topology) -> list[Action]:
    """The schedule as live actions, in the order to perform them."""
    check_supported(schedule, topology)
    down: dict[int, int] = {}
    hung: dict[int, int] = {}
    cut: dict[str, int] = {}
    speeds: dict[int, list[float]] = {}
    errors: dict[int, list[tuple[float, int]]] = {}
    actions: list[Action] = []

    def count(counter: dict, key: Any, sign: int, on: str, off: str, at: float, index: int) -> None:
        before = counter.get(key, 0)
        counter[key] = before + sign
        if before == 0 and sign > 0:
            actions.append(Action(at, on, key, {}, index))
        elif before == 1 and sign < 0:
            actions.append(Action(at, off, key, {}, index))

    for at, sign, index in _transitions(schedule):
        fault = schedule[index]
        kind = fault.kind
        if kind in NETWORK_KINDS:
            verb = "toxic" if sign > 0 else "untoxic"
            actions.append(Action(at, verb, _network_region(fault), {"kind": kind, **fault.params}, index))
        elif kind == "outage" and topology.level(fault.target) in REGION_LEVELS:
            regions = {topology.replicas[r].region for r in fault.replicas}
            for region in sorted(regions):
                count(cut, region, sign, "cut", "heal", at, index)
        elif kind in CRASH_KINDS or kind == "outage":
            for replica in fault.replicas:
                count(down, replica, sign, "kill", "restart", at, index)
        elif kind == "node_hang":
            for replica in fault.replicas:
                count(hung, replica, sign, "pause", "resume", at, index)
        elif kind == "slowdown":
            for replica in fault.replicas:
                active = speeds.setdefault(replica, [])
                _toggle(active, fault.params["speed"], sign)
                actions.append(Action(at, "hooks", replica, {"slowdown": 1 / math.prod(active)}, index))
        elif kind == "error_injection":
            for replica in fault.replicas:
                active_errors = errors.setdefault(replica, [])
                _toggle(active_errors, (fault.params["rate"], int(fault.params["status"])), sign)
                rate, status = max(active_errors, default=(0.0, 500))
                actions.append(Action(at, "hooks", replica, {"error_rate": rate, "error_status": float(status)}, index))
        else:
            raise LiveUnsupported(f"faults.{index} ({kind}): no live action for this fault kind")
    return actions


class LiveTarget(Protocol):
    """What the injector needs from a live stack (``testbed.live.stack.LiveStack`` adapts to it)."""

    def perform(self, action: Action) -> Awaitable[None]: ...


class Injector:
    """Performs planned actions at their times, measured from ``started`` on ``clock``.

    A failing action is recorded (``failures``) rather than ending the run: the stack may refuse
    to restart a replica the run has already torn down, and the records must still be written.
    """

    def __init__(
        self,
        target: LiveTarget,
        actions: Sequence[Action],
        started: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.actions = list(actions)
        self.started = started
        self.clock = clock
        self.done: list[tuple[float, Action]] = []  # (run time it was performed, action)
        self.failures: list[tuple[Action, str]] = []

        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Perform no further action; one under way finishes (a half-done restart would leak a process)."""
        self._stopping.set()

    async def run(self) -> None:
        for action in self.actions:
            delay = self.started + action.at - self.clock()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass
            if self._stopping.is_set():
                return
            try:
                await self.target.perform(action)
            except Exception as exc:  # noqa: BLE001 - one failed action must not abort the replay
                self.failures.append((action, f"{type(exc).__name__}: {exc}"))
            else:
                self.done.append((self.clock() - self.started, action))
