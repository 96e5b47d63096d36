"""Prefix structure of generated workloads: system prompts, multi-turn chat, agent context.

Rules: a request's chain starts with one of its class's system prompts; a chat turn's chain
extends the chain of its conversation's previous turn (same leading ids, longer); an agent call's
prompt extends its session's conversation; prefix draws never move arrivals or drawn lengths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testbed.rng import RandomStreams
from testbed.spec import Scenario, WorkloadSpec
from testbed.workload import generate

AGENTS = Path(__file__).resolve().parents[1] / "faults" / "agent-adaptation-agent.yaml"


def workload(prefix: dict | None) -> WorkloadSpec:
    data = {
        "arrival": {"kind": "poisson", "rate": 50},
        "prompt_tokens": {"kind": "uniform", "low": 10, "high": 100},
        "output_tokens": {"kind": "uniform", "low": 5, "high": 50},
        "classes": [{"name": "a", "share": 1}, {"name": "b", "share": 1}],
    }
    if prefix is not None:
        data["prefix"] = prefix
    return WorkloadSpec.model_validate(data)


def test_system_prompts_are_shared_within_a_class_and_lengths_grow_by_them():
    plain = generate(workload(None), 100.0, ["p/r"], RandomStreams(1))
    shared = generate(workload({"system_prompts": {"count": 3, "tokens": 64}}), 100.0, ["p/r"], RandomStreams(1))
    assert np.array_equal(plain.time, shared.time)
    assert np.array_equal(shared.prompt_tokens, plain.prompt_tokens + 64)
    roots = {}
    for i in range(len(shared)):
        chain = list(shared.prefix.prefix(i).ids())
        assert len(chain) == 4  # 64 tokens of 16-token blocks
        roots.setdefault(int(shared.request_class[i]), set()).add(chain[0])
    assert all(len(r) == 3 for r in roots.values()) and not roots[0] & roots[1]


def test_a_chat_turn_extends_its_conversations_previous_turn():
    arrivals = generate(workload({"chat": {"turns": {"kind": "fixed", "value": 5}}}), 200.0, ["p/r"], RandomStreams(2))
    prefix = arrivals.prefix
    last: dict[int, tuple[int, list[int]]] = {}
    extended = 0
    for i in range(len(arrivals)):
        session, chain = int(prefix.session[i]), list(prefix.prefix(i).ids())
        prompt = int(arrivals.prompt_tokens[i])
        if session in last:
            before_prompt, before_chain = last[session]
            assert prompt > before_prompt and chain[: len(before_chain)] == before_chain
            extended += 1
        last[session] = (prompt, chain)
    assert extended > 0.6 * len(arrivals)  # four turns in five continue a conversation
    assert 0.15 < len(last) / len(arrivals) < 0.25


def test_agent_calls_extend_their_sessions_conversation():
    data = Scenario.from_yaml(AGENTS).model_dump(by_alias=True)
    plain = generate(WorkloadSpec.model_validate(data["workload"]), 120.0, ["p/r"], RandomStreams(3))
    data["workload"]["prefix"] = {"agent_context": True}
    grown = generate(WorkloadSpec.model_validate(data["workload"]), 120.0, ["p/r"], RandomStreams(3))
    plan, calls = grown.agents, grown.call_prefix
    session = plan.call_session()
    assert np.array_equal(plain.agents.start, plan.start)
    first = np.searchsorted(session, session, side="left") == np.arange(plan.calls)
    assert np.array_equal(plan.prompt_tokens[first], plain.agents.prompt_tokens[first])
    assert (plan.prompt_tokens[~first] > plain.agents.prompt_tokens[~first]).all()
    for i in np.flatnonzero(~first)[:50]:
        assert list(calls.prefix(i - 1).ids()) == list(calls.prefix(i).ids())[: len(calls.prefix(i - 1))]


def test_a_conversation_keeps_the_system_prompt_of_its_first_turn():
    prefix = {"system_prompts": {"count": 4, "tokens": 32}, "chat": {"turns": {"kind": "fixed", "value": 6}}}
    arrivals = generate(workload(prefix), 200.0, ["p/r"], RandomStreams(3))
    first_block: dict[int, int] = {}
    for i in range(len(arrivals)):
        chain = list(arrivals.prefix.prefix(i).ids())
        session = int(arrivals.prefix.session[i])
        assert first_block.setdefault(session, chain[0]) == chain[0]
    assert len(set(first_block.values())) == 8  # two classes of four prompts, all in use
