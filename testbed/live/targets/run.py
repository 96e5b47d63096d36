"""A scenario run against the user's own deployment: the driver that ties the pieces together.

:func:`run_target` draws the scenario as every live run does (same arrivals, same fault
schedule for the seed), binds it to the target (:mod:`.plan`: refusals happen here, before
anything starts), and then, with the journal open from the first moment:

1. puts a chaos proxy in front of each endpoint that asks for one, and in *gateway mode* the
   project's gateway (the scenario's ``serving:`` policies) in front of the endpoints;
2. checks the steady-state hypothesis — if it does not hold, no fault is injected;
3. sends the workload (to the user's entry point in *client mode*, to the gateway otherwise)
   while the injector carries out the faults through the endpoints' hooks, the scraper reads
   their ``/metrics`` and the stop conditions watch the client's view;
4. always — on success, failure, Ctrl-C, SIGTERM or an abort — rolls back what is still in
   force, then checks the steady state again (the deployment recovered), and closes down;
5. finishes like every live run: records on the run's clock, fault table, verdicts (plus the
   steady-state and stop-condition verdicts), observation with the target's own series.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.live.injector import Injector
from testbed.finish import finish_run
from testbed.live.replay import LEAD, ReplayPlan, _fill_lengths, _unreached_rows
from testbed.live.targets.client import Client
from testbed.live.targets.journal import Journal
from testbed.live.targets.operator import Operator
from testbed.live.targets.plan import TargetPlan, plan_target
from testbed.live.targets.safety import Check, StopWatch, steady_state, steady_state_within, steady_verdict, stop_verdict
from testbed.live.targets.scrape import Scraper, fleet_series, up_changes
from testbed.live.targets.spec import TargetSpec
from testbed.records.attempts import attempts_frame
from testbed.records.result import Result
from testbed.spec import Scenario

Progress = Callable[[str], None]
WATCH_PERIOD = 0.2  # seconds between stop-condition checks


@dataclasses.dataclass(frozen=True)
class TargetResult:
    """A target run: its :class:`Result` (the same as any run's) and the metrics scraped from the target."""

    result: Result
    metrics: pd.DataFrame  # time, replica, endpoint, metric, labels, value (see testbed.live.targets.scrape)


class SteadyStateFailed(RuntimeError):
    """The target was not in its steady state before the faults: nothing was injected."""


@dataclasses.dataclass
class TargetRun:
    """What the driver leaves besides the records: for the result's stats and files."""

    before: Check | None = None
    after: Check | None = None
    aborted: str | None = None
    rollback_failures: list[str] = dataclasses.field(default_factory=list)
    metrics: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def run_target(
    scenario: Scenario,
    target: TargetSpec,
    *,
    source: str,
    base_dir: Path,
    journal_path: Path,
    mode: str | None = None,
    seed: int | None = None,
    duration: float | None = None,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> TargetResult:
    """Run ``scenario`` against ``target``; the same :class:`Result` as any run, with the target's metrics."""
    if duration is not None:
        scenario = scenario.model_copy(update={"duration": duration})
    plan = plan_target(scenario, target, source, mode, seed)
    watch = StopWatch(target.stop, list(scenario.sla), source)
    say = progress or (lambda _: None)
    state = TargetRun()
    records = asyncio.run(_main(plan, watch, journal_path, base_dir, source, say, state))
    outcome = TargetResult(_finish(plan, state, *records), state.metrics)
    if out_dir is not None:
        write(outcome, out_dir)
    return outcome


async def _main(plan: TargetPlan, watch: StopWatch, journal_path: Path, base_dir: Path, source: str, say: Progress, state: TargetRun):
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # SIGTERM ends the run like Ctrl-C does: the rollbacks in the finally blocks below run.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    journal = Journal(journal_path)
    journal.write("begin", pid=os.getpid(), source=source, base_dir=str(base_dir), mode=plan.mode,
                  scenario=plan.replay.scenario.name, seed=plan.replay.seed, target=plan.target.model_dump(mode="json", by_alias=True))
    outcome = "error"
    try:
        records = await _with_target(plan, watch, journal, base_dir, say, state)
        outcome = f"aborted: {state.aborted}" if state.aborted else "completed"
        return records
    except SteadyStateFailed:
        outcome = "steady state did not hold before the faults; nothing injected"
        raise
    except asyncio.CancelledError:
        outcome = "interrupted"
        raise
    finally:
        journal.write("end", outcome=outcome, rollback_failures=state.rollback_failures)
        journal.close()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _with_target(plan: TargetPlan, watch: StopWatch, journal: Journal, base_dir: Path, say: Progress, state: TargetRun):
    from testbed.live.chaos_proxy import ProxyFleet

    target, replay = plan.target, plan.replay
    proxied = [e for e in plan.endpoints if e.proxy is not None]
    proxies = ProxyFleet("127.0.0.1", seed=replay.seed) if proxied else None
    gateway = served = None
    try:
        urls = {e.name: e.url for e in plan.endpoints}
        for endpoint in proxied:
            assert proxies is not None and endpoint.proxy is not None
            urls[endpoint.name] = await asyncio.to_thread(proxies.add, endpoint.name, endpoint.url, endpoint.proxy.port)
            say(f"chaos proxy for {endpoint.name} at {urls[endpoint.name]} -> {endpoint.url}")
        if plan.mode == "gateway":
            gateway, served = await _gateway(plan, urls)
            entry = served.url
            probe_urls = [e.url for e in plan.endpoints]
        else:
            assert target.entry is not None
            entry, probe_urls = target.entry, [target.entry]
        steady = target.steady_state
        probe = (plan.endpoints, probe_urls if steady.completion else [], target.model, steady.health)
        state.before = await steady_state(*probe)
        journal.write("steady_state", phase="before", passed=state.before.passed, detail=state.before.detail)
        if not state.before.passed:
            raise SteadyStateFailed(f"target {target.name}: steady state does not hold before the faults: {state.before.detail}")
        say(f"steady state holds; sending {len(replay.arrivals):,} requests to {entry} with {len(plan.actions)} fault actions")
        started = time.monotonic() + LEAD
        operator = Operator(plan, journal, proxies, base_dir, started=started)
        # The target's own signals are read through the faults, the rollbacks and the recovery.
        scraper = Scraper(plan.endpoints, target.scrape_interval, lambda: time.monotonic() - started)
        scraping = asyncio.create_task(scraper.run())
        try:
            records = await _drive(plan, watch, operator, entry, started, gateway, say, state)
        finally:
            try:
                state.rollback_failures = await operator.rollback(say)
                state.after = await steady_state_within(steady.within, *probe)
                journal.write("steady_state", phase="after", passed=state.after.passed, detail=state.after.detail)
            finally:
                scraper.stop()
                await asyncio.gather(scraping, return_exceptions=True)
                state.metrics = scraper.frame()
        if gateway is None:  # client mode: the user's monitoring is the scrape; its up/down is the health signal
            records = (*records[:1], up_changes(state.metrics), *records[2:])
        return records
    finally:
        if served is not None:
            await served.close()
        if proxies is not None:
            await asyncio.to_thread(proxies.close)


async def _gateway(plan: TargetPlan, urls: dict[str, str]):
    from testbed.live.gateway import LiveGateway, Upstream, serve

    replay = plan.replay
    scenario = replay.scenario
    batching = scenario.serving.batching
    capacity = getattr(batching, "max_batch_size", None) or 8
    upstreams = [
        Upstream(e.name, urls[e.name], plan.regions[i], replay.topology.replicas[i].tier, plan.pools[i], capacity)
        for i, e in enumerate(plan.endpoints)
    ]
    gateway = LiveGateway(scenario.serving, upstreams, models=[plan.target.model], rtt=replay.topology.rtt, seed=replay.seed)
    return gateway, await serve(gateway.app)


async def _drive(plan: TargetPlan, watch: StopWatch, operator: Operator, entry: str, started: float, gateway, say: Progress,
                 state: TargetRun):
    """Workload, faults and the stop conditions, until the last request ends."""
    replay = plan.replay
    scenario = replay.scenario
    timeout = scenario.serving.timeouts.request + (10 if plan.mode == "gateway" else 0)
    client = Client(replay, entry, plan.target.model, plan.target.stream, started, timeout, watch.record)
    injector = Injector(operator, plan.actions, started)
    faults = asyncio.create_task(injector.run())

    async def watch_stop() -> None:
        while True:
            await asyncio.sleep(WATCH_PERIOD)
            reason = watch.check(client.now())
            if reason is not None:
                state.aborted = reason
                say(f"stop condition: {reason}; aborting")
                client.stop()
                injector.stop()
                return

    watcher = asyncio.create_task(watch_stop())
    try:
        await client.run()
    finally:
        watcher.cancel()
        injector.stop()  # an action under way (a restart) completes first
        await asyncio.gather(faults, watcher, return_exceptions=True)
    sent = client.sent()
    if gateway is None:
        return client.recorder.frame(), [], 0.0, injector, sent, []
    frame = gateway.recorder.frame()
    # Requests the gateway never accepted (it was too busy, or gone) exist only on the client's side.
    recorded = set(frame["request_id"].tolist())
    unreached = sorted((row.request_id, row.finish) for row in client.recorder.rows if row.request_id not in recorded)
    return frame, list(gateway.health_events), started - gateway.start, injector, sent, unreached


def _finish(plan: TargetPlan, state: TargetRun, requests: pd.DataFrame, health: list, offset: float, injector: Injector,
            sent: int, unreached: list[tuple[int, float]]) -> Result:
    """The records on the run's clock, finished by the tail every run ends with, with the
    target's scraped series for the detectors and the run's safety verdicts after the SLA's.

    Conservation as in every live run: each request sent is a record, or (gateway mode) one the
    gateway never answered, which the client recorded as failed.
    """
    replay = plan.replay
    if sent < len(replay.arrivals):  # aborted: the run is the requests that were sent
        replay = _prefix(replay, sent)
    pending = int((requests["status"] == "pending").sum())
    missing = sent - len(requests)
    if pending or missing < 0 or missing > len(unreached):
        raise RuntimeError(f"conservation: {sent} requests sent, {len(requests)} recorded, {len(unreached)} never answered, {pending} never ended")
    requests = requests.copy()
    for column in ("arrival", "first_token", "finish"):
        requests[column] = requests[column] - offset
    if missing:
        requests = pd.concat([requests, _unreached_rows(requests, replay, unreached[:missing])], ignore_index=True)
    requests = requests.sort_values("request_id", ignore_index=True)  # workload order, as simulated
    _fill_lengths(requests, replay.arrivals)
    stats = {
        "wall_s": float(np.nanmax(requests["finish"].to_numpy(), initial=0.0)),
        "requests": sent,
        "faults": len(replay.schedule),
        "live_actions": len(injector.done),
        "live_action_failures": [f"{a.verb} {a.target} at {a.at:g}s: {why}" for a, why in injector.failures],
        "live_action_lag_s": max((done - a.at for done, a in injector.done), default=0.0),
        # How long each restart took until the endpoint served again: the deployment's own recovery.
        "live_restart_s": [round(done - a.at, 3) for done, a in injector.done if a.verb == "restart"],
        "target": plan.target.name,
        "mode": plan.mode,
        "aborted": state.aborted,
        "requests_sent": sent,
        "rollback_failures": state.rollback_failures,
        "steady_state_after": state.after.detail if state.after else None,
        "scraped_samples": len(state.metrics),
    }
    timeseries = fleet_series(state.metrics, plan.regions) if not state.metrics.empty else pd.DataFrame()
    shifted = [(replica, t - offset, change) for replica, t, change in health]
    result = finish_run(replay.draw, requests, timeseries=timeseries, attempts=attempts_frame([]), health=shifted, stats=stats)
    safety = [stop_verdict(state.aborted)]
    safety += [steady_verdict(name, check) for name, check in (("before the faults", state.before), ("after recovery", state.after))
               if check is not None]
    return dataclasses.replace(result, sla=list(result.sla) + safety)


def _prefix(replay: ReplayPlan, n: int) -> ReplayPlan:
    arrivals = replay.arrivals
    cut = {f.name: getattr(arrivals, f.name)[:n] for f in dataclasses.fields(arrivals) if isinstance(getattr(arrivals, f.name), np.ndarray)}
    drawn = dataclasses.replace(replay.draw, arrivals=dataclasses.replace(arrivals, **cut))
    return dataclasses.replace(replay, draw=drawn, prompts=replay.prompts[:n])


def write(outcome: TargetResult, out_dir: Path) -> None:
    """The files of every run (:func:`testbed.report.write_run`) and the target's scraped metrics."""
    from testbed.report import write_run

    write_run(outcome.result, out_dir)
    outcome.metrics.to_parquet(Path(out_dir) / "target_metrics.parquet", index=False)



