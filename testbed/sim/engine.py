"""The simulation plane: a scenario run in SimPy time against the shared policies.

One SimPy environment holds the arrival process, the fault injector, the gateway's health
probes, the fleet sampler and every replica's iteration timers. Each request is handed to the
sans-IO :class:`~testbed.policy.gateway.Gateway`, which decides where its attempts go, when to
retry or hedge, and when to give up; this module only carries those decisions out in simulated
time: an attempt travels half the client-to-region RTT (plus any network fault's delay) to its
replica, is batched and served there, and its tokens travel the other half back. All randomness
comes from named streams of the scenario's seed, so a run is reproducible to the byte.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy

from testbed.draw import Draw, draw
from testbed.finish import finish_run
from testbed.perf import PerfModel, kv_capacity_tokens, perf_model_for
from testbed.policy.agent import Call
from testbed.policy.batching import Batcher, Sequence, batcher_from_spec
from testbed.policy.gateway import Action, Cancel, Dispatch, Finish, Gateway, ReplicaState, Wake
from testbed.policy.outcomes import Outcome
from testbed.policy.prefix_cache import Prefix
from testbed.prefixes import PrefixColumns
from testbed.records.attempts import AttemptLog
from testbed.records.result import Result
from testbed.records.schema import OK, PENDING, STATUSES, RequestLog, status_names
from testbed.sim.elastic import ElasticFleet
from testbed.sim.fleet import FleetSampler
from testbed.sim.gc_pause import cyclic_gc_paused
from testbed.sim.host import SharedHost
from testbed.sim.injector import FaultInjector
from testbed.sim.network import BYTES_PER_TOKEN, NetworkState
from testbed.sim.replica import SimReplica
from testbed.sim.sessions import SessionDriver
from testbed.sim.timer import URGENT, Timer
from testbed.spec import Scenario, SpecError
from testbed.topology import Replica

ProgressCallback = Callable[[float], None]
STATUS_CODE = {name: code for code, name in enumerate(STATUSES)}


class ConservationError(RuntimeError):
    """Requests were lost or a replica stalled with work: a bug, never a result."""


def simulate(
    scenario: Scenario,
    seed: int | None = None,
    duration: float | None = None,
    progress: ProgressCallback | None = None,
) -> Result:
    """Run ``scenario`` in simulation and return its records and SLA verdicts.

    ``seed`` and ``duration`` override the scenario's own; ``progress`` is called with the
    fraction of simulated time done (for progress bars).
    """
    if duration is not None:
        scenario = scenario.model_copy(update={"duration": duration})
    run = _Run(draw(scenario, seed), progress)
    return run.execute()


@dataclass(slots=True, eq=False)
class _Attempt:
    """An attempt in flight: which request, which replica, its work item and path delay."""

    rid: int
    replica: int
    work: Sequence
    oneway: float
    started: float = 0.0
    hedge: bool = False
    delivered: bool = False


class _Run:
    """One simulation: builds the fleet, runs the event loop, checks conservation."""

    def __init__(self, drawn: Draw, progress: ProgressCallback | None) -> None:
        scenario = self.scenario = drawn.scenario
        self.draw = drawn
        self.progress = progress
        self.topology = drawn.topology
        self.streams = drawn.streams
        self.arrivals = drawn.arrivals
        self.horizon = drawn.horizon
        self.schedule = drawn.schedule
        self.env = simpy.Environment()
        self.plan = self.arrivals.agents
        self.singles = len(self.arrivals)  # requests 0..singles-1; agent calls follow
        self.total = self.singles + (self.plan.calls if self.plan else 0)
        self.log = RequestLog(self.total)
        batching = scenario.serving.batching
        self.caching = batching.prefix_caching
        self.prefix = self._prefix_columns()
        self.replicas = self._build_replicas()
        self.views = [
            ReplicaState(p.index, p.region, p.tier, self._slots(r.batcher), pool=p.pool, kv_tokens=r.batcher.kv_capacity)
            for p, r in zip(self.topology.replicas, self.replicas)
        ]
        self.gateway = Gateway(
            scenario.serving, self.views, self.arrivals.region_names, self.topology.rtt, drawn.policy_rng()
        )
        self.network = NetworkState()
        self.injector = FaultInjector(self.env, self.schedule, self.topology, self.replicas, self.network, self._on_lost_work)
        self.network_rng = self.streams.python("faults.network")
        self.error_rng = self.streams.python("faults.errors")
        # Per-request inputs as Python lists: scalar reads from lists are several times cheaper
        # than from numpy arrays, and the hot path reads each of them once per request.
        regions = self.arrivals.region_names
        columns = self._request_columns()
        self._client_region = [regions[i] for i in columns["client_region"].tolist()]
        self._priority = columns["priority"].tolist()
        self._prompt_tokens = columns["prompt_tokens"].tolist()
        self._output_tokens = columns["output_tokens"].tolist()
        self._request_class = columns["request_class"].tolist()
        self.columns = columns
        self.arrival_time = columns["time"]  # NaN for agent calls until (unless) they are made
        self.attempts: dict[int, _Attempt] = {}
        self._half_rtt: dict[str, list[float]] = {}
        self.attempt_log = AttemptLog()
        self.hedged = np.zeros(self.total, dtype=bool)
        self.failed_over = bytearray(self.total)  # a bool per request, set per request: bytes are cheap to set
        self.sessions = self._session_driver()
        self.elastic = ElasticFleet(self, scenario.elastic) if scenario.elastic is not None else None
        self.detected: list[tuple[int, float, str]] = []  # (replica, time, "unhealthy"/"healthy")
        self._deadlines: deque[tuple[float, int]] = deque()
        self._sweeper_armed = False
        self._request_timeout = scenario.serving.timeouts.request
        self._arrival_times: list[float] = []
        self._due_arrival = 0  # the single request the pending arrival timer is for
        self.ended = 0
        self.dropped = 0  # planned agent calls that will never be made
        self.done = self.env.event()

    # ------------------------------------------------------------------ building the run

    def _request_columns(self) -> dict[str, np.ndarray]:
        """Per-request inputs for single requests followed by every planned agent call."""
        arrivals, plan = self.arrivals, self.plan
        columns = {
            name: getattr(arrivals, name)
            for name in ("time", "client_region", "priority", "request_class", "prompt_tokens", "output_tokens")
        }
        if plan is None:
            return columns
        session = plan.call_session()
        calls = {
            "time": np.full(plan.calls, np.nan),
            "client_region": plan.client_region[session],
            "priority": plan.priority[session],
            "request_class": plan.request_class[session],
            "prompt_tokens": plan.prompt_tokens,
            "output_tokens": plan.output_tokens,
        }
        return {name: np.concatenate([columns[name], calls[name]]) for name in columns}

    def _prefix_columns(self) -> PrefixColumns | None:
        """Block chains of single requests then agent calls, when the workload has any."""
        arrivals = self.arrivals
        if arrivals.prefix is None:
            return None
        if self.plan is None:
            return arrivals.prefix
        calls = arrivals.call_prefix or PrefixColumns.none(self.plan.calls, arrivals.prefix.block_tokens)
        return PrefixColumns.concat([arrivals.prefix, calls])

    def _prefix_of(self, rid: int) -> Prefix | None:
        return self.prefix.prefix(rid) if self.prefix is not None else None

    def _session_driver(self) -> SessionDriver | None:
        agents = self.scenario.workload.agents
        if self.plan is None or agents is None:
            return None
        return SessionDriver(
            self.env,
            self.plan,
            agents.turn_budget,
            agents.adaptation,
            self.scenario.duration,
            self.singles,
            self._issue_call,
            self._drop_call,
        )

    def _build_replicas(self) -> list[SimReplica]:
        perf_cache: dict[tuple[str, int, str | None], PerfModel] = {}
        replicas = []
        for placement in self.topology.replicas:
            key = (placement.device_kind, placement.tensor_parallel, placement.model)
            if key not in perf_cache:
                perf_cache[key] = perf_model_for(self.scenario.topology, *key)
            replicas.append(
                SimReplica(
                    self.env,
                    placement.index,
                    placement.region,
                    self._batcher(placement),
                    perf_cache[key],
                    self._on_first_token,
                    self._on_finish,
                )
            )
        if self.scenario.topology.host_cores is not None:
            SharedHost(self.scenario.topology.host_cores, replicas)
        return replicas

    def _batcher(self, placement: Replica) -> Batcher:
        spec = self.scenario.serving.batching
        topology = self.scenario.topology
        try:
            kv_tokens = getattr(spec, "kv_cache_tokens", None) or kv_capacity_tokens(
                topology.model_kind(placement.model),
                topology.device_kind(placement.device_kind),
                placement.tensor_parallel,
                getattr(spec, "kv_cache_fraction", 0.9),
            )
        except ValueError as exc:
            raise SpecError(f"topology {topology.name!r}, replica {placement.name}: {exc}") from None
        return batcher_from_spec(spec, kv_tokens)

    @staticmethod
    def _slots(batcher: Batcher) -> int:
        return getattr(batcher, "max_num_seqs", None) or getattr(batcher, "max_batch_size", 1)

    # ------------------------------------------------------------------ requests and the gateway

    def _start_arrivals(self) -> None:
        """Single requests enter at their drawn times, one timer at a time.

        A chain of timers rather than a SimPy process (a generator resumed per arrival): the
        first timer is URGENT at time 0, where the process's start would have been, and each
        later one is set exactly as the process's ``timeout`` would have been, so the order of
        events is the same.
        """
        self._arrival_times = self.arrivals.time.tolist()
        Timer(self.env, 0.0, lambda _timer: self._arrivals_from(0), URGENT)

    def _arrivals_from(self, rid: int) -> None:
        """Admit request ``rid`` and the next ones while they are due; set a timer for the first that is not."""
        env, times = self.env, self._arrival_times
        while rid < len(times):
            if times[rid] > env.now:
                self._due_arrival = rid
                Timer(env, times[rid] - env.now, self._on_arrival_due)
                return
            self._admit(rid)
            rid += 1

    def _on_arrival_due(self, _timer: Timer) -> None:
        rid = self._due_arrival  # admitted without comparing times again: ``now`` is its time, to rounding
        self._admit(rid)
        self._arrivals_from(rid + 1)

    def _admit(self, rid: int) -> None:
        """Single request ``rid`` enters now."""
        self._deadlines.append((self._arrival_times[rid] + self._request_timeout, rid))
        if not self._sweeper_armed:
            self._arm_sweeper()
        pool = "default" if self.elastic is None else self.elastic.on_arrival(rid, "default")
        self._execute(self._arrive(rid, self.env.now, pool))

    def _issue_call(self, session: int, rid: int, call: Call) -> None:
        """An agent's call enters now; a turn deadline shorter than the timeout gets its own timer."""
        now = self.env.now
        self.arrival_time[rid] = now
        timeout_at = now + self.scenario.serving.timeouts.request
        self._deadlines.append((timeout_at, rid))  # same timeout for all: the queue stays in order
        if not self._sweeper_armed:
            self._arm_sweeper()
        if call.deadline is not None and call.deadline < timeout_at:
            self._later(max(0.0, call.deadline - now), lambda _timer: self._call_deadline(rid))
        self._execute(self._arrive(rid, now, call.pool))

    def _arrive(self, rid: int, now: float, pool: str = "default") -> list[Action]:
        """Hand a new request to the gateway, with its class (the gateway queue's turns) and its
        prefix when the workload has one."""
        return self.gateway.on_arrival(
            rid, self._priority[rid], self._client_region[rid], now, pool,
            prefix=self._prefix_of(rid) if self.prefix is not None else None, request_class=self._request_class[rid],
        )

    def _call_deadline(self, rid: int) -> None:
        if self.log.status[rid] == PENDING:
            self._execute(self.gateway.on_deadline(rid, self.env.now))

    def _drop_call(self, rid: int) -> None:
        self.dropped += 1
        self._check_done()

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self._dispatch(action)
            elif isinstance(action, Finish):
                self._finish(action)
            elif isinstance(action, Cancel):
                self._cancel(action)
            elif isinstance(action, Wake):
                self._wake(action)

    def _dispatch(self, action: Dispatch) -> None:
        """Send an attempt down its path; an unreachable replica fails it after the connect timeout
        (a refusing one, whose host is up, at once on arrival)."""
        rid, replica = action.rid, self.replicas[action.replica]
        if action.hedge:
            self.hedged[rid] = True
        client_region = self._client_region[rid]
        oneway = self._half_rtts(client_region)[action.replica]
        reachable = replica.alive or replica.refusing
        path = self.network.path(client_region, replica.region)
        if path is not None:
            if path.partitioned or (path.loss and self.network_rng.random() < path.loss):
                reachable = False
            oneway += max(0.0, path.sample_delay(self.network_rng))
            if path.bandwidth:
                oneway += self._prompt_tokens[rid] * BYTES_PER_TOKEN / path.bandwidth
        prompt, output = self._prompt_tokens[rid], self._output_tokens[rid]
        if self.elastic is not None:
            prompt, output = self.elastic.work_for(rid, prompt, output)
        work = Sequence(action.attempt, prompt, output, self.env.now + oneway)
        if self.caching:  # the chain the gateway routed on, built once at arrival
            work.prefix = self.gateway.requests[rid].prefix
        attempt = _Attempt(rid, action.replica, work, oneway, self.env.now, action.hedge)
        if action.hedge:
            self.attempt_log.traced.add(rid)
        self.attempts[action.attempt] = attempt
        if not reachable:
            self._later(self.scenario.serving.timeouts.connect, lambda _timer: self._attempt_ended(action.attempt, "unavailable"))
        elif oneway > 0:
            self._later(oneway, lambda _timer: self._deliver(action.attempt))
        else:
            self._deliver(action.attempt)

    def _half_rtts(self, client_region: str) -> list[float]:
        """Half the RTT from ``client_region`` to each replica: looked up once per region, not per attempt."""
        half = self._half_rtt.get(client_region)
        if half is None:
            half = self._half_rtt[client_region] = [self.topology.rtt(client_region, r.region) / 2 for r in self.replicas]
        return half

    def _deliver(self, key: int) -> None:
        attempt = self.attempts.get(key)
        if attempt is None:
            return  # cancelled on the way
        replica = self.replicas[attempt.replica]
        if not replica.alive:
            self._attempt_ended(key, "unavailable")
            return
        if not replica.batcher.fits(attempt.work):
            self._attempt_ended(key, Outcome.CLIENT_ERROR)  # a 400: the context does not fit this replica
            return
        rate = replica.error_rate
        if rate and self.error_rng.random() < rate:
            self._later(attempt.oneway, lambda _timer: self._attempt_ended(key, "failed"))
            return
        attempt.delivered = True
        replica.submit(attempt.work)

    def _attempt_ended(self, key: int, outcome: str) -> None:
        if key in self.attempts:
            self.attempt_log.ended(key, self.attempts[key], outcome, self.env.now)
            self._execute(self.gateway.on_attempt_end(key, outcome, self.env.now))
            self.attempts.pop(key, None)

    def _on_first_token(self, work: Sequence, now: float) -> None:
        attempt = self.attempts.get(work.key)
        if attempt is None:
            return
        rid = attempt.rid
        if self.log.first_token[rid] != self.log.first_token[rid]:  # NaN: the first one back
            self.log.first_token[rid] = now + attempt.oneway
            self.log.cached_tokens[rid] = work.cached
            if self.elastic is not None:
                self.elastic.on_first_token(rid, now + attempt.oneway - self.arrival_time[rid])
        self._execute(self.gateway.on_first_token(work.key, now))

    def _on_finish(self, work: Sequence, now: float) -> None:
        self._attempt_ended(work.key, "ok")

    def _on_lost_work(self, work: Sequence, now: float) -> None:
        """A replica crashed with this attempt on it: the client sees the connection drop (or, in
        an elastic fleet, the stream migrates)."""
        if self.elastic is not None and self.elastic.migrate(work, now):
            return
        self._attempt_ended(work.key, "failed")

    def _cancel(self, action: Cancel) -> None:
        attempt = self.attempts.pop(action.attempt, None)
        if attempt is not None:
            self.attempt_log.ended(action.attempt, attempt, "cancelled", self.env.now)
        if attempt is not None and attempt.delivered:
            replica = self.replicas[attempt.replica]
            if replica.alive:
                replica.cancel(attempt.work)

    def _wake(self, action: Wake) -> None:
        self._later(
            max(0.0, action.at - self.env.now),
            lambda _timer: self._execute(self.gateway.on_timer(action.rid, action.tag, self.env.now)),
        )

    def _finish(self, action: Finish) -> None:
        rid, now = action.rid, self.env.now
        if action.status == "ok":
            attempt = self.attempts[action.attempt]
            self.log.replica[rid] = attempt.replica
            if self.elastic is not None:
                self.elastic.on_answered(rid)
            self._end(rid, OK, now + attempt.oneway)
        else:
            self._end(rid, STATUS_CODE[action.status], now)
        self.log.retries[rid] = action.retries
        self.failed_over[rid] = action.failed_over

    def _end(self, rid: int, status: int, at: float) -> None:
        self.log.end(rid, status, at)
        self.ended += 1
        if rid >= self.singles and self.sessions is not None:
            self.sessions.on_call_end(rid, status == OK, at)
        self._check_done()

    def _check_done(self) -> None:
        """Every request, and every planned agent call, is accounted for: the run is over."""
        if self.ended + self.dropped == self.total and not self.done.triggered:
            self.done.succeed()

    def _later(self, delay: float, callback: Callable[[Timer], None]) -> None:
        Timer(self.env, delay, callback)

    # ------------------------------------------------------------------ deadlines and health

    def _arm_sweeper(self) -> None:
        """Sleep until the oldest unfinished request's deadline (one timer for all requests).

        Every request has the same timeout, so deadlines come in arrival order: a queue whose
        head is the next to expire. Requests that ended are skipped as the head passes them.
        """
        status = self.log.status
        while self._deadlines and status[self._deadlines[0][1]] != PENDING:
            self._deadlines.popleft()
        if not self._deadlines:
            self._sweeper_armed = False
            return
        self._sweeper_armed = True
        self._later(max(0.0, self._deadlines[0][0] - self.env.now), self._sweep)

    def _sweep(self, _timer: Timer) -> None:
        now, status = self.env.now, self.log.status
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = self._deadlines.popleft()
            if status[rid] == PENDING:
                self._execute(self.gateway.on_deadline(rid, now))
        self._arm_sweeper()

    def _health_process(self) -> Iterator[simpy.Event]:
        """Probe each replica when the gateway's health checker says it is due — the staggered
        schedule the live gateway follows — and tick the policies after each round of probes.
        A failing probe is known only after its timeout, a refused one at once."""
        spec = self.scenario.serving.health_check
        if not spec.enabled:
            return
        checker = self.gateway.health
        while not self.done.triggered and (due := checker.next_due()) is not None:
            if due > self.env.now:
                yield self.env.timeout(due - self.env.now)
            failing = []
            for index in checker.probe_due(self.env.now):
                replica = self.replicas[index]
                if replica.parked:
                    continue  # an empty slot: nothing to probe, and the gateway knows it is out
                ok = replica.alive and not (replica.hung and spec.deep)
                if ok or replica.refusing:
                    self._probe(index, ok)
                else:
                    failing.append(index)
            if failing:
                self._later(spec.timeout, lambda _timer, failing=failing: [self._probe(i, False) for i in failing])
            self.gateway.on_tick(self.env.now)
            if self.gateway.queue is not None:
                self._execute(self.gateway.drain(self.env.now))  # replicas back in service take waiting requests

    def _probe(self, replica: int, ok: bool) -> None:
        change = self.gateway.on_probe(replica, ok, self.env.now)
        if change is not None:
            self.detected.append((replica, self.env.now, change))

    # ------------------------------------------------------------------ run

    def execute(self) -> Result:
        scenario = self.scenario
        sampler = FleetSampler(
            self.env, self.replicas, scenario.timeseries_interval, self.horizon, self.progress, caching=self.caching
        )
        started = time.perf_counter()
        self._start_arrivals()
        if self.sessions is not None:
            self.sessions.start()
        self.env.process(self._deadline(self.horizon))
        self.env.process(sampler.run(self.done))
        self.env.process(self.injector.run())
        self.env.process(self._health_process())
        if self.elastic is not None:
            self.elastic.start()
        if self.total == 0:
            self.done.succeed()
        with cyclic_gc_paused():
            self.env.run(until=self.done)
        self._time_out_unfinished()
        sampler.sample()
        wall = time.perf_counter() - started
        requests = self._requests_frame()
        stats = {
            "wall_s": wall,
            "requests": len(requests),
            "simulated_s": self.env.now,
            "faults": len(self.schedule),
            "preemptions": sum(getattr(r.batcher, "preemptions", 0) for r in self.replicas),
        }
        if self.elastic is not None:
            stats |= self.elastic.stats(requests, self.env.now)
        if self.sessions is not None:
            stats |= {
                "agent_sessions": self.plan.sessions,
                "agent_calls_skipped": self.sessions.skipped,
                "agent_calls_degraded": int(self.sessions.degraded.sum()),
            }
        result = finish_run(
            self.draw,
            requests,
            timeseries=sampler.frame(),
            attempts=self.attempt_log.frame(),
            health=self.detected,
            stats=stats,
        )
        if self.elastic is not None:
            result = dataclasses.replace(result, fleet=self.elastic.frame())
        return result

    def _deadline(self, at: float) -> Iterator[simpy.Event]:
        yield self.env.timeout(at)
        if not self.done.triggered:
            self.done.succeed()

    def _time_out_unfinished(self) -> None:
        """At the horizon, every unfinished request must still be known to the gateway.

        This is the conservation check: a request neither ended nor tracked by the gateway was
        lost by a bug, and a replica holding work with no timer pending has stalled. Requests
        still running at the horizon (a drain shorter than the timeout) time out.
        """
        made = ~np.isnan(self.arrival_time)  # planned agent calls never made are not requests
        pending = np.flatnonzero((self.log.numpy("status") == PENDING) & made).tolist()
        lost = [rid for rid in pending if rid not in self.gateway.requests]
        if lost:
            raise ConservationError(f"{len(lost)} requests were lost: neither ended nor tracked by the gateway")
        for replica in self.replicas:
            if replica.alive and not replica.hung and replica.holds_work and not replica.busy and replica.batcher.wake_time() is None:
                raise ConservationError(f"replica {replica.index} holds requests but has stopped working")
        now = self.env.now
        for rid in pending:
            self._execute(self.gateway.on_deadline(rid, now))

    def _agent_columns(self) -> dict[str, np.ndarray | pd.Categorical]:
        """session_id, turn, stage and degraded: -1/""/False for single requests."""
        singles, plan = self.singles, self.plan
        stage_names = [""] + ([s.name for s in plan.stages] if plan else [])
        session = np.full(self.total, -1, dtype=np.int64)
        turn = np.full(self.total, -1, dtype=np.int32)
        stage = np.zeros(self.total, dtype=np.int16)
        degraded = np.zeros(self.total, dtype=bool)
        if plan is not None and self.sessions is not None:
            session[singles:] = plan.call_session()
            turn[singles:] = plan.call_turn_number()
            stage[singles:] = plan.stage + 1
            degraded[singles:] = self.sessions.degraded
        return {
            "session_id": session,
            "turn": turn,
            "stage": pd.Categorical.from_codes(stage, stage_names),
            "degraded": degraded,
        }

    def _requests_frame(self) -> pd.DataFrame:
        """One row per request that entered (agent calls never made have no row); ``fault_overlap``
        is the shared tail's to add."""
        arrivals, arrival = self.arrivals, self.arrival_time
        log = {column: self.log.numpy(column) for column in RequestLog.DTYPES}
        n = self.total
        region_of_replica = np.array([self.topology.regions.index(r.region) for r in self.replicas] + [-1])
        tier_fallback = np.array([p.tier == "fallback" for p in self.topology.replicas] + [False])
        agent = self._agent_columns()
        frame = pd.DataFrame(
            {
                "request_id": np.arange(n, dtype=np.int64),
                "session_id": agent["session_id"],
                "turn": agent["turn"],
                "stage": agent["stage"],
                "request_class": pd.Categorical.from_codes(self.columns["request_class"], arrivals.class_names),
                "priority": self.columns["priority"].astype(np.int16),
                "client_region": pd.Categorical.from_codes(self.columns["client_region"], arrivals.region_names),
                "arrival": arrival,
                "first_token": log["first_token"],
                "finish": log["finish"],
                "prompt_tokens": self.columns["prompt_tokens"].astype(np.int32),
                "output_tokens": self.columns["output_tokens"].astype(np.int32),
                "cached_tokens": log["cached_tokens"],
                "status": status_names(log["status"]),
                "replica": log["replica"],
                "region": pd.Categorical.from_codes(region_of_replica[log["replica"]], self.topology.regions),
                "retries": log["retries"],
                "hedged": self.hedged,
                "failed_over": np.frombuffer(self.failed_over, dtype=bool),
                "fallback": tier_fallback[log["replica"]],
                "degraded": agent["degraded"] if self.elastic is None else agent["degraded"] | self.elastic.degraded,
            }
        )
        if self.plan is None:
            return frame
        return frame[~np.isnan(arrival)].reset_index(drop=True)

