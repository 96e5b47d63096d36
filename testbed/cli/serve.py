"""``testbed serve``: the live stack for people — start it, print where it is, stop it on Ctrl-C.

While it serves it prints one line per replica state change the supervisor sees (died, with
its exit code or signal; restarting; ready again after N s), and restarts a replica that died
without being asked to, as a process manager would: someone who ``kill -9``s a replica sees it
fail, and sees it come back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from testbed.cli.output import console, fail
from testbed.observe.sampling import TRACES_OPTION_HELP, TraceSampler, with_traces_option
from testbed.spec import ObservabilitySpec, Scenario, SpecError

if TYPE_CHECKING:
    from testbed.live.stack import LiveStack
    from testbed.live.supervisor import ReplicaEvent


def serve(
    replicas: Annotated[int, typer.Option(min=1, help="primary replicas")] = 2,
    regions: Annotated[int, typer.Option(min=1, help="regions the primaries are spread over")] = 1,
    engine: Annotated[str, typer.Option(help="torch or vllm")] = "torch",
    fallback: Annotated[bool, typer.Option(help="add an int8 CPU replica in a fallback-tier region")] = False,
    model: Annotated[str, typer.Option(help="built-in model (tiny, small) or a local HF directory")] = "tiny",
    port: Annotated[int, typer.Option(help="gateway port on 127.0.0.1 (0 picks a free one)")] = 8000,
    scenario: Annotated[Optional[Path], typer.Option(help="take the serving policies from this scenario YAML")] = None,
    trace_file: Annotated[Optional[Path], typer.Option(help="write OpenTelemetry spans here as JSON lines, sampled as observability.traces says (--traces)")] = None,
    traces: Annotated[Optional[str], typer.Option(help=f"with --trace-file, which requests' spans: {TRACES_OPTION_HELP}")] = None,
) -> None:
    """Start replicas, a chaos proxy each and the gateway; print the endpoints; Ctrl-C stops it all."""
    raise typer.Exit(run_serve(replicas, regions, engine, fallback, model, port, scenario, trace_file, console, fail, traces))


def run_serve(
    replicas: int,
    regions: int,
    engine: str,
    fallback: bool,
    model: str,
    port: int,
    scenario: Path | None,
    trace_file: Path | None,
    console: Console,
    fail: Callable[[str], typer.Exit],
    traces: str | None = None,
) -> int:
    """Serve until stopped; returns the exit code (bad options raise ``fail``'s exit 2).

    Spans go to ``trace_file`` under the scenario's ``observability.traces`` setting (its
    defaults without ``--scenario``), ``traces`` overriding it, as ``testbed run`` samples.
    """
    # The live plane needs the live extra (fastapi, torch): imported here so the other commands run without it.
    from testbed.live.gateway import JsonLinesSpanExporter
    from testbed.live.stack import LiveStack, plan_replicas, run_until_stopped
    from testbed.live.supervisor import ReplicaStartError
    from testbed.live.trace_sampling import SampledSpanExporter

    if traces is not None and trace_file is None:
        raise fail("--traces chooses which spans go to --trace-file; give --trace-file too")
    try:
        spec = Scenario.from_yaml(scenario) if scenario is not None else None
        settings = spec.observability if spec is not None else ObservabilitySpec()
        if traces is not None:
            settings = with_traces_option(settings, traces)
        plans = plan_replicas(replicas, regions, fallback)
        seed = 0  # the gateway policy's random stream, and the traces' sample, as a stack started without one
        exporter = SampledSpanExporter(JsonLinesSpanExporter(trace_file), TraceSampler.of(settings, seed)) if trace_file is not None else None
        stack = LiveStack(spec.serving if spec is not None else None, plans, model=model, engine=engine, gateway_port=port,
                          seed=seed, span_exporter=exporter)
    except (SpecError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        run_until_stopped(stack, lambda s: _announce(s, console))
    except (ReplicaStartError, RuntimeError, OSError) as exc:
        raise fail(f"the stack did not start: {exc}") from None
    console.print("stopped: gateway, proxies and every replica process are gone")
    return 0


def _announce(stack: LiveStack, console: Console) -> None:
    """Print the endpoints, then watch the replicas (runs on the stack's loop, once it is up)."""
    import asyncio

    loop = asyncio.get_running_loop()
    stack.supervisor.on_event = lambda event: _on_replica_event(event, stack, loop, console)
    url = stack.gateway_url
    console.print(f"gateway  {url}/v1  (OpenAI API; /metrics, /health)", highlight=False, soft_wrap=True)
    pids = stack.pids()
    for plan in stack.plans:
        console.print(
            f"replica  {plan.name}  region={plan.region} tier={plan.tier} url={stack.replica_urls[plan.name]} "
            f"proxy={stack.proxy_urls[plan.name]} pid={pids[plan.name]}",
            highlight=False,
            soft_wrap=True,
        )
    console.print("ready; Ctrl-C stops everything", highlight=False, soft_wrap=True)


def _on_replica_event(event: ReplicaEvent, stack: LiveStack, loop, console: Console) -> None:
    """Say what happened to a replica; restart one that died unasked (called from a supervisor thread)."""
    import asyncio

    if event.kind == "stopped":
        return  # Ctrl-C's teardown, already announced by the final line
    console.print(time.strftime("%H:%M:%S ") + event.describe(), highlight=False, soft_wrap=True)
    if event.kind == "died" and not event.expected and not loop.is_closed():
        future = asyncio.run_coroutine_threadsafe(stack.restart(event.name), loop)
        future.add_done_callback(lambda f: _restart_failed(f, event.name, console))


def _restart_failed(future, name: str, console: Console) -> None:
    if not future.cancelled() and future.exception() is not None:
        console.print(f"replica {name} could not be restarted: {future.exception()}", highlight=False, soft_wrap=True)
