"""Where the time of ``testbed run`` goes: the simulation's event loop against everything around it.

Usage: python benchmarks/run_overhead.py [SCENARIO] [--out DIR] [--markdown PAGE]

Runs the ``testbed run`` command itself (``testbed.cli.run.run``, as ``testbed run SCENARIO
--quiet --out DIR``; default ``faults/baseline.yaml``) once, in this process, with a timer
wrapped around each phase it goes through, and prints one line per phase with its seconds and
its share of the whole: importing the CLI, loading the spec, the draw, building the fleet and the
request table, the event loop (the simulation proper: ``stats["wall_s"]``), the verdicts and
fault tail of ``finish_run``, ``observe()``, and writing the records, ``report.md``, the
observation files (``metrics.prom`` and ``traces.jsonl`` apart) and ``report.html``. All phases
are measured in the same run, so the shares — the figures to compare — saw the same background
load. The summary line is machine-readable:

    total_s=<float> simulation_s=<float> outside_s=<float> outside_share=<float> traces=<int> traces_mb=<float>

The issue-17 goal is outside_share <= 0.10 on the baseline.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

BASELINE = Path(__file__).resolve().parents[1] / "faults" / "baseline.yaml"
SECONDS: defaultdict[str, float] = defaultdict(float)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, adding the seconds each call takes to phase ``name``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - started

    return wrapper


def instrument() -> None:
    """Wrap the phases of a run where the command looks them up (module attributes, at call time)."""
    import testbed.finish as finish
    import testbed.observe.pipeline as pipeline
    import testbed.observe.prometheus as prometheus
    import testbed.observe.traces as traces
    import testbed.report.write as write
    import testbed.sim.engine as engine
    import testbed.cli.run as run
    from testbed.spec import Scenario

    engine.draw = timed("draw", engine.draw)
    engine.finish_run = timed("finish_run", engine.finish_run)
    finish.observe = timed("observe()", finish.observe)
    run.simulate = timed("simulate", run.simulate)
    run.write_run = timed("write_run", run.write_run)
    write.markdown_report = timed("report.md", write.markdown_report)
    write.write_html_report = timed("report.html", write.write_html_report)
    pipeline.write_observation = timed("observation files", pipeline.write_observation)
    prometheus.exposition = timed("metrics.prom", prometheus.exposition)
    traces.write_traces = timed("traces.jsonl", traces.write_traces)
    Scenario.from_yaml = timed("load the spec", Scenario.from_yaml)  # type: ignore[method-assign]


def phases(total: float, wall: float) -> list[tuple[str, float]]:
    """The run split into disjoint phases that add up to ``total``; the event loop is ``wall``."""
    s = SECONDS
    observation = s["observation files"] - s["metrics.prom"] - s["traces.jsonl"]
    written = s["report.md"] + s["observation files"] + s["report.html"]
    rows = [
        ("import the CLI", s["import the CLI"]),
        ("load the spec", s["load the spec"]),
        ("draw", s["draw"]),
        ("build the fleet, request table", s["simulate"] - s["draw"] - wall - s["finish_run"]),
        ("SIMULATION (event loop)", wall),
        ("finish_run: faults, verdicts", s["finish_run"] - s["observe()"]),
        ("finish_run: observe()", s["observe()"]),
        ("records: parquet, yaml, json", s["write_run"] - written),
        ("report.md", s["report.md"]),
        ("metrics, alerts, scorecard files", observation),
        ("metrics.prom", s["metrics.prom"]),
        ("traces.jsonl", s["traces.jsonl"]),
        ("report.html", s["report.html"]),
    ]
    rows.append(("verdict printing, rest", total - sum(seconds for _, seconds in rows)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", type=Path, default=BASELINE)
    parser.add_argument("--out", type=Path, help="output directory (default a temporary one)")
    parser.add_argument("--traces", help="the run's --traces option (default: the scenario's setting)")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the figures into this docs page (docs/benchmarks.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    import typer

    importlib.import_module("testbed.cli")  # what `testbed run` imports before it runs: every command
    SECONDS["import the CLI"] = time.perf_counter() - started
    import testbed.cli.run as run

    instrument()
    captured: dict[str, Any] = {}
    simulate = run.simulate
    run.simulate = lambda *a, **k: captured.setdefault("result", simulate(*a, **k))
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        try:
            run.run(args.scenario, out=out, quiet=True, **({"traces": args.traces} if args.traces else {}))
        except typer.Exit:
            pass
        total = time.perf_counter() - started
        traces = out / "traces.jsonl"
        traced = sum(1 for _ in traces.open()) if traces.exists() else 0
        traces_mb = traces.stat().st_size / 1e6 if traces.exists() else 0.0
    result = captured["result"]
    wall = float(result.stats["wall_s"])
    rows = phases(total, wall)
    print(f"{result.scenario.name}: {len(result.requests):,} requests; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    for name, seconds in rows:
        print(f"  {name:<34} {seconds:8.2f} s  {seconds / total:6.1%}")
    outside = total - wall
    print(f"total_s={total:.3f} simulation_s={wall:.3f} outside_s={outside:.3f} outside_share={outside / total:.4f} "
          f"traces={traced} traces_mb={traces_mb:.2f}")
    if args.markdown:
        from page import provenance, table, write_block

        body = table(["phase", "seconds", "share"], [[name, f"{seconds:.2f}", f"{seconds / total:.1%}"] for name, seconds in rows])
        body += (f"\n\n`{result.scenario.name}`: {len(result.requests):,} requests, {total:.1f} s in all; outside the event loop "
                 f"**{outside:.1f} s = {outside / total:.1%}**; traces.jsonl {traced:,} traces, {traces_mb:.1f} MB.\n\n")
        write_block(args.markdown, "run_overhead", body + provenance(load_before))


if __name__ == "__main__":
    main()
