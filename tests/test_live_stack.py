"""Faults against real replica processes under load: pause, partition, kill.

Three tiny-model replicas in two regions serve steady load from a thread pool of openai
clients while a fault is injected. Every request must be answered — ok, or a 4xx/5xx with a
message — never lost, and the request records must tell what the gateway did about it
(hedges for a hang, failover for a partition, retries for a crash), with the fault in the
fault table and detected by the health checks. A stream the fault breaks after its first
tokens reached the client cannot be retried without repeating them: migration is on, so it
resumes on another replica from the tokens the client has, and the gateway's checker
(:class:`~testbed.policy.migration.StreamChecker`, on token ids) must find every migrated
request's tokens neither lost nor duplicated. Streams ask for 48 tokens, so a fault often cuts
one mid-way.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from testbed.live.stack import LiveStack, ReplicaPlan, StackThread
from testbed.spec import MigrationSpec, ServingSpec

pytestmark = pytest.mark.live

SPEC = ServingSpec.model_validate(
    {
        "batching": {"policy": "micro", "max_batch_size": 4},
        "routing": {"policy": "region_affine"},
        "timeouts": {"request": "8s", "connect": "500ms"},
        "retries": {"max_attempts": 3, "backoff": "50ms", "budget_min_per_s": 100},
        "hedging": {"enabled": True, "delay": "1s"},
        "health_check": {"period": "500ms", "timeout": "500ms", "unhealthy_threshold": 1, "healthy_threshold": 1},
        "circuit_breaker": {"consecutive_failures": 2, "open_for": "2s"},
    }
)
PLANS = [ReplicaPlan("r0", "local/a"), ReplicaPlan("r1", "local/a"), ReplicaPlan("r2", "local/b")]


@pytest.fixture(scope="module")
def live():
    runner = StackThread(LiveStack(SPEC, PLANS, migration=MigrationSpec(limit=3)))
    with runner as stack:
        yield runner, stack


class Load:
    """Requests from ``workers`` threads until stopped; each outcome is "ok", an HTTP status, or "lost"."""

    def __init__(self, stack: LiveStack, workers: int = 4, region: str = "local/a") -> None:
        self.client = openai.OpenAI(
            base_url=stack.gateway_url + "/v1", api_key="unused", max_retries=0, timeout=20, default_headers={"x-client-region": region}
        )
        self.outcomes: list[object] = []
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(workers + 8)
        self.futures = [self.pool.submit(self._worker, i) for i in range(workers)]

    def _worker(self, worker: int) -> None:
        while not self.stop.is_set():
            try:
                if worker % 2:
                    stream = self.client.completions.create(model="tiny", prompt="load", max_tokens=48, stream=True)
                    assert "".join(c.choices[0].text for c in stream if c.choices)
                else:
                    self.client.completions.create(model="tiny", prompt="load", max_tokens=8)
                self.outcomes.append("ok")
            except openai.APIStatusError as exc:
                assert exc.message  # a clear error
                self.outcomes.append(exc.status_code)
            except (openai.APITimeoutError, openai.APIConnectionError):
                self.outcomes.append("lost")
            except openai.APIError as exc:  # an error event ended a stream the fault broke mid-way (not migrated)
                assert "upstream failed" in exc.message
                self.outcomes.append("broken stream")

    def burst(self, n: int) -> None:
        """``n`` more requests at once: some reach a replica the gateway does not yet know is down."""
        self.futures += [self.pool.submit(self._once) for _ in range(n)]

    def _once(self) -> None:
        try:
            self.client.completions.create(model="tiny", prompt="burst", max_tokens=8)
            self.outcomes.append("ok")
        except openai.APIStatusError as exc:
            self.outcomes.append(exc.status_code)
        except (openai.APITimeoutError, openai.APIConnectionError):
            self.outcomes.append("lost")

    def finish(self) -> list[object]:
        self.stop.set()
        for future in self.futures:
            future.result()
        self.pool.shutdown()
        return self.outcomes


def under_load(runner: StackThread, stack: LiveStack, fault, repair, region: str = "local/a", hold: float = 3.0):
    first = len(stack.records())
    load = Load(stack, region=region)
    time.sleep(1.0)
    runner.run(fault())
    load.burst(6)
    time.sleep(hold)
    if repair is not None:
        runner.run(repair())
    time.sleep(0.5)
    outcomes = load.finish()
    time.sleep(0.2)
    frame = stack.records()
    stats = stack.gateway.migration_stats()
    assert stats["migration_check_ok"], stats  # no migrated request lost or repeated a token
    return outcomes, frame[frame["request_id"] >= first]


def test_a_paused_replica_is_hedged_around_and_detected(live):
    runner, stack = live
    outcomes, rows = under_load(runner, stack, lambda: stack.pause("r1"), lambda: stack.resume("r1"))
    assert "lost" not in outcomes and outcomes.count("ok") == len(outcomes) > 10
    assert len(rows) == len(outcomes) and (rows["status"] == "ok").all()
    hedged = rows[rows["hedged"]]
    assert len(hedged) >= 1 and (hedged["replica"] != 1).all()  # the stuck attempts lost their race
    fault = stack.faults().iloc[-1]
    assert fault["kind"] == "node_hang" and fault["start"] < fault["detected_at"] < fault["start"] + 2.0
    assert rows["fault_overlap"].any()


def test_a_cut_region_fails_its_clients_over_to_the_other_region(live):
    runner, stack = live
    migrated_before = stack.gateway.migration_stats()["migrated_requests"]
    outcomes, rows = under_load(runner, stack, lambda: stack.cut_region("local/b"), lambda: stack.heal("local/b"), region="local/b")
    # Both streaming clients' streams were on local/b's one replica: the cut broke them mid-way.
    assert stack.gateway.migration_stats()["migrated_requests"] > migrated_before
    assert "lost" not in outcomes and outcomes.count("ok") > 10
    assert set(outcomes) == {"ok"}  # a stream the cut broke mid-way resumed in region a
    assert (rows["status"] == "ok").sum() == outcomes.count("ok") and (rows["client_region"] == "local/b").all()
    moved = rows[rows["failed_over"]]
    assert len(moved) >= 3 and set(moved["region"]) == {"local/a"}
    home = rows[~rows["failed_over"] & (rows["status"] == "ok")]
    assert (home["region"] == "local/b").all()  # before the cut and after the heal
    fault = stack.faults().iloc[-1]
    assert fault["kind"] == "partition" and fault["target"] == "local/b" and fault["end"] > fault["start"]


def test_a_killed_replica_loses_no_request(live):
    runner, stack = live
    migrated_before = stack.gateway.migration_stats()["migrated_requests"]
    outcomes, rows = under_load(runner, stack, lambda: stack.kill("r0"), None)
    assert "lost" not in outcomes and outcomes.count("ok") > 10
    assert set(outcomes) == {"ok"}  # a stream the kill cut mid-way resumed on r1 or r2
    assert (rows["status"] == "ok").sum() == outcomes.count("ok") and len(rows) == len(outcomes)
    # What the kill cut: the streams r0 was serving, resumed and checked (none, if it was between streams).
    assert stack.gateway.migration_stats()["migrated_requests"] - migrated_before <= 2
    after = rows[rows["arrival"] > stack.faults().iloc[-1]["detected_at"]]
    assert len(after) > 3 and (after["replica"] != 0).all()  # once detected, r0 gets nothing
    assert stack.faults().iloc[-1]["kind"] == "node_crash"
    assert stack.records()["status"].isin(["ok", "failed", "timeout", "shed"]).all()  # nothing pending
