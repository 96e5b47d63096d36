"""Cache-related fields the live plane cannot carry out yet are refused there, with a clear message.

Both planes, one behaviour: the simulator honours every field below; live replay must refuse
each one by name rather than silently replay a scenario without it.
"""

from __future__ import annotations

import pytest

from testbed.live.replay import prepare
from testbed.spec import Scenario, SpecError


def scenario(**changes) -> Scenario:
    data = {
        "name": "cache-live",
        "topology": {"name": "t", "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
            {"name": "k", "device": "cpu-fp32", "devices_per_node": 1}]}]}]}]},
        "workload": {"arrival": {"kind": "poisson", "rate": 1}},
        "serving": {"batching": {"policy": "continuous"}},
        "duration": 10,
    }
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return Scenario.model_validate(data)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"serving__batching__chunked_prefill": True}, "serving.batching.chunked_prefill"),
        ({"serving__batching__prefix_caching": True}, "serving.batching.prefix_caching"),
        ({"workload__prefix": {"system_prompts": {"count": 2, "tokens": 64}}}, "workload.prefix"),
        ({"serving__routing__policy": "cache_aware"}, "serving.routing.policy 'cache_aware'"),
        ({"serving__queue__enabled": True}, "serving.queue"),
    ],
)
def test_live_replay_refuses_what_it_cannot_carry_out(changes, field):
    with pytest.raises(SpecError, match=f"cache-live: {field}"):
        prepare(scenario(**changes))


def test_a_cache_blind_scenario_is_still_prepared():
    assert len(prepare(scenario()).arrivals) > 0
