"""An agent's turn as a sans-IO loop: which call to make next, on which pool, with what deadline.

A turn is a planned list of calls (stage by stage, tool-call repeats included) that must finish
within the turn's budget. Where the budget is acted on is the experiment
(:class:`testbed.spec.AgentSpec`):

* ``none`` — calls carry no deadline of their own; every stage runs on its own pool.
* ``gateway`` — the remaining budget travels with each call as its deadline, and the gateway
  cancels a call that overruns it. The gateway sees one call at a time, so cutting a late call
  off is all it can do.
* ``agent`` — the same propagation, and before each call the loop compares the remaining budget
  with what it expects the rest of the turn to take (its per-stage latency estimates): when the
  rest will not fit it first skips optional stages, then downgrades the current stage to its
  ``downgrade_pool`` (a smaller or fallback model).

The simulator and a live agent driver feed it the same events — :meth:`TurnLoop.next_call` when
the previous call ended, :meth:`TurnLoop.on_call_end` with its outcome — so the decisions are
the same code in both planes.
"""

from __future__ import annotations

from dataclasses import dataclass

ESTIMATE_SMOOTHING = 0.125  # weight of the newest observation (TCP's RTT estimator uses 1/8)
DEVIATION_SMOOTHING = 0.25  # ... and of its deviation (TCP: 1/4)
DEVIATIONS = 2.0  # plan with mean + this many deviations: a call's tail, not its average


@dataclass(frozen=True, slots=True)
class StagePolicy:
    """What the loop needs to know about a stage (a plain copy of the spec's fields)."""

    name: str
    pool: str
    slo: float
    optional: bool
    downgrade_pool: str | None


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call the turn would make if nothing were skipped: ``index`` is the driver's own key."""

    index: int
    stage: int  # index into the turn's stage policies


@dataclass(frozen=True, slots=True)
class Call:
    """The loop's decision: make call ``index`` of ``stage`` on ``pool``, due by ``deadline``."""

    index: int
    stage: int
    pool: str
    deadline: float | None  # None: no deadline propagated (adaptation "none")
    degraded: bool  # sent to the stage's downgrade pool because the budget was short


class LatencyEstimates:
    """The agent's running estimate of each (stage, pool) call latency, shared by its sessions.

    Jacobson's estimator (as TCP sizes its retransmission timeout): a smoothed mean and mean
    deviation, planning with mean + 2 deviations, because a turn is lost by a call's tail, not
    by its average. It starts from each stage's SLO — what the agent was told to expect — so an
    agent notices a slowed pool after a few calls, as a real one would.
    """

    def __init__(self, stages: list[StagePolicy]) -> None:
        self._prior = {s.name: s.slo for s in stages}
        self._mean: dict[tuple[str, str], float] = {}
        self._deviation: dict[tuple[str, str], float] = {}

    def get(self, stage: StagePolicy, pool: str) -> float:
        key = (stage.name, pool)
        return self._mean.get(key, self._prior[stage.name]) + DEVIATIONS * self._deviation.get(key, 0.0)

    def observe(self, stage: StagePolicy, pool: str, latency: float) -> None:
        key = (stage.name, pool)
        mean = self._mean.get(key, self._prior[stage.name])
        deviation = self._deviation.get(key, 0.0)
        self._deviation[key] = deviation + DEVIATION_SMOOTHING * (abs(latency - mean) - deviation)
        self._mean[key] = mean + ESTIMATE_SMOOTHING * (latency - mean)


class TurnLoop:
    """One turn of one session: its calls in order, the budget, and the adaptation placement."""

    def __init__(
        self,
        stages: list[StagePolicy],
        calls: list[PlannedCall],
        start: float,
        budget: float,
        adaptation: str,
        estimates: LatencyEstimates,
    ) -> None:
        self.stages = stages
        self.calls = calls
        self.deadline = start + budget
        self.adaptation = adaptation
        self.estimates = estimates
        self._next = 0
        self._skip_optional = False
        self._in_flight: dict[int, tuple[StagePolicy, str, float]] = {}  # index -> (stage, pool, sent at)
        self.failed = False
        self.skipped: list[int] = []  # planned calls the loop decided not to make

    def next_call(self, now: float) -> Call | None:
        """The next call to make, or None when the turn is over (done, or abandoned after a failure)."""
        while not self.failed and self._next < len(self.calls):
            planned = self.calls[self._next]
            self._next += 1
            stage = self.stages[planned.stage]
            pool, degraded = stage.pool, False
            if self.adaptation == "agent":
                if stage.optional and (self._skip_optional or not self._fits(now, planned, stage.pool)):
                    self._skip_optional = True
                    self.skipped.append(planned.index)
                    continue
                if stage.downgrade_pool is not None and not self._fits(now, planned, stage.pool):
                    pool, degraded = stage.downgrade_pool, True
            deadline = None if self.adaptation == "none" else self.deadline
            self._in_flight[planned.index] = (stage, pool, now)
            return Call(planned.index, planned.stage, pool, deadline, degraded)
        return None

    def on_call_end(self, index: int, ok: bool, now: float) -> None:
        """A call ended; a failed call abandons the turn (its answer was needed downstream)."""
        stage, pool, sent = self._in_flight.pop(index)
        if ok:
            self.estimates.observe(stage, pool, now - sent)
        else:
            self.failed = True

    def made(self) -> list[int]:
        """The planned calls actually sent so far (neither skipped nor left after a failure)."""
        skipped = set(self.skipped)
        return [p.index for p in self.calls[: self._next] if p.index not in skipped]

    def _fits(self, now: float, planned: PlannedCall, pool: str) -> bool:
        """Whether this call on ``pool`` and the rest of the turn's required calls fit the budget.

        Later optional calls are not counted: they would be skipped first.
        """
        expected = self.estimates.get(self.stages[planned.stage], pool)
        for later in self.calls[self._next :]:  # next_call has moved past ``planned`` already
            stage = self.stages[later.stage]
            if not stage.optional:
                expected += self.estimates.get(stage, stage.pool)
        return now + expected <= self.deadline
