"""Live prefix structure without processes: replay's prompts share what the draw's chains share,
and the gateway's chains are the replicas' own block names.

The reference for the prompts is the simulated cache itself: the same unbounded
:class:`PrefixCache` is fed once with the draw's chains (what the simulator does) and once with
the hash chains of the live prompts' tokens (what a replica's cache computes), request after
request, and must find the same cached tokens for every one of them.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from testbed.draw import draw
from testbed.live.openai_schema import ChatCompletionRequest, CompletionRequest
from testbed.live.prompt_chain import PromptChains, chain_of, user_session
from testbed.live.prompts import independent_prompts, session_users, structured_prompts
from testbed.live.replay import prepare
from testbed.policy.prefix_cache import PrefixCache, chain_hashes
from testbed.spec import Scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "faults" / "live-prefix-cache.yaml"


def cached_per_request(chains, lengths) -> list[int]:
    cache = PrefixCache(0, 16)
    cache.capacity_tokens = 1 << 60  # unbounded
    found = []
    for chain, length in zip(chains, lengths):
        cached, held = cache.acquire(chain, length)
        cache.release(chain, held)
        found.append(cached)
    return found


def test_replayed_prompts_share_exactly_what_the_simulated_chains_share():
    replay = prepare(Scenario.from_yaml(SCENARIO))
    arrivals = replay.arrivals
    lengths = arrivals.prompt_tokens.tolist()
    assert [len(p) for p in replay.prompts] == lengths
    simulated = cached_per_request([arrivals.prefix.prefix(i) for i in range(len(arrivals))], lengths)
    live = cached_per_request([chain_of(p, 16) for p in replay.prompts], lengths)
    assert live == simulated
    assert sum(simulated) > 0.5 * sum(lengths)  # the scenario really is prefix-heavy


def test_a_coarser_chain_block_is_written_as_whole_blocks_of_tokens():
    data = Scenario.from_yaml(SCENARIO).model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data["workload"]["prefix"] = {"block_tokens": 64, "system_prompts": {"count": 3, "tokens": 128}}
    drawn = draw(Scenario.model_validate(data))
    lengths = drawn.arrivals.prompt_tokens.tolist()
    prompts = structured_prompts(lengths, drawn.arrivals.prefix, random.Random(1), 2048)
    simulated = cached_per_request([drawn.arrivals.prefix.prefix(i) for i in range(len(lengths))], lengths)
    live = cached_per_request([chain_of(p, 16) for p in prompts], lengths)
    assert live == simulated and sum(live) > 0


def test_prompts_are_seeded_and_sessions_travel_as_user():
    scenario = Scenario.from_yaml(SCENARIO)
    first, again, other = prepare(scenario), prepare(scenario), prepare(scenario, seed=99)
    assert first.prompts == again.prompts and first.prompts != other.prompts
    sessions = first.arrivals.prefix.session.tolist()
    assert first.users == [f"session-{s}" for s in sessions]
    assert session_users(None, 3) == [None, None, None]
    assert all(len(p) == n for p, n in zip(independent_prompts([3, 5], random.Random(0), 64), [3, 5]))


def test_the_gateway_chain_of_token_ids_is_the_replicas_block_names():
    chains = PromptChains(16, lambda: pytest.fail("token ids need no tokenizer"))
    prompt = list(range(20, 90))
    request = CompletionRequest.model_validate({"prompt": prompt})
    prefix = chains.prefix(request, session=7)
    assert list(prefix.ids()) == chain_hashes(prompt, 16) and len(prefix) == 4 and prefix.session == 7
    assert not chains.needs_tokenizer(request)


def test_text_and_chat_are_tokenized_as_the_replica_does():
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from testbed.live.prompt_chain import model_tokenizer
    from testbed.live.replica.models import ensure_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_model("tiny"))
    chains = PromptChains(16, model_tokenizer("tiny"))
    text = "the quick brown fox jumps over the lazy dog " * 8
    completion = CompletionRequest.model_validate({"prompt": text})
    assert chains.needs_tokenizer(completion)
    assert list(chains.prefix(completion, -1).ids()) == chain_hashes(tokenizer(text)["input_ids"], 16)
    messages = [{"role": "system", "content": text}, {"role": "user", "content": "hello"}]
    chat = ChatCompletionRequest.model_validate({"messages": messages})
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=not rendered.startswith(tokenizer.bos_token))["input_ids"]
    assert list(chains.prefix(chat, -1).ids()) == chain_hashes(ids, 16) and len(ids) >= 16


def test_without_a_tokenizer_text_routes_cache_blind():
    def missing():
        raise ValueError("no such model")

    chains = PromptChains(16, missing)
    assert chains.prefix(CompletionRequest.model_validate({"prompt": "hello"}), -1) is None


def test_a_user_tag_is_a_stable_session():
    assert user_session("alice") == user_session("alice") != user_session("bob")
    assert 0 <= user_session("alice") < 2**63
