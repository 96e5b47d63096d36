"""Agent sessions: the plan, the turn loop's decisions, pools, records and per-stage verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testbed.agents import plan_sessions
from testbed.policy.agent import LatencyEstimates, PlannedCall, StagePolicy, TurnLoop
from testbed.records.schema import turn_table
from testbed.rng import RandomStreams
from testbed.sim import simulate
from testbed.spec import AgentSpec, Scenario, SpecError, validate_spec

FAULTS = Path(__file__).resolve().parents[1] / "faults"
GATEWAY, AGENT = FAULTS / "agent-adaptation-gateway.yaml", FAULTS / "agent-adaptation-agent.yaml"

STAGES = [
    StagePolicy("nlu", "small", 0.3, optional=False, downgrade_pool=None),
    StagePolicy("memory", "default", 2.0, optional=False, downgrade_pool="small"),
    StagePolicy("response", "default", 6.0, optional=False, downgrade_pool=None),
    StagePolicy("filter", "default", 3.0, optional=True, downgrade_pool=None),
]
TURN = [PlannedCall(i, i) for i in range(4)]


def loop(adaptation: str, budget: float = 12.0, start: float = 0.0) -> TurnLoop:
    return TurnLoop(STAGES, TURN, start, budget, adaptation, LatencyEstimates(STAGES))


def run_turn(turn: TurnLoop, latencies: list[float]) -> list[tuple[str, str]]:
    """Drive ``turn`` with each call taking the next latency; returns (stage, pool) per call made."""
    now, made = 0.0, []
    for latency in latencies:
        call = turn.next_call(now)
        if call is None:
            break
        made.append((STAGES[call.stage].name, call.pool))
        now += latency
        turn.on_call_end(call.index, True, now)
    assert turn.next_call(now) is None
    return made


def test_without_adaptation_calls_carry_no_deadline_and_every_stage_runs():
    turn = loop("none")
    call = turn.next_call(0.0)
    assert call is not None and call.deadline is None
    turn.on_call_end(call.index, True, 0.2)
    assert run_turn(turn, [1, 1, 1]) == [("memory", "default"), ("response", "default"), ("filter", "default")]


def test_gateway_placement_propagates_the_turn_deadline_but_never_changes_the_plan():
    turn = loop("gateway", budget=5.0, start=100.0)
    call = turn.next_call(100.0)
    assert call is not None and call.deadline == 105.0
    turn.on_call_end(call.index, True, 104.0)  # the budget is nearly gone: still no adaptation
    assert [STAGES[c].name for c in (turn.next_call(104.0).stage,)] == ["memory"]


def test_agent_placement_keeps_the_plan_when_the_budget_allows():
    made = run_turn(loop("agent", budget=20.0), [0.2, 1.0, 3.0, 1.0])
    assert made == [("nlu", "small"), ("memory", "default"), ("response", "default"), ("filter", "default")]


def test_a_short_budget_skips_the_optional_stage_then_downgrades():
    # 12 s budget. NLU took 5 s: memory (2) + response (6) need 8 s of the 7 left, so memory goes
    # to the small pool. Response then took 4 s: at 9.5 s the filter (3 s) no longer fits.
    turn = loop("agent", budget=12.0)
    made = run_turn(turn, [5.0, 0.5, 4.0])
    assert made == [("nlu", "small"), ("memory", "small"), ("response", "default")]
    assert turn.skipped == [3]  # the filter
    assert turn.made() == [0, 1, 2]


def test_a_failed_call_abandons_the_rest_of_the_turn():
    turn = loop("agent")
    call = turn.next_call(0.0)
    turn.on_call_end(call.index, False, 0.1)
    assert turn.next_call(0.1) is None and turn.made() == [0]


def test_estimates_plan_for_the_tail_and_follow_what_they_see():
    estimates = LatencyEstimates(STAGES)
    memory = STAGES[1]
    assert estimates.get(memory, "default") == 2.0  # the SLO until something is seen
    for latency in [4.0] * 40:
        estimates.observe(memory, "default", latency)
    assert estimates.get(memory, "default") == pytest.approx(4.0, rel=0.01)
    estimates.observe(memory, "default", 8.0)
    assert estimates.get(memory, "default") > 4.5 + 2 * 0.9  # a jump widens the deviation
    assert estimates.get(memory, "small") == 2.0  # per pool


def test_the_plan_is_deterministic_and_shaped_like_the_spec():
    spec = Scenario.from_yaml(GATEWAY).workload.agents
    assert spec is not None
    starts = np.array([0.0, 1.0, 2.5])
    labels = np.zeros(3, dtype=np.int16)

    def plan(seed: int):
        return plan_sessions(spec, starts, labels, labels, labels, RandomStreams(seed))

    a, b = plan(1), plan(1)
    assert np.array_equal(a.stage, b.stage) and np.array_equal(a.think, b.think)
    assert a.sessions == 3 and np.all(np.diff(a.turn_offsets) >= 2)
    assert np.all(a.think[a.turn_offsets[:-1]] == 0)  # a session's first turn starts at once
    for turn in range(len(a.think)):
        stages = a.stage[a.call_offsets[turn] : a.call_offsets[turn + 1]].tolist()
        assert stages == sorted(stages) and set(stages) == {0, 1, 2, 3}  # every stage, in order
    assert not np.array_equal(plan(2).stage, a.stage) or not np.array_equal(plan(2).think, a.think)


@pytest.fixture(scope="module")
def twins():
    return simulate(Scenario.from_yaml(GATEWAY)), simulate(Scenario.from_yaml(AGENT))


def test_both_placements_face_the_same_sessions(twins):
    first_calls = [
        r.requests[(r.requests["turn"] == 0) & (r.requests["stage"] == "nlu")].groupby("session_id")["arrival"].min()
        for r in twins
    ]
    assert first_calls[0].equals(first_calls[1])
    singles = [r.requests.loc[r.requests["session_id"] < 0, "arrival"].to_numpy() for r in twins]
    assert np.array_equal(singles[0], singles[1])


def test_records_carry_session_turn_and_stage_and_every_call_ends(twins):
    for result in twins:
        calls = result.requests[result.requests["session_id"] >= 0]
        assert set(calls["stage"].astype(str)) == {"nlu", "memory", "response", "filter"}
        assert (result.requests.loc[result.requests["session_id"] < 0, "stage"].astype(str) == "").all()
        assert not (result.requests["status"] == "pending").any()
        assert (calls["turn"] >= 0).all()


def test_stages_run_on_their_pools(twins):
    gateway, agent = twins
    small = {8, 9, 10, 11}  # agent-region: 8 A100 replicas, then 4 L4s in pool "small"
    for result in twins:
        served = result.requests[result.requests["status"] == "ok"]
        nlu = served[served["stage"] == "nlu"]
        assert set(nlu["replica"]) <= small
        response = served[served["stage"] == "response"]
        assert set(response["replica"]) <= set(range(8))
    degraded = agent.requests[agent.requests["degraded"]]
    assert len(degraded) > 0 and set(degraded["stage"].astype(str)) == {"memory"}
    assert set(degraded.loc[degraded["status"] == "ok", "replica"]) <= small
    assert not gateway.requests["degraded"].any()


def test_adaptation_in_the_agent_loop_saves_turns_the_gateway_loses(twins):
    gateway, agent = twins
    turns = {name: turn_table(r.requests) for name, r in zip(("gateway", "agent"), twins)}
    assert turns["agent"]["ok"].mean() > turns["gateway"]["ok"].mean() + 0.03
    assert agent.stats["agent_calls_skipped"] > 0 and gateway.stats["agent_calls_skipped"] == 0
    verdicts = {r.scenario.name: {v.objective: v.passed for v in r.sla} for r in twins}
    assert verdicts["agent-adaptation-agent"]["turn_availability"]
    assert not verdicts["agent-adaptation-gateway"]["turn_availability"]


def test_the_twins_differ_only_in_where_adaptation_happens():
    gateway, agent = Scenario.from_yaml(GATEWAY), Scenario.from_yaml(AGENT)
    a, b = gateway.model_dump(), agent.model_dump()
    assert a["workload"]["agents"].pop("adaptation") == "gateway"
    assert b["workload"]["agents"].pop("adaptation") == "agent"
    a.pop("name"), b.pop("name")
    assert a == b


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["workload"]["agents"]["stages"][0].update(pool="tiny"), "pool 'tiny' is not a pool of the topology"),
        (lambda d: d["sla"].append({"metric": "e2e", "percentile": 95, "max": 1, "stage": "plan"}), "unknown stage 'plan'"),
        (lambda d: d["workload"].pop("agents"), "needs workload.agents"),
        (lambda d: d["sla"].append({"metric": "turn_latency", "percentile": 95, "max": 1, "stage": "nlu"}), "cannot be restricted to a stage"),
        (lambda d: d["workload"]["agents"].update(share=0), "greater than 0"),
    ],
)
def test_bad_agent_specs_name_what_is_wrong(change, message):
    data = Scenario.from_yaml(GATEWAY).model_dump(mode="json", by_alias=True, exclude_defaults=True)
    change(data)
    with pytest.raises(SpecError, match=message):
        validate_spec(data, Scenario, source="agent.yaml")


def test_agent_spec_needs_stages():
    with pytest.raises(SpecError, match="stages"):
        validate_spec({"share": 0.5, "turns": {"kind": "fixed", "value": 2}, "think_time": "1s", "turn_budget": "5s", "stages": []}, AgentSpec, source="a.yaml")
