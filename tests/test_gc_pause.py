"""The event loop runs with the cyclic collector paused (testbed/sim/gc_pause.py), which is safe
only while the loop makes no reference cycles: reference counting must free all it drops.

Each run below counts the cyclic garbage its event loop left (a collection just before the loop
and one just after, the collector paused in between); a change that makes a cycle per request
or per event shows as thousands here, and would otherwise grow a long run's memory unseen.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testbed.sim import engine, simulate
from testbed.sim.gc_pause import cyclic_gc_paused
from testbed.spec import Scenario

FAULTS = Path(__file__).resolve().parent.parent / "faults"
# Scenario and the serving it runs with: crashes, gray failure and throttling, partitions,
# hedging and retries, agents, elastic fleets, the gateway queue, prefix caching.
RUNS = {
    "rolling-node-crashes": {},
    "gray-failure": {"hedging": {"enabled": True, "delay": "250ms"}},
    "region-partition": {},
    "agent-adaptation-agent": {},
    "elastic-spot-fleet": {},
    "gateway-queue-capacity-loss": {},
    "cache-cold-failover": {},
}
# A handful of objects (an elastic fleet's lifecycle records) is not a leak; one per request is.
MOST = 100


def shortened(name: str, serving: dict) -> Scenario:
    spec = Scenario.from_yaml(FAULTS / f"{name}.yaml")
    if serving:
        merged = spec.serving.model_dump() | serving
        spec = spec.model_copy(update={"serving": type(spec.serving).model_validate(merged)})
    return spec.model_copy(update={"duration": min(spec.duration, 120.0)})


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_event_loop_leaves_no_cyclic_garbage(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    found: list[int] = []

    @contextmanager
    def counted() -> Iterator[None]:
        gc.collect()  # what building the run left is not the loop's
        with cyclic_gc_paused():
            yield
            found.append(gc.collect())

    monkeypatch.setattr(engine, "cyclic_gc_paused", counted)
    result = simulate(shortened(name, RUNS[name]))
    assert len(result.requests) > 100
    assert found and found[0] <= MOST, f"{name}: the event loop left {found} cyclic objects"


def test_the_pause_restores_the_collector() -> None:
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller who had it off keeps it off
    finally:
        gc.enable()
