"""The live stack with ``--engine vllm``: real vLLM primaries behind the gateway, the built-in
int8 engine as the fallback tier, and a SIGKILL of the vLLM replica's process group under load.

Like tests/test_live_vllm.py this skips without .venv-vllm and fails instead when
TESTBED_REQUIRE_VLLM=1 (CI). One vLLM replica starts for the module (~40 s on a quiet machine).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from testbed.live.replica.vllm import START_TIMEOUT, missing_reason
from testbed.live.stack import LiveStack, ReplicaPlan, StackThread
from testbed.live.supervisor import group_members
from testbed.spec import ServingSpec

pytestmark = [pytest.mark.live, pytest.mark.vllm]

SPEC = ServingSpec.model_validate(
    {
        "timeouts": {"request": "30s", "connect": "1s"},
        "retries": {"max_attempts": 3, "backoff": "50ms", "budget_min_per_s": 100},
        "health_check": {"period": "500ms", "timeout": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1},
        "failover": {"enabled": True, "fallback_tier": True},
    }
)
PLANS = [ReplicaPlan("v0", "local/a"), ReplicaPlan("fallback-0", "local/fallback", tier="fallback")]


@pytest.fixture(scope="module")
def live():
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("TESTBED_REQUIRE_VLLM") == "1":
            pytest.fail(f"TESTBED_REQUIRE_VLLM=1 but vLLM cannot run: {reason}")
        pytest.skip(reason)
    runner = StackThread(LiveStack(SPEC, PLANS, engine="vllm", start_timeout=START_TIMEOUT))
    with runner as stack:
        yield runner, stack


def ask(client: openai.OpenAI, i: int) -> str:
    try:
        out = client.completions.create(model="tiny", prompt=f"request {i}", max_tokens=8, temperature=0)
        return "ok" if out.choices[0].text is not None else "empty"
    except openai.APIStatusError as error:
        return str(error.status_code)
    except openai.APIConnectionError:
        return "lost"


def test_the_gateway_serves_from_vllm_and_fails_over_to_the_int8_tier_when_vllm_is_killed(live):
    runner, stack = live
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert [ask(client, i) for i in range(4)] == ["ok"] * 4
    chunks = list(client.completions.create(model="tiny", prompt="stream", max_tokens=6, temperature=0, stream=True))
    assert chunks and all(c.choices[0].text is not None for c in chunks if c.choices)

    pgid = stack.pids()["v0"]
    with ThreadPoolExecutor(4) as pool:
        during = pool.map(lambda i: ask(client, i), range(100, 116))
        runner.run(stack.kill("v0"))
        during = list(during)
    after = [ask(client, i) for i in range(200, 206)]

    assert not group_members(pgid), "the vLLM engine and worker processes died with the server"
    assert "lost" not in during + after
    assert after == ["ok"] * 6  # nothing primary is left: the fallback tier answers
    records = stack.records()
    served = records[records["status"] == "ok"]
    assert set(served["region"]) == {"local/a", "local/fallback"}
    assert served.loc[served["region"] == "local/fallback", "fallback"].all()
    assert (records["status"] != "pending").all()
