"""Agent sessions in simulated time: turns of calls, each call a request through the gateway.

The plan (:mod:`testbed.agents`) fixes every session, turn and call before the run; the
:class:`~testbed.policy.agent.TurnLoop` decides, as answers come back, which planned calls are
made, on which pool and with what deadline. This module only carries that out: it starts
sessions at their planned times, issues calls through the run's ``issue`` callback, waits the
think time between turns, and tells the run when a planned call will never be made (skipped,
abandoned with its failed turn, or planned after the run's end), so the run knows when every
request has been accounted for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import simpy

from testbed.agents import AgentPlan
from testbed.policy.agent import Call, LatencyEstimates, TurnLoop

IssueCall = Callable[[int, int, Call], None]  # (session, call index, decision)


class SessionDriver:
    """Drives every planned session; ``first_rid`` maps call index ``i`` to request ``first_rid + i``."""

    def __init__(
        self,
        env: simpy.Environment,
        plan: AgentPlan,
        budget: float,
        adaptation: str,
        end_of_arrivals: float,
        first_rid: int,
        issue: IssueCall,
        dropped: Callable[[int], None],
    ) -> None:
        self.env = env
        self.plan = plan
        self.budget = budget
        self.adaptation = adaptation
        self.end_of_arrivals = end_of_arrivals
        self.first_rid = first_rid
        self.issue = issue
        self.dropped = dropped
        self.estimates = LatencyEstimates(plan.stages)
        self._loops: dict[int, tuple[int, int, TurnLoop]] = {}  # session -> (global turn, last turn, loop)
        self._session_of_call: dict[int, int] = {}
        self.degraded = np.zeros(plan.calls, dtype=bool)
        self.skipped = 0

    def start(self) -> simpy.Process:
        return self.env.process(self._start_sessions())

    def _start_sessions(self):
        env = self.env
        for session, at in enumerate(self.plan.start.tolist()):
            if at > env.now:
                yield env.timeout(at - env.now)
            self._begin_turn(session, int(self.plan.turn_offsets[session]))

    def _begin_turn(self, session: int, turn: int) -> None:
        last = int(self.plan.turn_offsets[session + 1]) - 1
        if self.env.now >= self.end_of_arrivals:
            self._drop_turns(turn, last)  # the run stops taking new work: the session ends here
            return
        loop = TurnLoop(
            self.plan.stages, self.plan.turn_calls(turn), self.env.now, self.budget, self.adaptation, self.estimates
        )
        self._loops[session] = (turn, last, loop)
        self._advance(session)

    def _advance(self, session: int) -> None:
        turn, last, loop = self._loops[session]
        call = loop.next_call(self.env.now)
        if call is not None:
            self.degraded[call.index] = call.degraded
            self._session_of_call[call.index] = session
            self.issue(session, self.first_rid + call.index, call)
            return
        # The turn is over: drop what it did not make, then think before the next one.
        made = set(loop.made())
        for planned in loop.calls:
            if planned.index not in made:
                self.dropped(self.first_rid + planned.index)
        self.skipped += len(loop.skipped)
        del self._loops[session]
        if turn < last:
            think = float(self.plan.think[turn + 1])
            self.env.timeout(think).callbacks.append(lambda _e: self._begin_turn(session, turn + 1))

    def on_call_end(self, rid: int, ok: bool, at: float) -> None:
        """Call ``rid`` ended; its answer reaches the agent at ``at`` (>= now)."""
        index = rid - self.first_rid
        session = self._session_of_call.pop(index)
        delay = max(0.0, at - self.env.now)
        self.env.timeout(delay).callbacks.append(lambda _e: self._answered(session, index, ok))

    def _answered(self, session: int, index: int, ok: bool) -> None:
        self._loops[session][2].on_call_end(index, ok, self.env.now)
        self._advance(session)

    def _drop_turns(self, first: int, last: int) -> None:
        lo, hi = int(self.plan.call_offsets[first]), int(self.plan.call_offsets[last + 1])
        for index in range(lo, hi):
            self.dropped(self.first_rid + index)
