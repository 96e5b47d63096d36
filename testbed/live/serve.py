"""``testbed serve``: the live stack for people — start it, print where it is, stop it on Ctrl-C."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from testbed.live.gateway import JsonLinesSpanExporter
from testbed.live.stack import LiveStack, plan_replicas, run_until_stopped
from testbed.live.supervisor import ReplicaStartError
from testbed.spec import Scenario, SpecError


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
) -> int:
    """Serve until stopped; returns the exit code (bad options raise ``fail``'s exit 2)."""
    try:
        spec = Scenario.from_yaml(scenario).serving if scenario is not None else None
        plans = plan_replicas(replicas, regions, fallback)
        exporter = JsonLinesSpanExporter(trace_file) if trace_file is not None else None
        stack = LiveStack(spec, plans, model=model, engine=engine, gateway_port=port, span_exporter=exporter)
    except (SpecError, ValueError) as exc:
        raise fail(str(exc)) from None
    try:
        run_until_stopped(stack, lambda s: _announce(s, console))
    except (ReplicaStartError, RuntimeError, OSError) as exc:
        raise fail(f"the stack did not start: {exc}") from None
    console.print("stopped: gateway, proxies and every replica process are gone")
    return 0


def _announce(stack: LiveStack, console: Console) -> None:
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
