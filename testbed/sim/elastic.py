"""An elastic fleet in simulated time: the ``elastic:`` policies carried out on the topology's slots.

The topology's primary replicas of each pool are *slots*. At the start the pool's initial count
of them serve (already warm); the rest are parked. One SimPy process ticks every second and:

* retires replicas whose slot a fault took down (they are *gone*: a replacement pays the whole
  lifecycle chain on a healthy slot — node, image, then the start a calibrated profile measured
  or, without one, weights over storage bandwidth and a warm-up);
* runs each pool's autoscaler every ``interval`` and its degradation ladder with it;
* reconciles: while fewer replicas are live than wanted it asks for one more on a free slot
  whose host is up, within quota, outside stockouts, spot or on-demand as the market says; while
  more are live it drains the newest;
* moves rolling deployments on, and ends drains once a replica holds no work.

Lifecycle phases end on their own timers; spot replicas get a notice and a reclaim timer. A
replica is in the gateway's rotation only while serving (:meth:`Gateway.set_in_service`). Streams
cut on a replica that dies or drains past its timeout migrate (:class:`MigrationPolicy`), and the
:class:`StreamChecker` verifies at the end that every migrated request got each token once.
Randomness (spot lifetimes) comes from the ``elastic.spot`` stream of the run's seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import simpy

from testbed import cloud
from testbed.cost import CostMeter, goodput
from testbed.records.schema import OK
from testbed.policy.autoscaler import Autoscaler
from testbed.policy.batching import Sequence
from testbed.policy.capacity import CapacityLedger, SpotMarket, Stockout
from testbed.policy.degradation import DegradationLadder
from testbed.policy.lifecycle import LifecycleTimings, ReplicaLifecycle
from testbed.policy.migration import MigrationPolicy, StreamChecker
from testbed.spec import CapTokensStep, ElasticSpec, QuantizeStep, RouteClassStep

if TYPE_CHECKING:
    from testbed.sim.engine import _Run

TICK = 1.0  # seconds between control-loop passes
FLEET_COLUMNS = ("time", "replica", "pool", "region", "phase", "market")


@dataclass(slots=True, eq=False)
class _Live:
    """A replica occupying a slot: its lifecycle, market and rollout generation."""

    slot: int
    life: ReplicaLifecycle
    market: str
    generation: int
    retiring: bool = False  # marked for replacement by a rollout
    doomed: bool = False  # a spot replica under notice
    drain_deadline: float | None = None


@dataclass(slots=True, eq=False)
class _Pool:
    name: str
    slots: list[int]
    wanted: int
    autoscaler: Autoscaler | None = None
    interval: float = 10.0
    metric: str = "ongoing_requests"
    percentile: float = 95.0
    next_decision: float = 0.0
    spot: SpotMarket | None = None
    ladder: DegradationLadder | None = None
    generation: int = 0
    rollout_surge: int = 0  # replicas a running rollout replaces at a time (0: none running)
    ttfts: list[float] = field(default_factory=list)  # TTFTs since the last decision (latency metric)
    samples: list[float] = field(default_factory=list)  # per-tick readings since the last decision


class ElasticFleet:
    """Carries out ``scenario.elastic`` on a simulation run (see module docstring)."""

    def __init__(self, run: _Run, spec: ElasticSpec) -> None:
        self.run = run
        self.env: simpy.Environment = run.env
        self.spec = spec
        self.placements = run.topology.replicas
        self.migration = MigrationPolicy.from_spec(spec.migration)
        self.checker = StreamChecker()
        self.offset: dict[int, int] = {}  # rid -> tokens already delivered by earlier attempts
        self.degraded = np.zeros(run.total, dtype=bool)
        self.meter = CostMeter(spec.cost)
        self.ledger = CapacityLedger(
            {(region, device): n for region, kinds in spec.quotas.items() for device, n in kinds.items()},
            self._stockouts(),
        )
        self.live: dict[int, _Live] = {}  # slot -> replica
        self.events: list[tuple[float, int, str, str, str, str]] = []
        self.counts = {
            "scale_ups": 0, "scale_downs": 0, "cold_starts": 0, "refused_grants": 0, "spot_preemptions": 0, "spot_fallbacks": 0,
        }
        self.class_names = list(run.arrivals.class_names)
        rng = run.streams.python("elastic.spot")
        self.pools: dict[str, _Pool] = {}
        for name in dict.fromkeys(p.pool for p in self.placements):
            slots = spread_slots([p for p in self.placements if p.pool == name and p.tier == "primary"])
            pool_spec = spec.pools.get(name)
            pool = _Pool(name, slots, len(slots))
            if pool_spec is not None and pool_spec.autoscaler is not None:
                auto = pool_spec.autoscaler
                pool.autoscaler = Autoscaler.from_spec(auto)
                pool.wanted = auto.min_replicas if auto.initial_replicas is None else auto.initial_replicas
                pool.interval, pool.metric, pool.percentile = auto.interval, auto.metric, auto.percentile
                pool.next_decision = auto.interval
            if pool_spec is not None and pool_spec.spot is not None:
                pool.spot = SpotMarket.from_spec(pool_spec.spot, rng)
            if pool_spec is not None and pool_spec.degradation is not None:
                pool.ladder = DegradationLadder.from_spec(pool_spec.degradation)
            self.pools[name] = pool
        self._starting_fleet()

    # ------------------------------------------------------------------ set-up

    def _stockouts(self) -> list[Stockout]:
        outs = []
        for fault in self.run.scenario.faults:
            if getattr(fault, "kind", None) == "stockout":
                end = math.inf if fault.duration is None else fault.at + fault.duration
                outs.append(Stockout(fault.target, fault.device, fault.at, end, fault.market))
        return outs

    def _starting_fleet(self) -> None:
        """The initial replicas serve from time zero (warm), within quotas and outside stockouts;
        every other slot is parked."""
        for pool in self.pools.values():
            started = []
            for slot in pool.slots:
                placement = self.placements[slot]
                market = self._market(pool, placement.region, 0.0)
                granted = self.ledger.refusal(placement.region, placement.device_kind, placement.tensor_parallel, market, 0.0) is None
                if len(started) < pool.wanted and granted:
                    started.append(slot)
                    self._start_warm(pool, slot, market)
                else:
                    self.run.replicas[slot].park()
                    self.run.gateway.set_in_service(slot, False, 0.0)

    def _start_warm(self, pool: _Pool, slot: int, market: str) -> None:
        """A replica serving from time zero: its cold start happened before the run."""
        life = ReplicaLifecycle(self._timings(slot), requested_at=0.0)
        life.phase = "serving"
        life.history[:] = [(0.0, "provisioning"), (0.0, "serving")]
        self._occupy(slot, life, market, pool.generation)
        self._event(slot, "serving")

    def _timings(self, slot: int) -> LifecycleTimings:
        """The slot's lifecycle chain: its start measured by calibration when its profile says, else modelled."""
        placement = self.placements[slot]
        topology = self.run.scenario.topology
        device = topology.device_kind(placement.device_kind)
        weight_bytes = topology.model_kind(placement.model).params * device.weight_bytes_per_param
        perf = self.run.replicas[slot].perf
        measured = (perf.startup_seconds, perf.warmup_seconds) if perf.startup_seconds > 0 else None
        return LifecycleTimings.for_replica(placement.provider, weight_bytes, device.fallback, self.spec.lifecycle, measured)

    def _spot_counts(self, pool: _Pool) -> tuple[int, int]:
        members = [self.live[s] for s in pool.slots if s in self.live and not self.live[s].doomed]
        return sum(1 for m in members if m.market == "spot"), len(members)

    def _wants_spot(self, pool: _Pool) -> bool:
        assert pool.spot is not None
        return pool.spot.wants_spot(*self._spot_counts(pool))

    def _market(self, pool: _Pool, region: str, now: float) -> str:
        if pool.spot is None:
            return "on_demand"
        spot, total = self._spot_counts(pool)
        return pool.spot.choose(region, spot, total, now)

    def _occupy(self, slot: int, life: ReplicaLifecycle, market: str, generation: int) -> None:
        placement = self.placements[slot]
        self.ledger.grant(placement.region, placement.device_kind, placement.tensor_parallel)
        self.meter.start(slot, self.env.now, placement.device_kind, placement.tensor_parallel, market)
        self.live[slot] = _Live(slot, life, market, generation)
        if market == "spot":
            self._arm_preemption(slot)

    # ------------------------------------------------------------------ the control loop

    def start(self) -> None:
        self.env.process(self._loop())

    def _loop(self) -> Iterator[simpy.Event]:
        while not self.run.done.triggered:
            yield self.env.timeout(TICK)
            now = self.env.now
            self._retire_failed(now)
            for pool in self.pools.values():
                if pool.autoscaler is not None and pool.metric != "latency":
                    pool.samples.append(self._metric(pool, self._serving(pool)))
                if now + 1e-9 >= pool.next_decision:
                    pool.next_decision = now + pool.interval
                    self._decide(pool, now)
                self._rollout(pool, now)
                self._reconcile(pool, now)
            self._finish_drains(now)

    def _serving(self, pool: _Pool) -> list[int]:
        return [s for s in pool.slots if s in self.live and self.live[s].life.phase == "serving"]

    def _decide(self, pool: _Pool, now: float) -> None:
        serving = self._serving(pool)
        if pool.ladder is not None:
            capacity = sum(self.run.views[s].capacity for s in serving)
            outstanding = sum(self.run.views[s].outstanding for s in serving) + self._waiting(pool)
            load = outstanding / capacity if capacity else (math.inf if outstanding else 0.0)
            move = pool.ladder.observe(now, load)
            if move is not None:
                self._apply_ladder(pool)
        if pool.autoscaler is None:
            return
        observed = self._observed(pool, serving)
        decision = pool.autoscaler.decide(now, pool.wanted, len(serving), observed, self._waiting(pool))
        if decision is not None:
            self.counts["scale_ups" if decision.desired > decision.current else "scale_downs"] += 1
            pool.wanted = decision.desired

    def _observed(self, pool: _Pool, serving: list[int]) -> float:
        """The metric over the interval since the last decision: the mean of the per-tick readings
        (Ray Serve averages over its look-back period), or the TTFT percentile of that interval.
        An instantaneous reading would see an idle moment of a lightly loaded pool as zero load."""
        if pool.metric == "latency":
            ttfts, pool.ttfts = pool.ttfts, []
            return float(np.percentile(ttfts, pool.percentile)) if ttfts else 0.0
        samples, pool.samples = pool.samples, []
        return sum(samples) / len(samples) if samples else self._metric(pool, serving)

    def _metric(self, pool: _Pool, serving: list[int]) -> float:
        """One reading of a per-replica metric over the serving replicas."""
        if not serving:
            return 0.0
        replicas, views = self.run.replicas, self.run.views
        if pool.metric == "ongoing_requests":
            return sum(views[s].outstanding for s in serving) / len(serving)
        if pool.metric == "queue_depth":
            return sum(replicas[s].batcher.queued for s in serving) / len(serving)
        if pool.metric == "kv_utilisation":
            shares = [replicas[s].batcher.kv_used / max(1, replicas[s].batcher.kv_capacity) for s in serving]
            return sum(shares) / len(shares)
        raise ValueError(f"no per-tick reading for metric {pool.metric!r}")

    def _waiting(self, pool: _Pool) -> int:
        """Requests for the pool that no replica holds (between retries, or no replica to take them)."""
        return sum(1 for state in self.run.gateway.requests.values() if state.pool == pool.name and not state.live)

    def _reconcile(self, pool: _Pool, now: float) -> None:
        members = [self.live[s] for s in pool.slots if s in self.live]
        counted = [m for m in members if m.life.phase != "draining" and not m.doomed and not m.retiring]
        missing = pool.wanted - len(counted)
        for _ in range(max(0, missing)):
            if not self._request(pool, now):
                starting = any(m.life.phase in ("provisioning", "loading", "warming") for m in members)
                waiting = [m for m in members if m.retiring and m.life.phase == "serving"]
                if waiting and not starting:
                    self._drain(waiting[0], now)  # no free slot to surge into: make room first
                break
        if missing < 0:
            # Drain the newest first: they are the likeliest still starting, and cost nothing to drop.
            extra = sorted(counted, key=lambda m: m.life.history[0][0], reverse=True)[:-missing]
            for member in extra:
                self._remove(member, now)
        retiring = [m for m in members if m.retiring and m.life.phase == "serving"]
        if retiring and len(self._serving(pool)) - len(retiring) >= pool.wanted:
            for member in retiring:  # their replacements serve: the old ones can drain
                self._drain(member, now)

    def _request(self, pool: _Pool, now: float) -> bool:
        """Start a replica on a free, healthy slot that capacity grants; False if none can be had."""
        injector = self.run.injector
        for slot in pool.slots:
            if slot in self.live or injector.state.replicas[slot].down:
                continue
            placement = self.placements[slot]
            market = self._market(pool, placement.region, now)
            reason = self.ledger.refusal(placement.region, placement.device_kind, placement.tensor_parallel, market, now)
            if reason is not None and market == "spot" and pool.spot is not None:
                fallback = pool.spot.on_spot_refused(placement.region, now)
                if fallback is not None:
                    market = fallback
                    reason = self.ledger.refusal(placement.region, placement.device_kind, placement.tensor_parallel, market, now)
            if reason is not None:
                self.counts["refused_grants"] += 1
                continue
            if market == "on_demand" and pool.spot is not None and self._wants_spot(pool):
                self.counts["spot_fallbacks"] += 1  # spot was wanted: refused, or the region falls back
            life = ReplicaLifecycle(self._timings(slot), requested_at=now)
            self._occupy(slot, life, market, pool.generation)
            self.counts["cold_starts"] += 1
            self._event(slot, "provisioning")
            self._phase_timer(slot, life, life.granted(now))
            return True
        return False

    def _phase_timer(self, slot: int, life: ReplicaLifecycle, at: float) -> None:
        def fire(_event: simpy.Event) -> None:
            member = self.live.get(slot)
            if member is None or member.life is not life or life.phase == "gone":
                return
            if self.run.injector.state.replicas[slot].down:
                self._gone(member, self.env.now)  # the node failed while starting
                return
            following = life.on_timer(self.env.now)
            self._event(slot, life.phase)
            if following is not None:
                self._phase_timer(slot, life, following)
            else:
                self.run.replicas[slot].activate()
                self.run.gateway.set_in_service(slot, True, self.env.now)

        self.env.timeout(max(0.0, at - self.env.now)).callbacks.append(fire)

    def _remove(self, member: _Live, now: float) -> None:
        """Scale-down: a starting replica is abandoned, a serving one drains."""
        if member.life.phase == "serving":
            self._drain(member, now)
        else:
            self._gone(member, now)

    def _drain(self, member: _Live, now: float, deadline: float | None = None) -> None:
        if member.life.phase != "serving":
            return
        drain_until = member.life.drain(now)
        member.drain_deadline = drain_until if deadline is None else min(drain_until, deadline)
        self.run.gateway.set_in_service(member.slot, False, now)
        self._event(member.slot, "draining")

    def _finish_drains(self, now: float) -> None:
        for member in [m for m in self.live.values() if m.life.phase == "draining"]:
            idle = not self.run.replicas[member.slot].holds_work and self.run.views[member.slot].outstanding == 0
            if idle or now + 1e-9 >= (member.drain_deadline or now):
                self._gone(member, now)

    def _gone(self, member: _Live, now: float) -> None:
        """Release the slot: whatever still runs on it is cut (and migrates, if it can)."""
        slot = member.slot
        placement = self.placements[slot]
        self._event(slot, "gone")
        del self.live[slot]
        member.life.gone(now)
        self.ledger.release(placement.region, placement.device_kind, placement.tensor_parallel)
        self.meter.stop(slot, now)
        self.run.gateway.set_in_service(slot, False, now)
        for work in self.run.replicas[slot].park():
            self.run._on_lost_work(work, now)

    def _retire_failed(self, now: float) -> None:
        """A fault took a live replica's slot down: it is gone, and the pool will replace it."""
        state = self.run.injector.state
        for member in [m for m in self.live.values() if state.replicas[m.slot].down]:
            self._gone(member, now)

    # ------------------------------------------------------------------ spot

    def _arm_preemption(self, slot: int) -> None:
        pool = self.pools[self.placements[slot].pool]
        assert pool.spot is not None
        member = self.live[slot]
        lifetime = pool.spot.lifetime()
        if math.isinf(lifetime):
            return
        reclaim = self.env.now + lifetime
        notice = pool.spot.notice_for(cloud.spot_notice_seconds(self.placements[slot].provider))
        warn = max(self.env.now, reclaim - notice)

        def on_notice(_event: simpy.Event) -> None:
            if self.live.get(slot) is not member:
                return  # gone before the provider wanted it back
            self.counts["spot_preemptions"] += 1
            assert pool.spot is not None
            pool.spot.on_preempted(self.placements[slot].region, self.env.now)
            member.doomed = True  # the pool asks for its replacement now (SkyServe launches on notice)
            self._event(slot, "notice")
            if member.life.phase == "serving":
                self._drain(member, self.env.now, deadline=reclaim)

        def on_reclaim(_event: simpy.Event) -> None:
            if self.live.get(slot) is member:
                self._event(slot, "preempted")
                self._gone(member, self.env.now)

        self.env.timeout(warn - self.env.now).callbacks.append(on_notice)
        self.env.timeout(reclaim - self.env.now).callbacks.append(on_reclaim)

    # ------------------------------------------------------------------ rolling deployments

    def _rollout(self, pool: _Pool, now: float) -> None:
        """Start due rollouts; mark the next batch of old replicas for replacement."""
        for rollout in self.spec.rollouts:
            if rollout.pool == pool.name and now - TICK < rollout.at <= now:
                pool.generation += 1
                pool.rollout_surge = rollout.max_surge
        if not pool.rollout_surge:
            return
        members = [self.live[s] for s in pool.slots if s in self.live]
        old = [m for m in members if m.generation < pool.generation and not m.retiring and m.life.phase == "serving"]
        if any(m.retiring for m in members) or any(m.life.phase in ("provisioning", "loading", "warming") for m in members):
            return
        if not old:
            pool.rollout_surge = 0
            return
        for member in old[: pool.rollout_surge]:
            member.retiring = True
            self._event(member.slot, "retiring")

    # ------------------------------------------------------------------ requests

    def on_arrival(self, rid: int, pool_name: str) -> str:
        """Degradation steps in force for the request's pool: reroute, cap max_tokens, flag."""
        pool = self.pools.get(pool_name)
        if pool is None or pool.ladder is None or not pool.ladder.level:
            return pool_name
        run = self.run
        for step in pool.ladder.active:
            if isinstance(step, QuantizeStep):
                self.degraded[rid] = True
            elif isinstance(step, CapTokensStep) and run._output_tokens[rid] > step.max_tokens:
                run._output_tokens[rid] = step.max_tokens
                run.columns["output_tokens"][rid] = step.max_tokens
                self.degraded[rid] = True
            elif isinstance(step, RouteClassStep) and self.class_names[run.columns["request_class"][rid]] == step.request_class:
                self.degraded[rid] = True
                return step.to_pool
        return pool_name

    def _apply_ladder(self, pool: _Pool) -> None:
        boost = 1.0
        for step in pool.ladder.active if pool.ladder else []:
            if isinstance(step, QuantizeStep):
                boost = step.speedup
        for slot in pool.slots:
            self.run.replicas[slot].boost = boost

    def on_first_token(self, rid: int, ttft: float) -> None:
        state = self.run.gateway.requests.get(rid)
        pool = None if state is None else self.pools.get(state.pool)
        if pool is not None and pool.metric == "latency":
            pool.ttfts.append(ttft)

    def work_for(self, rid: int, prompt: int, output: int) -> tuple[int, int]:
        """A resumed attempt's prompt and output: the delivered tokens join the prompt."""
        done = self.offset.get(rid, 0)
        return prompt + done, output - done

    def migrate(self, work: Sequence, now: float) -> bool:
        """A stream cut on a dying or drained replica resumes elsewhere; False when it cannot."""
        run = self.run
        attempt = run.attempts.get(work.key)
        if attempt is None:
            return False
        rid = attempt.rid
        before = self.offset.get(rid, 0)
        resume = self.migration.resume(rid, run._prompt_tokens[rid], run._output_tokens[rid], before + work.generated)
        if resume is None:
            return False
        self.checker.delivered(rid, before, work.generated)
        self.offset[rid] = resume.offset
        run.attempt_log.ended(work.key, attempt, "failed", now)
        del run.attempts[work.key]
        run._execute(run.gateway.on_migrate(work.key, now))
        return True

    def on_answered(self, rid: int) -> None:
        """The answering attempt delivered the rest of a migrated request's tokens."""
        if rid in self.offset:
            done = self.offset[rid]
            self.checker.delivered(rid, done, self.run._output_tokens[rid] - done)

    # ------------------------------------------------------------------ records

    def _event(self, slot: int, phase: str) -> None:
        placement = self.placements[slot]
        market = self.live[slot].market if slot in self.live else ""
        self.events.append((self.env.now, slot, placement.pool, placement.region, phase, market))

    def frame(self) -> pd.DataFrame:
        """The fleet's lifecycle events: one row per replica phase change."""
        columns = list(zip(*self.events)) if self.events else [[] for _ in FLEET_COLUMNS]
        return pd.DataFrame(dict(zip(FLEET_COLUMNS, columns)))

    def stats(self, requests: pd.DataFrame, now: float) -> dict[str, float | int | bool]:
        """Cost, goodput per dollar, migrations and the checker's verdict, for Result.stats."""
        self.meter.close(now)
        good = goodput(requests, self.run.scenario.sla)
        status = self.run.log.status
        migrated = {rid: int(self.run._output_tokens[rid]) for rid in self.migration.migrations if status[rid] == OK}
        verdict = self.checker.check(migrated)
        return {
            "device_hours": self.meter.device_hours,
            "cost_usd": self.meter.dollars,
            "goodput_requests": good,
            "goodput_per_dollar": good / self.meter.dollars if self.meter.dollars else math.nan,
            **self.counts,
            "migrations": self.migration.total,
            "migrated_requests": self.migration.migrated,
            "migration_check_ok": verdict.ok,
            "migration_tokens_lost": verdict.lost,
            "migration_tokens_duplicated": verdict.duplicated,
            "degraded_requests": int(self.degraded.sum()),
        }


def spread_slots(placements: list) -> list[int]:
    """Slots in the order replicas are placed: one per region in turn, so a pool spans its regions."""
    by_region: dict[str, list[int]] = {}
    for placement in placements:
        by_region.setdefault(placement.region, []).append(placement.index)
    queues = list(by_region.values())
    order: list[int] = []
    for i in range(max((len(q) for q in queues), default=0)):
        order.extend(q[i] for q in queues if i < len(q))
    return order
