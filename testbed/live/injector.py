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

How overlapping faults compose (a node crash inside a region outage; two slowdowns) is the
simulator's own rule, because both read :class:`~testbed.faults.FaultState`: a replica is killed
when its first crash starts and restarted when its last one ends, a region cut likewise; the
hooks are re-sent with the state's speed and worst error rate whenever those change.
A fault the live stack cannot reproduce (memory pressure; packet loss; a network fault between
two regions, which has no path of its own in a one-gateway stack) raises :class:`LiveUnsupported` before
anything starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from testbed.faults import NETWORK_KINDS, Fault, FaultState, StateChange, walk
from testbed.topology import Topology


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


def _network_region(fault: Fault) -> str:
    assert fault.endpoints is not None
    a, b = fault.endpoints
    return b if a.startswith("clients:") else a


def plan(schedule: Sequence[Fault], topology: Topology) -> list[Action]:
    """The schedule as live actions, in the order to perform them."""
    check_supported(schedule, topology)
    state = FaultState(topology)
    return [action for change in walk(schedule, state) for action in actions(change)]


def actions(change: StateChange) -> list[Action]:
    """What the live stack does for one change of the fault state."""
    at, index, fault = change.at, change.index, change.fault
    if fault.kind in NETWORK_KINDS:
        verb = "toxic" if change.starting else "untoxic"
        return [Action(at, verb, _network_region(fault), {"kind": fault.kind, **fault.params}, index)]
    done: list[Action] = []
    for region, before, after in change.regions:  # a region-wide outage: the proxy cuts it
        if (before > 0) != (after > 0):
            done.append(Action(at, "cut" if after else "heal", region, {}, index))
    for replica, was, now in change.replicas:
        if (was.crashes > 0) != (now.crashes > 0):  # crashes of its own domain: the process dies
            done.append(Action(at, "kill" if now.crashes else "restart", replica, {}, index))
        if was.hung != now.hung:
            done.append(Action(at, "pause" if now.hung else "resume", replica, {}, index))
        if was.speeds != now.speeds:
            done.append(Action(at, "hooks", replica, {"slowdown": 1 / now.speed}, index))
        if was.errors != now.errors:
            rate, status = now.error
            done.append(Action(at, "hooks", replica, {"error_rate": rate, "error_status": float(status)}, index))
    return done


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
