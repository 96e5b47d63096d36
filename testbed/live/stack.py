"""The whole live stack in one ``async with``: replica processes, a chaos proxy each, the gateway.

:class:`LiveStack` starts one real replica process per :class:`ReplicaPlan` (the PyTorch
replica server, or vLLM where installed; fallback-tier replicas run int8-quantized), puts a
chaos proxy in front of each, and serves the :class:`~testbed.live.gateway.LiveGateway` over
the proxies on this event loop. The gateway's policies come from a
:class:`~testbed.spec.ServingSpec`, so a scenario's ``serving:`` section drives the live stack
exactly as it drives the simulator — its batching spec reaches each replica process whole
(:mod:`testbed.live.serving`), and what a live replica cannot do is refused before anything
starts — and :func:`plans_from_topology` turns a scenario's topology into the replica list.
With ``migration`` (a scenario's ``elastic.migration``) a stream its replica's death or drain cuts
resumes on another replica (:mod:`testbed.live.resume`).
Without a spec the stack runs :data:`LIVE_DEFAULTS`: the default serving policies with the
built-in engine's micro-batching.

Faults are methods — :meth:`kill`, :meth:`pause`, :meth:`resume`, :meth:`restart`,
:meth:`add_toxic`, :meth:`cut_region`, :meth:`heal`, :meth:`chaos` — and each leaves a row in
:meth:`faults` (the simulator's fault-table columns plus ``detected_at`` from the gateway's
health checks), so :meth:`records` can mark which requests overlapped a fault, as in
simulation. Everything is torn down on exit, on an exception and on Ctrl-C (cancellation):
the gateway times out what is still in flight so every record ends, and each replica's whole
process group is stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from opentelemetry.sdk.trace.export import SpanExporter

from testbed.faults import Fault, faults_frame
from testbed.live.chaos_proxy import Down, ProxyFleet, Toxic
from testbed.live.gateway import LiveGateway, Served, Upstream, serve
from testbed.live.records import LiveRecorder
from testbed.live.serving import ENGINES, check_live, replica_batching, replica_cache, replica_capacity
from testbed.live.supervisor import Supervisor
from testbed.sla import fault_windows
from testbed.spec import MigrationSpec, ServingSpec
from testbed.topology import Topology

CUT = "cut"  # the proxy toxic name cut_region uses
PARKED_UPSTREAM_PORT = 1  # a parked replica's proxy points here until it starts: nothing listens on port 1
# What a stack runs when given no spec: the default policies, batching as the built-in engine can.
LIVE_DEFAULTS = ServingSpec.model_validate({"batching": {"policy": "micro"}})


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """One replica to start: its name, region ("provider/region"), tier and pool."""

    name: str
    region: str
    tier: str = "primary"
    pool: str = "default"

    @property
    def provider(self) -> str:
        return self.region.split("/", 1)[0]


def plan_replicas(replicas: int, regions: int = 1, fallback: bool = False) -> list[ReplicaPlan]:
    """``replicas`` primaries spread round-robin over ``regions`` local regions, plus a fallback.

    With ``fallback`` one more replica, int8-quantized, serves in its own fallback-tier region.
    """
    if replicas < 1 or regions < 1:
        raise ValueError("replicas and regions must be at least 1")
    if regions > replicas:
        raise ValueError(f"{regions} regions need at least as many replicas, got {replicas}")
    plans = [ReplicaPlan(f"r{i}", f"local/region-{i % regions}") for i in range(replicas)]
    if fallback:
        plans.append(ReplicaPlan("fallback-0", "local/fallback", tier="fallback"))
    return plans


def plans_from_topology(topology: Topology) -> list[ReplicaPlan]:
    """One live replica per replica of ``topology``, with its name, region, tier and pool."""
    return [ReplicaPlan(r.name, r.region, r.tier, r.pool) for r in topology.replicas]


class LiveStack:
    """See the module docstring. Use as ``async with LiveStack(...) as stack:``."""

    def __init__(
        self,
        spec: ServingSpec | None = None,
        replicas: Sequence[ReplicaPlan] | None = None,
        *,
        n_replicas: int = 2,
        regions: int = 1,
        fallback: bool = False,
        model: str = "tiny",
        engine: str = "torch",
        threads: int = 1,
        host: str = "127.0.0.1",
        gateway_port: int = 0,
        seed: int = 0,
        rtt: Callable[[str, str], float] | None = None,
        span_exporter: SpanExporter | None = None,
        log_dir: Path | None = None,
        start_timeout: float = 120.0,
        migration: MigrationSpec | None = None,
        parked: Collection[str] = (),
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
        self.spec = spec or (LIVE_DEFAULTS if engine == "torch" else ServingSpec())
        check_live(self.spec, engine)
        self.plans = list(replicas) if replicas is not None else plan_replicas(n_replicas, regions, fallback)
        names = [p.name for p in self.plans]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique, got {names}")
        unknown = sorted(set(parked) - set(names))
        if unknown:
            raise ValueError(f"parked: no replicas named {', '.join(unknown)}; replicas: {', '.join(names)}")
        # Not started with the stack (an elastic fleet's spare slots): their proxies refuse until
        # restart() starts them, so a scale-up pays one real cold start and the stack's own start
        # pays none for them.
        self.parked = frozenset(parked)
        self.model, self.engine, self.threads = model, engine, threads
        self.host, self.gateway_port, self.seed, self.rtt = host, gateway_port, seed, rtt
        self.span_exporter, self.start_timeout = span_exporter, start_timeout
        self.migration = migration  # broken streams resume elsewhere (testbed.live.resume); None: they fail
        self.supervisor = Supervisor(log_dir)
        self.proxies: ProxyFleet | None = None
        self.gateway: LiveGateway | None = None
        self.served: Served | None = None
        self.replica_urls: dict[str, str] = {}  # name -> the replica itself (chaos hooks, direct calls)
        self.proxy_urls: dict[str, str] = {}  # name -> its proxy (what the gateway calls)
        self.start = 0.0
        self._faults: list[Fault] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the gateway serves on
        self._index = {plan.name: i for i, plan in enumerate(self.plans)}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LiveStack:
        self.start = time.monotonic()  # the clock the gateway, the records and the faults count from
        self._loop = asyncio.get_running_loop()
        try:
            await self._open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _open(self) -> None:
        self.proxies = ProxyFleet(self.host, seed=self.seed)
        starting = [plan for plan in self.plans if plan.name not in self.parked]
        started = await asyncio.gather(*(asyncio.to_thread(self._start_replica, plan) for plan in starting))
        self.replica_urls.update((plan.name, url) for plan, url in zip(starting, started))
        for plan in self.plans:
            url = self.replica_urls.get(plan.name, f"http://{self.host}:{PARKED_UPSTREAM_PORT}")
            self.proxy_urls[plan.name] = await asyncio.to_thread(self.proxies.add, plan.name, url)
        upstreams = [Upstream(p.name, self.proxy_urls[p.name], p.region, p.tier, p.pool, self._capacity(p)) for p in self.plans]
        self.gateway = LiveGateway(
            self.spec, upstreams, models=[self.model], rtt=self.rtt, seed=self.seed, start=self.start, span_exporter=self.span_exporter,
            migration=self.migration,
        )
        self.served = await serve(self.gateway.app, self.host, self.gateway_port)

    async def aclose(self) -> None:
        """Stop the gateway (its in-flight requests time out), the proxies and every replica."""
        try:
            if self.served is not None:
                served, self.served = self.served, None
                await served.close()
        finally:
            if self.proxies is not None:
                proxies, self.proxies = self.proxies, None
                await asyncio.to_thread(proxies.close)
            await asyncio.to_thread(self.supervisor.stop_all, 5)

    def _capacity(self, plan: ReplicaPlan) -> int:
        return replica_capacity(self._torch_spec() if plan.tier == "fallback" else self.spec)

    def replica_argv(self, plan: ReplicaPlan) -> list[str]:
        """The command line of ``plan``'s built-in replica: its batching spec travels whole."""
        argv = [sys.executable, "-m", "testbed.live.replica.server", "--model", self.model, "--host", self.host,
                "--port", "0", "--name", plan.name, "--threads", str(self.threads)]
        if plan.tier == "fallback":
            argv += ["--quantize", "int8"]
        return argv + replica_batching(self._torch_spec(), "torch")  # its prefix caching included

    def _torch_spec(self) -> ServingSpec:
        """The spec a built-in replica runs: the stack's, except that under --engine vllm the
        fallback replica (built-in, int8) micro-batches with the defaults, caching as vLLM does."""
        if self.engine == "torch":
            return self.spec
        caching, block_size = replica_cache(self.spec)
        batching = LIVE_DEFAULTS.batching.model_copy(update={"prefix_caching": caching, "block_size": block_size})
        return LIVE_DEFAULTS.model_copy(update={"batching": batching})

    def _start_replica(self, plan: ReplicaPlan) -> str:
        """Start ``plan``'s process (blocking, run in a thread) and return its URL."""
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        # The fallback tier is the CPU-quantized model, which vLLM's CPU build does not serve:
        # with --engine vllm the primaries are vLLM and the fallback stays on the built-in int8 engine.
        if self.engine == "vllm" and plan.tier != "fallback":
            return self._start_vllm(plan, env)
        argv = self.replica_argv(plan)
        managed = self.supervisor.start(plan.name, argv, env, timeout=self.start_timeout)
        assert managed.url is not None
        return managed.url

    def _start_vllm(self, plan: ReplicaPlan, env: dict[str, str]) -> str:
        from testbed.live.replica.models import ensure_model
        from testbed.live.replica.vllm import missing_reason, vllm_command

        reason = missing_reason()
        if reason is not None:
            raise RuntimeError(f"--engine vllm: {reason}")
        port = _free_port(self.host)
        caching, block_size = replica_cache(self.spec)
        if caching:
            argv, vllm_env = vllm_command(ensure_model(self.model), port, plan.name, block_size=block_size)
        else:
            argv, vllm_env = vllm_command(ensure_model(self.model), port, plan.name, prefix_caching=False)
        argv += replica_batching(self.spec, "vllm")
        url = f"http://{self.host}:{port}"
        self.supervisor.start(plan.name, argv, {**env, **vllm_env}, timeout=self.start_timeout, url=url)
        return url

    # ------------------------------------------------------------------ what the stack offers

    @property
    def gateway_url(self) -> str:
        if self.served is None:
            raise RuntimeError("the stack is not running")
        return self.served.url

    def now(self) -> float:
        """Seconds since the stack started: the clock of records and faults."""
        return time.monotonic() - self.start

    def pids(self) -> dict[str, int]:
        return {name: self.supervisor.get(name).pid for name in self.replica_urls}

    def running(self, replica: str) -> bool:
        """Whether the replica's process runs now (a parked one never started has none)."""
        return replica in self.supervisor.names() and self.supervisor.alive(replica)

    def records(self) -> pd.DataFrame:
        """One row per request the gateway accepted, in the simulator's schema.

        Safe from any thread: the state is copied on the stack's event loop (see :meth:`_state`).
        """
        assert self.gateway is not None
        recorder, faults, events = self._state()
        return recorder.frame(fault_windows(_faults_table(faults, events)))

    def faults(self) -> pd.DataFrame:
        """The faults injected so far (ongoing ones end at +inf), with when health checks saw them."""
        _, faults, events = self._state()
        return _faults_table(faults, events)

    def _state(self) -> tuple[LiveRecorder, list[Fault], list[tuple[int, float, str]]]:
        """A consistent copy of the records, faults and health events.

        The gateway mutates them on the stack's loop; a caller on another thread (StackThread's
        users) must not read them mid-change, so the copy is taken on the loop itself, while
        the frame is built in the caller's thread, off the loop that serves traffic.
        """
        loop = self._loop
        if loop is not None and loop.is_running() and not _running_on(loop):
            future = asyncio.run_coroutine_threadsafe(self._copy_state(), loop)
            return future.result(timeout=30)
        return self._copy_now()

    async def _copy_state(self) -> tuple[LiveRecorder, list[Fault], list[tuple[int, float, str]]]:
        return self._copy_now()

    def _copy_now(self) -> tuple[LiveRecorder, list[Fault], list[tuple[int, float, str]]]:
        if self.gateway is None:
            return LiveRecorder(), list(self._faults), []
        return self.gateway.recorder.snapshot(), list(self._faults), list(self.gateway.health_events)

    # ------------------------------------------------------------------ faults

    async def kill(self, replica: str) -> None:
        """SIGKILL the replica's process group (a crash): the node_crash fault of simulation."""
        self._open_fault("node_crash", replica)
        await asyncio.to_thread(self.supervisor.kill, replica)

    async def pause(self, replica: str) -> None:
        """SIGSTOP the group: it holds its connections and answers nothing (a hang)."""
        self._open_fault("node_hang", replica)
        await asyncio.to_thread(self.supervisor.pause, replica)

    async def resume(self, replica: str) -> None:
        await asyncio.to_thread(self.supervisor.resume, replica)
        self._close_faults(lambda f: f.kind == "node_hang" and f.target == replica)

    async def restart(self, replica: str) -> None:
        """Start the replica again (after a kill; a parked one for the first time) and point its
        proxy at its new address."""
        if replica in self.supervisor.names():
            managed = await asyncio.to_thread(self.supervisor.restart, replica, self.start_timeout)
            assert managed.url is not None
            url = managed.url
        else:
            url = await asyncio.to_thread(self._start_replica, self.plans[self._index[replica]])
        assert self.proxies is not None
        self.replica_urls[replica] = url
        await asyncio.to_thread(self.proxies.set_upstream, replica, url)
        self._close_faults(lambda f: f.kind in ("node_crash", "node_hang") and f.target == replica)

    async def add_toxic(self, replica: str, name: str, toxic: Toxic) -> None:
        """Put a network toxic (latency, bandwidth, reset, black hole, down) on the replica's path."""
        assert self.proxies is not None
        self._open_fault(f"toxic:{name}", replica, {"type": type(toxic).__name__})
        await asyncio.to_thread(self.proxies.set_toxic, replica, name, toxic)

    async def remove_toxic(self, replica: str, name: str) -> None:
        assert self.proxies is not None
        await asyncio.to_thread(self.proxies.remove_toxic, replica, name)
        self._close_faults(lambda f: f.kind == f"toxic:{name}" and f.target == replica)

    async def cut_region(self, region: str) -> None:
        """Partition ``region`` from the gateway: every proxy of its replicas goes down."""
        members = self.replicas_in(region)
        self._open_fault("partition", region, replicas=tuple(self._index[m] for m in members))
        assert self.proxies is not None
        for name in members:
            await asyncio.to_thread(self.proxies.set_toxic, name, CUT, Down())

    async def heal(self, target: str) -> None:
        """Clear every toxic on a replica, or on all replicas of a region (ends a cut)."""
        assert self.proxies is not None
        members = self.replicas_in(target) if target not in self._index else [target]
        for name in members:
            await asyncio.to_thread(self.proxies.clear, name)
        self._close_faults(lambda f: (f.kind.startswith("toxic:") and f.target in members) or (f.kind == "partition" and f.target == target))

    async def chaos(self, replica: str, **hooks: Any) -> None:
        """Set the replica's own chaos hooks (slowdown, error_rate, error_status, hang); none clears them."""
        url = self.replica_urls[replica] + "/chaos"
        async with httpx.AsyncClient(timeout=5) as client:
            if hooks:
                self._open_fault("chaos", replica, {k: v for k, v in hooks.items() if isinstance(v, (int, float))})
                response = await client.post(url, json=hooks)
            else:
                response = await client.delete(url)
                self._close_faults(lambda f: f.kind == "chaos" and f.target == replica)
        response.raise_for_status()

    def replicas_in(self, region: str) -> list[str]:
        members = [p.name for p in self.plans if p.region == region]
        if not members:
            known = sorted({p.region for p in self.plans})
            raise KeyError(f"no replicas in region {region!r}; regions: {', '.join(known)}")
        return members

    def _open_fault(self, kind: str, target: str, params: dict[str, Any] | None = None, replicas: tuple[int, ...] | None = None) -> None:
        if replicas is None:
            if target not in self._index:
                raise KeyError(f"no replica named {target!r}; replicas: {', '.join(self._index)}")
            replicas = (self._index[target],)
        self._faults.append(Fault(kind, target, self.now(), math.inf, replicas, dict(params or {}), source="live"))

    def _close_faults(self, match: Callable[[Fault], bool]) -> None:
        now = self.now()
        self._faults = [dataclasses.replace(f, end=now) if f.end == math.inf and match(f) else f for f in self._faults]


