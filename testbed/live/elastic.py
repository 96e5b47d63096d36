"""The live plane's elastic fleet: the autoscaler's decisions carried out on real replica processes.

The simulation's :class:`~testbed.sim.elastic.ElasticFleet` in wall-clock time, for what a
laptop can really do: the topology's primary replicas of a pool are its slots; at the start the
pool's initial count serve and the others are parked — the replay starts the stack without their
processes (:func:`spare_replicas`), and a stack started with them has them stopped. Every second the
per-replica metric is read from the gateway's own view of the fleet (the requests it has in
flight on each replica), averaged over the autoscaler's interval and fed to the same
:class:`~testbed.policy.autoscaler.Autoscaler` the simulation drives. A scale-up starts a
stopped slot's process: the *provisioning* phase (node acquisition and image pull, which a
local machine does not have) is waited out as configured, then the process really starts and
loads the model — the cold start is measured, not modelled, and recorded in the fleet's events.
The replica enters the gateway's rotation once it answers (:meth:`Gateway.set_in_service`). A
scale-down takes the newest replica out of rotation, waits for its in-flight requests (up to the
drain timeout) and stops its process gracefully.

Streams cut by a replica's death, or by a drain that outlasts its timeout, migrate as in the
simulation: the gateway resumes them on another replica (:mod:`testbed.live.resume`), and
:meth:`LiveFleet.stats` reports its migrations and its checker's verdict. What the live plane
cannot do yet is refused up front by :func:`check_supported` (spot, quotas, stockouts, rollouts,
degradation), so no field is silently ignored.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import pandas as pd

from testbed.cost import CostMeter, goodput
from testbed.policy.autoscaler import Autoscaler
from testbed.policy.lifecycle import LifecycleTimings
from testbed.spec import ElasticSpec, Scenario, SpecError
from testbed.topology import Topology

TICK = 1.0
FLEET_COLUMNS = ("time", "replica", "pool", "region", "phase", "market")


def check_supported(scenario: Scenario) -> None:
    """SpecError naming the first ``elastic:`` field the live plane cannot carry out."""
    spec = scenario.elastic
    if spec is None:
        return
    where = f"{scenario.name}: elastic"
    for name, pool in spec.pools.items():
        if pool.autoscaler is not None and pool.autoscaler.metric != "ongoing_requests":
            raise SpecError(f"{where}.pools.{name}.autoscaler.metric: live, the gateway reads ongoing_requests only "
                            f"(got {pool.autoscaler.metric}); use it, or run the scenario in simulation")
        for part in ("spot", "degradation"):
            if getattr(pool, part) is not None:
                raise SpecError(f"{where}.pools.{name}.{part}: runs in simulation only (testbed run); the live stack has no "
                                f"{'spot market' if part == 'spot' else 'quantized or smaller variants to switch to'}")
    if spec.quotas:
        raise SpecError(f"{where}.quotas: runs in simulation only; a local machine has no device quotas")
    if spec.rollouts:
        raise SpecError(f"{where}.rollouts: runs in simulation only; the live stack deploys one version")
    for part in ("storage_bandwidth", "warmup"):
        if getattr(spec.lifecycle, part) is not None:
            raise SpecError(f"{where}.lifecycle.{part}: live replicas load and warm up the real model, "
                            "so this phase is measured, not set; drop it")
    for i, fault in enumerate(scenario.faults):
        if getattr(fault, "kind", None) == "stockout":
            raise SpecError(f"{scenario.name}: faults.{i} (stockout): runs in simulation only; a local machine acquires no devices")


@dataclass(slots=True, eq=False)
class _Pool:
    name: str
    slots: list[int]
    wanted: int
    autoscaler: Autoscaler | None
    interval: float
    next_decision: float
    samples: list[float] = field(default_factory=list)


def _pools(placements: list, spec: ElasticSpec) -> list[_Pool]:
    """Each pool's slots (in placement order) and how many serve at the start."""
    from testbed.sim.elastic import spread_slots

    pools = []
    for name in dict.fromkeys(p.pool for p in placements):
        slots = spread_slots([p for p in placements if p.pool == name and p.tier == "primary"])
        pool_spec = spec.pools.get(name)
        auto = pool_spec.autoscaler if pool_spec is not None else None
        wanted = len(slots) if auto is None else (auto.min_replicas if auto.initial_replicas is None else auto.initial_replicas)
        interval = auto.interval if auto is not None else math.inf
        pools.append(_Pool(name, slots, wanted, Autoscaler.from_spec(auto) if auto else None, interval, interval))
    return pools


def spare_replicas(topology: Topology, scenario: Scenario) -> list[str]:
    """The replicas an elastic fleet does not start with: the stack can leave them parked."""
    if scenario.elastic is None:
        return []
    return [topology.replicas[slot].name for pool in _pools(topology.replicas, scenario.elastic) for slot in pool.slots[pool.wanted :]]


