"""The simulation plane: a scenario run in SimPy time against the shared policies.

One SimPy environment holds the arrival process, the fleet sampler and every replica's
iteration timers. Requests are routed when they arrive (the router sees the fleet as it is at
that instant), travel half the client-to-region RTT to their replica, are batched and served
there, and their tokens travel the other half back. All randomness comes from named streams of
the scenario's seed, so a run is reproducible to the byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import simpy

from testbed import workload
from testbed.observe.records import FAILED, OK, TIMEOUT, RequestLog, status_names
from testbed.perf import PerfModel, kv_capacity_tokens, perf_model_for
from testbed.policy.batching import Batcher, ContinuousBatcher, DelayController, MicroBatcher, Sequence
from testbed.policy.routing import make_router
from testbed.result import Result
from testbed.rng import RandomStreams
from testbed.sim.fleet import FleetSampler
from testbed.sim.replica import SimReplica
from testbed.sla import evaluate
from testbed.spec import ContinuousBatching, Scenario
from testbed.topology import Replica, Topology

ProgressCallback = Callable[[float], None]


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
    run = _Run(scenario, scenario.seed if seed is None else seed, progress)
    return run.execute()


class _Run:
    """One simulation: builds the fleet, runs the event loop, checks conservation."""

    def __init__(self, scenario: Scenario, seed: int, progress: ProgressCallback | None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.progress = progress
        self.topology = Topology.from_spec(scenario.topology)
        self.streams = RandomStreams(seed)
        serving = {p.region for p in self.topology.replicas if p.tier == "primary"}
        primary = [r for r in self.topology.regions if r in serving] or self.topology.regions
        self.arrivals = workload.generate(scenario.workload, scenario.duration, primary, self.streams)
        self.env = simpy.Environment()
        self.log = RequestLog(len(self.arrivals))
        self.replicas = self._build_replicas()
        self.router = make_router(
            scenario.serving.routing, self.replicas, self.topology.rtt, self.streams.python("policy.routing")
        )
        # Per-request inputs as Python lists: scalar reads from lists are several times cheaper
        # than from numpy arrays, and the hot path reads each of them once per request.
        regions = self.arrivals.region_names
        self._client_region = [regions[i] for i in self.arrivals.client_region.tolist()]
        self._prompt_tokens = self.arrivals.prompt_tokens.tolist()
        self._output_tokens = self.arrivals.output_tokens.tolist()
        self.oneway = [0.0] * len(self.arrivals)
        self.in_network = 0
        self.ended = 0
        self.done = self.env.event()

    def _build_replicas(self) -> list[SimReplica]:
        perf_cache: dict[tuple[str, int], PerfModel] = {}
        replicas = []
        for placement in self.topology.replicas:
            key = (placement.device_kind, placement.tensor_parallel)
            if key not in perf_cache:
                perf_cache[key] = perf_model_for(self.scenario.topology, *key)
            replicas.append(
                SimReplica(
                    self.env,
                    placement.index,
                    placement.region,
                    placement.tier,
                    self._batcher(placement),
                    perf_cache[key],
                    self._on_first_token,
                    self._on_finish,
                )
            )
        return replicas

    def _batcher(self, placement: Replica) -> Batcher:
        spec = self.scenario.serving.batching
        topology = self.scenario.topology
        kv_tokens = getattr(spec, "kv_cache_tokens", None) or kv_capacity_tokens(
            topology.model_kind(),
            topology.device_kind(placement.device_kind),
            placement.tensor_parallel,
            getattr(spec, "kv_cache_fraction", 0.9),
        )
        if isinstance(spec, ContinuousBatching):
            return ContinuousBatcher(spec.max_num_seqs, spec.max_num_batched_tokens, kv_tokens)
        controller = None
        if spec.adaptive:
            assert spec.target_latency is not None  # the spec enforces it
            controller = DelayController(spec.max_queue_delay, spec.target_latency)
        return MicroBatcher(spec.max_batch_size, spec.max_queue_delay, kv_tokens, controller)

    # ------------------------------------------------------------------ event handlers

    def _arrival_process(self) -> Iterator[simpy.Event]:
        env = self.env
        times = self.arrivals.time.tolist()
        for rid, at in enumerate(times):
            if at > env.now:
                yield env.timeout(at - env.now)
            self._route(rid)

    def _route(self, rid: int) -> None:
        now = self.env.now
        client_region = self._client_region[rid]
        replica = self.router.choose(client_region, now)
        if replica is None:
            self._end(rid, FAILED, now)  # nothing to serve it: the fleet is down
            return
        oneway = self.topology.rtt(client_region, replica.region) / 2
        seq = Sequence(rid, self._prompt_tokens[rid], self._output_tokens[rid], now + oneway)
        if not replica.batcher.fits(seq):
            self._end(rid, FAILED, now)  # context longer than the replica's KV cache: a 400 in real life
            return
        self.oneway[rid] = oneway
        self.log.replica[rid] = replica.index
        replica.outstanding += 1
        if oneway > 0:
            self.in_network += 1
            self.env.timeout(oneway).callbacks.append(lambda _e: self._deliver(replica, seq))
        else:
            replica.submit(seq)

    def _deliver(self, replica: SimReplica, seq: Sequence) -> None:
        self.in_network -= 1
        replica.submit(seq)

    def _on_first_token(self, seq: Sequence, now: float) -> None:
        self.log.first_token[seq.rid] = now + self.oneway[seq.rid]

    def _on_finish(self, seq: Sequence, now: float) -> None:
        self._end(seq.rid, OK, now + self.oneway[seq.rid])

    def _end(self, rid: int, status: int, at: float) -> None:
        self.log.end(rid, status, at)
        self.ended += 1
        if self.ended == len(self.arrivals) and not self.done.triggered:
            self.done.succeed()

    def _deadline(self, at: float) -> Iterator[simpy.Event]:
        yield self.env.timeout(at)
        if not self.done.triggered:
            self.done.succeed()

    # ------------------------------------------------------------------ run

    def execute(self) -> Result:
        scenario = self.scenario
        horizon = scenario.duration + scenario.drain
        sampler = FleetSampler(self.env, self.replicas, scenario.timeseries_interval, horizon, self.progress)
        started = time.perf_counter()
        self.env.process(self._arrival_process())
        self.env.process(self._deadline(horizon))
        self.env.process(sampler.run(self.done))
        if len(self.arrivals) == 0:
            self.done.succeed()
        self.env.run(until=self.done)
        self._time_out_unfinished()
        sampler.sample()
        wall = time.perf_counter() - started
        requests = self._requests_frame()
        verdicts = evaluate(scenario.sla, requests, (scenario.warmup, scenario.duration))
        stats = {
            "wall_s": wall,
            "requests": len(self.arrivals),
            "simulated_s": self.env.now,
            "preemptions": sum(getattr(r.batcher, "preemptions", 0) for r in self.replicas),
        }
        return Result(scenario, self.seed, requests, sampler.frame(), verdicts, stats)

    def _time_out_unfinished(self) -> None:
        """At the deadline, every unfinished request must be held somewhere; those time out.

        This is the conservation check: a request neither ended nor held by a replica or the
        network was lost by a bug, and a replica holding work with no timer pending has stalled.
        """
        pending = self.log.pending()
        if pending == 0:
            return
        held = self.in_network + sum(r.batcher.queued + r.batcher.running for r in self.replicas)
        if held != pending:
            raise ConservationError(f"{pending - held} requests were lost: neither ended nor held by a replica")
        for replica in self.replicas:
            if (replica.batcher.queued or replica.batcher.running) and not replica.busy and replica.batcher.wake_time() is None:
                raise ConservationError(f"replica {replica.index} holds requests but has stopped working")
        now = self.env.now
        for rid in np.flatnonzero(self.log.status == 0).tolist():
            self._end(rid, TIMEOUT, now)

    def _requests_frame(self) -> pd.DataFrame:
        arrivals, log = self.arrivals, self.log
        n = len(arrivals)
        region_of_replica = np.array([self.topology.regions.index(r.region) for r in self.replicas] + [-1])
        return pd.DataFrame(
            {
                "request_id": np.arange(n, dtype=np.int64),
                "session_id": np.full(n, -1, dtype=np.int64),
                "request_class": pd.Categorical.from_codes(arrivals.request_class, arrivals.class_names),
                "priority": arrivals.priority.astype(np.int16),
                "client_region": pd.Categorical.from_codes(arrivals.client_region, arrivals.region_names),
                "arrival": arrivals.time,
                "first_token": log.first_token,
                "finish": log.finish,
                "prompt_tokens": arrivals.prompt_tokens.astype(np.int32),
                "output_tokens": arrivals.output_tokens.astype(np.int32),
                "status": status_names(log.status),
                "replica": log.replica,
                "region": pd.Categorical.from_codes(region_of_replica[log.replica], self.topology.regions),
                "retries": log.retries,
            }
        )
