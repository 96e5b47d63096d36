"""What a live replay tells its caller while it runs: faults as they fire and are repaired, counters,
and the host's load.

A live run lasts as long as its scenario, in wall-clock time; without a word for a minute it looks
hung. :func:`testbed.live.replay.run_live` gives its ``on_event`` callback two kinds of event and
prints nothing itself (the CLI decides, ``--quiet`` silences them):

* :class:`FaultEvent` — an injector action was carried out (or failed): which fault of the
  schedule, on what, at which run time, and whether it fired the fault or repaired it;
* :class:`Tally` — every :data:`TALLY_EVERY` seconds, the client's counts: requests sent,
  answered ok, failed, still in flight.

The host's load matters to reading a live verdict: on a shared machine replicas compete for cores
the scenario assumed were theirs, so latencies grow and a verdict the simulation passes may fail.
:class:`LoadWatch` samples :func:`os.getloadavg` at the start, at every tally and at the end and
puts the figures in the run's stats; :func:`load_hint` turns them into one line when the 1-minute
load exceeded the cores.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.faults import Fault
from testbed.live.injector import Action, LiveTarget

TALLY_EVERY = 5.0  # seconds between counter lines
REPAIRS = ("restart", "resume", "heal", "untoxic")


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """An injector action done at ``at`` run seconds; ``error`` is why it failed, if it did."""

    at: float
    verb: str
    target: str  # the replica's name or the region
    fault: str  # "node_crash on local/east/z/host/node-0"
    repair: bool
    error: str | None = None

    def describe(self) -> str:
        what = "repaired" if self.repair else "fired"
        line = f"{self.at:7.1f}s  fault {what}: {self.fault} ({self.verb} {self.target})"
        return line + (f" FAILED: {self.error}" if self.error else "")


@dataclass(frozen=True, slots=True)
class Tally:
    """The client's counts at ``at`` run seconds."""

    at: float
    sent: int
    ok: int
    failed: int

    @property
    def in_flight(self) -> int:
        return self.sent - self.ok - self.failed

    def describe(self) -> str:
        return f"{self.at:7.1f}s  sent {self.sent:,}  ok {self.ok:,}  failed {self.failed:,}  in flight {self.in_flight:,}"


LiveEvent = FaultEvent | Tally
EventCallback = Callable[[LiveEvent], None]


class Counters:
    """What the client has sent and heard back; bumped by the senders on the replay's loop."""

    def __init__(self) -> None:
        self.sent = self.ok = self.failed = 0

    def tally(self, at: float) -> Tally:
        return Tally(at, self.sent, self.ok, self.failed)


def is_repair(action: Action) -> bool:
    """A repair undoes a fault: a restart, a resume, a heal, or hooks set back to neutral."""
    if action.verb in REPAIRS:
        return True
    return action.verb == "hooks" and action.params.get("slowdown", 1.0) == 1.0 and not action.params.get("error_rate", 0.0)


class ReportingTarget:
    """Wraps the injector's target: performs each action, then reports it (failed or not)."""

    def __init__(self, target: LiveTarget, schedule: Sequence[Fault], names: Sequence[str], started: float, emit: EventCallback) -> None:
        self.target, self.schedule, self.names, self.started, self.emit = target, schedule, names, started, emit

    async def perform(self, action: Action) -> None:
        error = None
        try:
            await self.target.perform(action)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.emit(self._event(action, error))

    def _event(self, action: Action, error: str | None) -> FaultEvent:
        target = self.names[action.target] if isinstance(action.target, int) else action.target
        fault = self.schedule[action.fault] if 0 <= action.fault < len(self.schedule) else None
        what = f"{fault.kind} on {fault.target}" if fault is not None else action.verb
        return FaultEvent(round(time.monotonic() - self.started, 3), action.verb, target, what, is_repair(action), error)


class LoadWatch:
    """The host's load average over a run: at its start, its highest 1-minute figure, at its end."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self.start = os.getloadavg()
        self.peak = self.start[0]
        self.end = self.start

    def sample(self) -> None:
        self.end = os.getloadavg()
        self.peak = max(self.peak, self.end[0])

    def stats(self) -> dict[str, Any]:
        self.sample()
        return {
            "host_cores": self.cores,
            "host_load_start": [round(v, 2) for v in self.start],
            "host_load_end": [round(v, 2) for v in self.end],
            "host_load_peak_1m": round(self.peak, 2),
        }


async def report_every(counters: Counters, load: LoadWatch, started: float, emit: EventCallback, period: float = TALLY_EVERY) -> None:
    """Emit a :class:`Tally` and sample the load every ``period`` seconds until cancelled."""
    while True:
        await asyncio.sleep(period)
        load.sample()
        emit(counters.tally(round(time.monotonic() - started, 3)))


def load_hint(stats: dict[str, Any], live_passed: bool, reference_passed: bool | None) -> str | None:
    """One line when the host was overloaded and the live verdict may owe something to it.

    ``reference_passed`` is the simulation's verdict (``--compare``); without one, a failed live
    run on a loaded host gets the hint. Nothing when the load stayed within the cores.
    """
    peak, cores = stats.get("host_load_peak_1m"), stats.get("host_cores")
    if peak is None or cores is None or peak <= cores:
        return None
    if reference_passed is None:
        if live_passed:
            return None
        differs = "the live run failed"
    elif reference_passed != live_passed:
        differs = f"the live verdict ({'pass' if live_passed else 'fail'}) differs from the simulated one ({'pass' if reference_passed else 'fail'})"
    else:
        return None
    return (
        f"hint: {differs} while the host was loaded — 1-minute load average peaked at {peak:g} on {cores} cores "
        "(start {0[0]:g}, end {1[0]:g}); replicas shared the CPU with other work, which slows them".format(
            stats["host_load_start"], stats["host_load_end"]
        )
    )
