"""Agent sessions drawn up front: every session, turn and call they would make.

A session is several turns; a turn runs the agent's stages in order (NLU → memory → response →
filter, say), a stage repeating with its ``repeat_probability`` like a tool-call loop. All of it —
how many turns, think times, repeats, every call's lengths — is drawn here from the named stream
``workload.agents`` before the run starts. What the run decides (skipping an optional stage,
downgrading one, abandoning a failed turn) only chooses which planned calls are made, so two
adaptation placements on the same seed face exactly the same sessions: common random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.lengths import sample_lengths
from testbed.policy.agent import PlannedCall, StagePolicy
from testbed.rng import RandomStreams
from testbed.spec import AgentSpec

# Stream names: one per kind of draw, so changing e.g. turn counts does not move call lengths.
SESSIONS = "workload.agents"
TURNS = "workload.agents.turns"
CALLS = "workload.agents.calls"


@dataclass(eq=False)
class AgentPlan:
    """Columnar plan: sessions → turns (``turn_offsets``) → calls (``call_offsets``)."""

    start: np.ndarray  # float64 per session: when its first turn begins
    priority: np.ndarray  # int16 per session
    request_class: np.ndarray  # int16 per session
    client_region: np.ndarray  # int16 per session
    turn_offsets: np.ndarray  # int64, len sessions + 1: session s has turns [t[s], t[s+1])
    think: np.ndarray  # float64 per turn: pause after the previous turn's answer (0 for a first turn)
    call_offsets: np.ndarray  # int64, len turns + 1: turn t has calls [c[t], c[t+1])
    stage: np.ndarray  # int16 per call: index into ``stages``
    prompt_tokens: np.ndarray  # int32 per call
    output_tokens: np.ndarray  # int32 per call
    stages: list[StagePolicy]

    @property
    def sessions(self) -> int:
        return len(self.start)

    @property
    def calls(self) -> int:
        return len(self.stage)

    def call_session(self) -> np.ndarray:
        """Session of each call (int64)."""
        turn_session = np.repeat(np.arange(self.sessions, dtype=np.int64), np.diff(self.turn_offsets))
        return turn_session[self.call_turn()]

    def call_turn(self) -> np.ndarray:
        """Global turn of each call."""
        return np.repeat(np.arange(len(self.think), dtype=np.int64), np.diff(self.call_offsets))

    def call_turn_number(self) -> np.ndarray:
        """Each call's turn counted within its session (0 for a session's first turn), int32."""
        turn = self.call_turn()
        first_turn_of_session = np.repeat(self.turn_offsets[:-1], np.diff(self.turn_offsets))
        return (turn - first_turn_of_session[turn]).astype(np.int32)

    def turn_calls(self, turn: int) -> list[PlannedCall]:
        """The planned calls of global turn ``turn``, keyed by their global call index."""
        lo, hi = int(self.call_offsets[turn]), int(self.call_offsets[turn + 1])
        return [PlannedCall(i, int(s)) for i, s in zip(range(lo, hi), self.stage[lo:hi].tolist())]


def plan_sessions(
    spec: AgentSpec,
    start: np.ndarray,
    priority: np.ndarray,
    request_class: np.ndarray,
    client_region: np.ndarray,
    streams: RandomStreams,
) -> AgentPlan:
    """Plan the sessions that start at ``start`` (with their class and client region)."""
    n = len(start)
    turns_rng, calls_rng = streams.numpy(TURNS), streams.numpy(CALLS)
    turns = sample_lengths(spec.turns, n, turns_rng).astype(np.int64)
    turn_offsets = np.concatenate([[0], np.cumsum(turns)])
    total_turns = int(turn_offsets[-1])
    think = turns_rng.exponential(spec.think_time, total_turns) if spec.think_time > 0 else np.zeros(total_turns)
    think[turn_offsets[:-1]] = 0.0  # a session's first turn starts when the session does
    stage_index: list[int] = []
    call_offsets = [0]
    for _ in range(total_turns):
        for k, stage in enumerate(spec.stages):
            repeats = 0
            while repeats < stage.max_repeats and calls_rng.random() < stage.repeat_probability:
                repeats += 1
            stage_index.extend([k] * (1 + repeats))
        call_offsets.append(len(stage_index))
    stage = np.asarray(stage_index, dtype=np.int16)
    prompt = np.zeros(len(stage), dtype=np.int32)
    output = np.zeros(len(stage), dtype=np.int32)
    for k, stage_spec in enumerate(spec.stages):
        rows = np.flatnonzero(stage == k)
        prompt[rows] = sample_lengths(stage_spec.prompt_tokens, len(rows), calls_rng)
        output[rows] = sample_lengths(stage_spec.output_tokens, len(rows), calls_rng)
    policies = [StagePolicy(s.name, s.pool, s.slo, s.optional, s.downgrade_pool) for s in spec.stages]
    return AgentPlan(
        start=start,
        priority=priority,
        request_class=request_class,
        client_region=client_region,
        turn_offsets=turn_offsets,
        think=think,
        call_offsets=np.asarray(call_offsets, dtype=np.int64),
        stage=stage,
        prompt_tokens=prompt,
        output_tokens=output,
        stages=policies,
    )
