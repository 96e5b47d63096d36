"""Live replay: a scenario played against the real stack in wall-clock time.

:func:`run_live` is the live twin of :func:`testbed.sim.simulate`. It starts from the same
:func:`testbed.draw.draw` of the scenario and seed — the same arrivals, lengths, classes and client
regions, the same fault schedule, the same gateway-policy random stream — then:

1. refuses what this machine cannot hold (:mod:`testbed.live.sizing`; ``scale`` shrinks first)
   and what the live stack cannot reproduce (:func:`testbed.live.injector.plan`);
2. brings up :class:`~testbed.live.stack.LiveStack`: one replica process per replica of the
   topology, grouped into its regions, behind chaos proxies and a gateway running the
   scenario's ``serving:`` policies;
3. sends each request at its arrival time as a streamed completion of exactly its prompt length
   and output length — seeded token ids that share prefixes as the draw's chains do
   (:mod:`testbed.live.prompts`), sessions named by ``user`` — while the injector applies the
   fault schedule at its times (SIGKILL, SIGSTOP, proxy cuts and toxics, replica chaos hooks);
4. collects the gateway's records (the simulator's schema) and ends with the simulator's tail,
   :func:`testbed.finish.finish_run` (faults, overlaps, verdicts, observation), writing the same
   files as ``testbed run``. The stack is torn down on the way out, whatever happened —
   Ctrl-C included.

While it runs, ``on_event`` hears of each fault fired and repaired and gets the client's counters
every few seconds (:mod:`testbed.live.progress`); the host's load goes in the stats.

Times in the records count from the moment the first request could be sent (the stack is up),
like simulated time counts from zero. Conservation holds as in simulation: every request sent
leaves exactly one row with a final status; a row still pending after the drain is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from testbed import workload
from testbed.draw import Draw, draw
from testbed.faults import Fault
from testbed.finish import finish_run
from testbed.live.elastic import LiveFleet, check_supported as check_elastic_supported, spare_replicas
from testbed.live.injector import Action, Injector, plan
from testbed.live.progress import Counters, EventCallback, LoadWatch, ReportingTarget, report_every
from testbed.live.prompts import independent_prompts, session_users, structured_prompts
from testbed.live.serving import check_cache_serving
from testbed.live.sizing import Machine, check_fits, scale as scale_scenario
from testbed.records.attempts import attempts_frame
from testbed.records.result import Result
from testbed.report import write_run
from testbed.spec import ContinuousBatching, Scenario, SpecError
from testbed.topology import Topology

LEAD = 0.5  # seconds between the stack being up and the first arrival time
ProgressCallback = Callable[[str], None]


@dataclass
class ReplayPlan:
    """Everything a live run does, decided before any process starts (pure, deterministic)."""

    draw: Draw
    actions: list[Action]
    prompts: list[list[int]]
    users: list[str | None] = dataclasses.field(default_factory=list)  # per request: its session's ``user``

    @property
    def scenario(self) -> Scenario:
        return self.draw.scenario

    @property
    def seed(self) -> int:
        return self.draw.seed

    @property
    def topology(self) -> Topology:
        return self.draw.topology

    @property
    def arrivals(self) -> workload.Arrivals:
        return self.draw.arrivals

    @property
    def schedule(self) -> list[Fault]:
        return self.draw.schedule


def prepare(scenario: Scenario, seed: int | None = None, vocabulary: int = 2048) -> ReplayPlan:
    """The simulation's draw of the scenario, the prompts' token ids, and the fault actions."""
    if scenario.workload.agents is not None:
        raise SpecError(f"{scenario.name}: workload.agents: agent sessions are not replayed live; drop workload.agents")
    refuse_cache_fields(scenario)
    check_elastic_supported(scenario)
    drawn = draw(scenario, seed)
    rng = random.Random(drawn.streams.python("live.prompts").random())
    lengths = drawn.arrivals.prompt_tokens.tolist()
    chains = drawn.arrivals.prefix
    if chains is None:
        prompts = independent_prompts(lengths, rng, vocabulary)
    else:
        prompts = structured_prompts(lengths, chains, rng, vocabulary)
    return ReplayPlan(drawn, plan(drawn.schedule, drawn.topology), prompts, session_users(chains, len(lengths)))


def refuse_cache_fields(scenario: Scenario) -> None:
    """Cache-related fields the live stack cannot carry out yet: refused, never silently dropped.

    The simulation plane honours all of them (docs/caching.md); live, prefix caching, prefix
    structure (synthetic or a Mooncake trace's ``hash_ids``), the cache-aware routers and the
    gateway queue run, and :func:`testbed.live.serving.check_cache_serving` names what does not.
    """
    try:
        check_cache_serving(scenario.serving)
    except SpecError as exc:
        raise SpecError(f"{scenario.name}: {exc}") from None


def run_live(
    scenario: Scenario,
    seed: int | None = None,
    out_dir: str | Path | None = None,
    engine: str = "torch",
    scale: float | None = None,
    duration: float | None = None,
    progress: ProgressCallback | None = None,
    machine: Machine | None = None,
    on_event: EventCallback | None = None,
) -> Result:
    """Replay ``scenario`` on the live stack; the same :class:`Result` as a simulation."""
    if scale is not None:
        scenario = scale_scenario(scenario, scale)
    if duration is not None:
        scenario = scenario.model_copy(update={"duration": duration})
    here = machine or Machine.here()
    check_fits(scenario, here)
    cores = scenario.topology.host_cores
    if cores is not None and cores > here.cores:
        # The simulation shares host_cores among the replicas; live, the machine shares what it has.
        raise SpecError(
            f"{scenario.name}: topology.host_cores: {cores:g} cores described, but this machine gives the live stack "
            f"{here.cores}; set host_cores to at most {here.cores} (or unset it) to replay it here"
        )
    batching = scenario.serving.batching
    if engine == "torch" and isinstance(batching, ContinuousBatching):
        raise SpecError(
            f"{scenario.name}: serving.batching: the built-in engine micro-batches; set policy: micro "
            "(with max_batch_size and max_queue_delay) to replay it live, or use --engine vllm"
        )
    replay = prepare(scenario, seed)
    result = asyncio.run(_replay(replay, engine, progress or (lambda _: None), on_event or (lambda _: None)))
    if out_dir is not None:
        write_run(result, out_dir)
    return result


class _StackTarget:
    """Carries out injector actions on a :class:`~testbed.live.stack.LiveStack`."""

    def __init__(self, stack, topology: Topology) -> None:
        self.stack = stack
        self.names = [r.name for r in topology.replicas]
        self.regions = {r: [p.name for p in topology.replicas if p.region == r] for r in topology.regions}

    async def perform(self, action: Action) -> None:
        stack, verb = self.stack, action.verb
        if verb in ("kill", "restart", "pause", "resume"):
            await getattr(stack, verb)(self.names[action.target])
        elif verb == "cut":
            await stack.cut_region(action.target)
        elif verb == "heal":
            await stack.heal(action.target)
        elif verb == "hooks":
            params = dict(action.params)
            if "error_status" in params:
                params["error_status"] = [int(params["error_status"])]
            await stack.chaos(self.names[action.target], **params)
        elif verb in ("toxic", "untoxic"):
            name = f"{action.params['kind']}-{action.fault}"
            for replica in self.regions[action.target]:
                if verb == "toxic":
                    await stack.add_toxic(replica, name, _toxic(action.params))
                else:
                    await stack.remove_toxic(replica, name)
        else:
            raise ValueError(f"unknown live action {verb!r}")


def _toxic(params: dict):
    """The chaos-proxy toxic for a network fault: a partition drops everything (a black hole)."""
    from testbed.live.chaos_proxy import Bandwidth, Latency, Timeout

    kind = params["kind"]
    if kind == "partition":
        return Timeout()
    if kind == "latency":
        return Latency(latency_ms=params["delay"] * 1000, jitter_ms=params.get("jitter", 0.0) * 1000)
    return Bandwidth(rate_kbps=params["limit"] * 8 / 1000)


async def _replay(replay: ReplayPlan, engine: str, progress: ProgressCallback, on_event: EventCallback) -> Result:
    from testbed.live.stack import LiveStack, plans_from_topology

    scenario = replay.scenario
    model = scenario.topology.model if isinstance(scenario.topology.model, str) else "tiny"
    progress(f"starting {len(replay.topology.replicas)} replicas of {model} ({engine})")
    async with LiveStack(
        scenario.serving,
        plans_from_topology(replay.topology),
        model=model,
        engine=engine,
        seed=replay.seed,
        rtt=replay.topology.rtt,
        migration=scenario.elastic.migration if scenario.elastic is not None else None,
        parked=spare_replicas(replay.topology, scenario),  # an elastic fleet's spare slots start only on a scale-up
    ) as stack:
        fleet = LiveFleet(stack, replay.topology, scenario) if scenario.elastic is not None else None
        if fleet is not None:
            await fleet.park()  # spare slots stop before the clock starts
        started = time.monotonic() + LEAD
        offset = started - stack.start  # stack clock -> replay clock
        progress(f"replaying {len(replay.arrivals):,} requests over {scenario.duration:g} s with {len(replay.actions)} fault actions")
        names = [r.name for r in replay.topology.replicas]
        target = ReportingTarget(_StackTarget(stack, replay.topology), replay.schedule, names, started, on_event)
        injector = Injector(target, replay.actions, started)
        if fleet is not None:
            fleet.begin(offset)
        faults_task = asyncio.create_task(injector.run())
        counters, load = Counters(), LoadWatch()
        reporter = asyncio.create_task(report_every(counters, load, started, on_event))
        try:
            unreached = await _send_all(replay, stack.gateway_url, model, started, counters)
        finally:
            reporter.cancel()
            injector.stop()  # the run is over; an action under way (a restart) completes first
            await faults_task
            if fleet is not None:
                await fleet.close()
        requests = stack.records()
        health = list(stack.gateway.health_events) if stack.gateway is not None else []
    result = _result(replay, requests, health, offset, injector, unreached, load.stats())
    if fleet is not None:
        result = dataclasses.replace(result, stats=result.stats | fleet.stats(result.requests), fleet=fleet.frame())
    return result


async def _send_all(replay: ReplayPlan, url: str, model: str, started: float, counters: Counters) -> list[tuple[int, float]]:
    """Every request at its arrival time; returns, once each has ended, those that never got an
    answer from the gateway: (request index, seconds after ``started`` when the client gave up)."""
    arrivals = replay.arrivals
    timeout = replay.scenario.serving.timeouts.request + 10
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        tasks = [
            asyncio.create_task(_send(client, replay, i, model, started + at, counters))
            for i, at in enumerate(arrivals.time.tolist())
        ]
        answered = await asyncio.gather(*tasks)
    return [(i, gave_up - started) for i, gave_up in enumerate(answered) if gave_up is not None]


async def _send(client: httpx.AsyncClient, replay: ReplayPlan, i: int, model: str, at: float, counters: Counters) -> float | None:
    """Send request ``i`` at ``at`` and read its answer; the time it failed if none ever came."""
    arrivals = replay.arrivals
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    body = {
        "model": model,
        "prompt": replay.prompts[i],
        "max_tokens": int(arrivals.output_tokens[i]),
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # vLLM honours it; the built-in random-weight models practically never emit EOS
    }
    if replay.users and replay.users[i] is not None:
        body["user"] = replay.users[i]  # its session, for session_affinity
    headers = {
        "x-request-id": str(i),  # the gateway records it as the row's id: rows match the workload exactly
        "x-client-region": arrivals.region_names[arrivals.client_region[i]],
        "x-priority": str(int(arrivals.priority[i])),
        "x-request-class": arrivals.class_names[arrivals.request_class[i]],
    }
    # The gateway records the outcome of what it accepted; the client only has to listen, and
    # to remember the requests the gateway never answered at all (it was too busy to accept them).
    answered = ok = False
    counters.sent += 1
    with contextlib.suppress(httpx.HTTPError):
        async with client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
            answered = True
            async for _ in response.aiter_raw():
                pass
            ok = response.status_code == 200
    if ok:
        counters.ok += 1
    else:
        counters.failed += 1
    return None if answered else time.monotonic()


def _result(
    replay: ReplayPlan,
    requests: pd.DataFrame,
    health: list,
    offset: float,
    injector: Injector,
    unreached: list[tuple[int, float]],
    host: dict | None = None,
) -> Result:
    """The live records on the replay clock, finished by the simulation's own tail.

    Conservation: every request sent is a gateway record, or one of those the gateway never
    answered (``unreached``), which the client records as failed — the gateway was too busy to
    accept them, and a client sees exactly that.
    """
    n = len(replay.arrivals)
    pending = int((requests["status"] == "pending").sum())
    missing = n - len(requests)
    if pending or missing < 0 or missing > len(unreached):
        raise RuntimeError(
            f"conservation: {n} requests sent, {len(requests)} recorded by the gateway, {len(unreached)} never answered, "
            f"{pending} never ended"
        )
    requests = requests.copy()
    for column in ("arrival", "first_token", "finish"):
        requests[column] = requests[column] - offset
    if missing:
        requests = pd.concat([requests, _unreached_rows(requests, replay, unreached[:missing])], ignore_index=True)
    requests = requests.sort_values("request_id", ignore_index=True)  # workload order, as simulated
    _fill_lengths(requests, replay.arrivals)
    stats = {
        "wall_s": float(np.nanmax(requests["finish"].to_numpy(), initial=0.0)),
        "requests": n,
        "faults": len(replay.schedule),
        "live_actions": len(injector.done),
        "live_action_failures": [f"{a.verb} {a.target} at {a.at:g}s: {why}" for a, why in injector.failures],
        "live_action_lag_s": max((done - a.at for done, a in injector.done), default=0.0),
        # How long each restart took to serve (process start, model load): the profile's
        # startup_seconds is the simulation's figure for it.
        "live_restart_s": [round(done - a.at, 3) for done, a in injector.done if a.verb == "restart"],
        **(host or {}),  # the host's load average over the run (testbed.live.progress.LoadWatch)
    }
    # Observability reads health-probe changes as the simulation records them; the live gateway's
    # attempts are in its traces rather than rows, so the attempt table is empty.
    return finish_run(
        replay.draw,
        requests,
        timeseries=pd.DataFrame(),
        attempts=attempts_frame([]),
        health=[(replica, t - offset, change) for replica, t, change in health],
        stats=stats,
    )


def _unreached_rows(requests: pd.DataFrame, replay: ReplayPlan, unreached: list[tuple[int, float]]) -> pd.DataFrame:
    """Failed rows, in the records' schema, for requests the gateway never accepted."""
    arrivals = replay.arrivals
    index = np.array([i for i, _ in unreached], dtype=np.int64)
    columns: dict[str, object] = {
        "request_id": index,
        "session_id": np.full(len(index), -1),
        "turn": np.full(len(index), -1),
        "stage": [""] * len(index),
        "request_class": [arrivals.class_names[c] for c in arrivals.request_class[index]],
        "priority": arrivals.priority[index],
        "client_region": [arrivals.region_names[r] for r in arrivals.client_region[index]],
        "arrival": arrivals.time[index],
        "first_token": np.full(len(index), np.nan),
        "finish": np.array([t for _, t in unreached]),
        "prompt_tokens": arrivals.prompt_tokens[index],
        "output_tokens": arrivals.output_tokens[index],
        "cached_tokens": np.zeros(len(index), dtype=np.int32),
        "status": ["failed"] * len(index),
        "replica": np.full(len(index), -1),
        "region": [None] * len(index),
        "retries": np.zeros(len(index)),
        **{flag: np.zeros(len(index), dtype=bool) for flag in ("hedged", "failed_over", "fallback", "degraded", "fault_overlap")},
    }
    frame = pd.DataFrame(columns)
    for name, dtype in requests.dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype):
            categories = list(dtype.categories) + [v for v in frame[name].dropna().unique() if v not in dtype.categories]
            frame[name] = pd.Categorical(frame[name], categories=categories)
            requests[name] = requests[name].cat.set_categories(categories)
        else:
            frame[name] = frame[name].astype(dtype)
    return frame[list(requests.columns)]


def _fill_lengths(requests: pd.DataFrame, arrivals: workload.Arrivals) -> None:
    """Rows the replica never answered carry no usage: give them the lengths that were asked for.

    A row's ``request_id`` is the workload index the client sent as ``x-request-id``; answered
    rows keep the lengths the replica reported.
    """
    ids = requests["request_id"].to_numpy()
    for column, asked in (("prompt_tokens", arrivals.prompt_tokens), ("output_tokens", arrivals.output_tokens)):
        values = requests[column].to_numpy().copy()
        missing = values == 0
        values[missing] = asked[ids[missing]]
        requests[column] = values.astype(np.int32)