def _faults_table(faults: Sequence[Fault], events: Sequence[tuple[int, float, str]]) -> pd.DataFrame:
    """The fault table, with ``detected_at``: the first health-check alarm on a fault's replicas."""
    frame = faults_frame(list(faults))
    detected = []
    for fault in faults:
        times = [t for r, t, change in events if change == "unhealthy" and r in fault.replicas and fault.start <= t <= fault.end]
        detected.append(min(times) if times else np.nan)
    frame["detected_at"] = detected
    return frame


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _free_port(host: str) -> int:
    """A port free right now, for servers (vLLM) that must be told theirs in advance."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]



def run_until_stopped(stack: LiveStack, announce: Callable[[LiveStack], None]) -> None:
    """Run ``stack`` until Ctrl-C or SIGTERM, then tear it down (``testbed serve``).

    The signal cancels the main task, so teardown runs through ``async with`` even when the
    signal arrives while replicas are still starting; the supervisor's exit hook is the net
    for a process whose start was in flight at that moment.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        async with stack:
            announce(stack)
            await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        pass


class StackThread:
    """A :class:`LiveStack` on its own event-loop thread, for synchronous callers.

    Tests, benchmarks and scripts drive load with ordinary blocking clients (the openai client,
    thread pools) while the gateway keeps serving on its loop; ``run`` hands a coroutine of
    the stack (``stack.kill("r0")``) to that loop and waits for it.
    """

    def __init__(self, stack: LiveStack) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-stack", daemon=True)

    def __enter__(self) -> LiveStack:
        self._thread.start()
        try:
            self.run(self.stack.__aenter__())
        except BaseException:
            self._stop_loop()
            raise
        return self.stack

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.stack.aclose())
        finally:
            self._stop_loop()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