class LiveFleet:
    """Runs the pools' autoscalers on a started :class:`~testbed.live.stack.LiveStack`."""

    def __init__(self, stack, topology: Topology, scenario: Scenario, offset: float = 0.0) -> None:
        assert scenario.elastic is not None and stack.gateway is not None
        self.stack = stack
        self.policy = stack.gateway.policy
        self.placements = topology.replicas
        self.spec: ElasticSpec = scenario.elastic
        self.scenario = scenario
        self.offset = offset  # stack clock -> replay clock
        self.meter = CostMeter(self.spec.cost)
        self.serving: set[int] = set()
        self.starting: dict[int, asyncio.Task[None]] = {}
        self.draining: dict[int, float] = {}  # slot -> drain deadline (stack clock)
        self.events: list[tuple[float, int, str, str, str, str]] = []
        self.cold_starts: list[float] = []  # measured: process start to answering, seconds
        self.counts = {"scale_ups": 0, "scale_downs": 0, "cold_starts": 0}
        self.pools = _pools(self.placements, self.spec)
        self._task: asyncio.Task[None] | None = None

    def _now(self) -> float:
        return self.stack.now()

    def _event(self, slot: int, phase: str) -> None:
        placement = self.placements[slot]
        self.events.append((self._now() - self.offset, slot, placement.pool, placement.region, phase, "on_demand"))

    async def park(self) -> None:
        """Before the replay's clock starts: the slots beyond each pool's initial count leave the
        rotation, and their processes stop (a stack started with them parked has none)."""
        now = self._now()
        for pool in self.pools:
            for slot in pool.slots[pool.wanted :]:
                self.policy.set_in_service(slot, False, now)
                name = self.placements[slot].name
                if self.stack.running(name):
                    await asyncio.to_thread(self.stack.supervisor.stop, name, 5)

    def begin(self, offset: float) -> None:
        """The replay's clock starts (``offset``: stack clock -> replay clock): the initial
        replicas serve, are billed from here, and the control loop runs."""
        self.offset = offset
        now = self._now()
        for pool in self.pools:
            for slot in pool.slots[: pool.wanted]:
                self.serving.add(slot)
                self._bill(slot, now)
                self._event(slot, "serving")
        self._task = asyncio.create_task(self._loop())

    def _bill(self, slot: int, now: float) -> None:
        placement = self.placements[slot]
        self.meter.start(slot, now - self.offset, placement.device_kind, placement.tensor_parallel, "on_demand")

    async def close(self) -> None:
        """End of the run: stop deciding, let starts under way finish, bill up to now."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self.starting.values(), return_exceptions=True)
        self.meter.close(self._now() - self.offset)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = self._now()
            for pool in self.pools:
                if pool.autoscaler is None:
                    continue
                serving = [s for s in pool.slots if s in self.serving]
                views = self.policy.replicas
                pool.samples.append(sum(views[s].outstanding for s in serving) / len(serving) if serving else 0.0)
                if now >= pool.next_decision:
                    pool.next_decision = now + pool.interval
                    self._decide(pool, now, serving)
                self._reconcile(pool, now)
            await self._finish_drains(now)

    def _decide(self, pool: _Pool, now: float, serving: list[int]) -> None:
        assert pool.autoscaler is not None
        samples, pool.samples = pool.samples, []
        observed = sum(samples) / len(samples) if samples else 0.0
        waiting = sum(1 for state in self.policy.requests.values() if state.pool == pool.name and not state.live)
        decision = pool.autoscaler.decide(now, pool.wanted, len(serving), observed, waiting)
        if decision is not None:
            self.counts["scale_ups" if decision.desired > decision.current else "scale_downs"] += 1
            pool.wanted = decision.desired

    def _reconcile(self, pool: _Pool, now: float) -> None:
        live = [s for s in pool.slots if (s in self.serving or s in self.starting) and s not in self.draining]
        for slot in [s for s in pool.slots if s not in live and s not in self.draining][: max(0, pool.wanted - len(live))]:
            self.counts["cold_starts"] += 1
            self._bill(slot, now)
            self.starting[slot] = asyncio.create_task(self._start(slot))
        for slot in sorted((s for s in live if s in self.serving), reverse=True)[: max(0, len(live) - pool.wanted)]:
            self.draining[slot] = now + (self.spec.lifecycle.drain_timeout or LifecycleTimings(0, 0, 0).drain_timeout)
            self.policy.set_in_service(slot, False, now)
            self._event(slot, "draining")

    async def _start(self, slot: int) -> None:
        """Provisioning (waited out: no node to acquire here), then a real process start and model load."""
        name = self.placements[slot].name
        self._event(slot, "provisioning")
        lifecycle = self.spec.lifecycle
        provisioning = (lifecycle.provisioning or 0.0) + (lifecycle.image_pull or 0.0)
        try:
            await asyncio.sleep(provisioning)
            self._event(slot, "loading")
            began = self._now()
            await self.stack.restart(name)
            self.cold_starts.append(self._now() - began)
            self.serving.add(slot)
            self.policy.set_in_service(slot, True, self._now())
            self._event(slot, "serving")
        finally:
            self.starting.pop(slot, None)

    async def _finish_drains(self, now: float) -> None:
        for slot, deadline in list(self.draining.items()):
            if self.policy.replicas[slot].outstanding == 0 or now >= deadline:
                del self.draining[slot]
                self.serving.discard(slot)
                await asyncio.to_thread(self.stack.supervisor.stop, self.placements[slot].name, 5)
                self.meter.stop(slot, self._now() - self.offset)
                self._event(slot, "gone")

    def frame(self) -> pd.DataFrame:
        columns = list(zip(*self.events)) if self.events else [[] for _ in FLEET_COLUMNS]
        return pd.DataFrame(dict(zip(FLEET_COLUMNS, columns)))

    def stats(self, requests: pd.DataFrame) -> dict[str, float | int]:
        good = goodput(requests, self.scenario.sla)
        return {
            "device_hours": self.meter.device_hours,
            "cost_usd": self.meter.dollars,
            "goodput_requests": good,
            "goodput_per_dollar": good / self.meter.dollars if self.meter.dollars else math.nan,
            **self.counts,
            "cold_start_s": max(self.cold_starts, default=math.nan),  # the slowest measured start
            **self.stack.gateway.migration_stats(),
            # Refused by check_supported, so none happen live:
            "refused_grants": 0, "spot_preemptions": 0, "spot_fallbacks": 0, "degraded_requests": 0,
        }

