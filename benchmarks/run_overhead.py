"""Where the time of ``testbed run`` goes: the simulation's event loop against everything around it.

Usage: python benchmarks/run_overhead.py [SCENARIO] [--traces MODE] [--out DIR] [--markdown PAGE]

Runs the ``testbed run`` command itself (``testbed.cli.run.run``, as ``testbed run SCENARIO
--quiet --out DIR``; default ``faults/baseline.yaml``) once, in this process, with a timer
wrapped around each phase it goes through (where the command looks the function up), and
prints each phase's wall and CPU seconds and its share of the whole: importing the CLI (every
command, as ``python -m testbed`` does), loading the spec, the draw, building the fleet and the
request table, the event loop (``simpy.Environment.run``: the simulation proper), the verdicts
and fault tail of ``finish_run``, ``observe()``, and writing the records, ``report.md``, the
observation files (``metrics.prom`` and ``traces.jsonl`` apart) and ``report.html``. All phases
are measured in the same run, so the shares — the figures to compare — saw the same background
load; CPU time is the steadier of the two on a shared machine. The summary line is
machine-readable:

    total_s=<float> simulation_s=<float> outside_s=<float> outside_share=<float> cpu_s=<float> outside_cpu_share=<float> traces=<int> traces_mb=<float>

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

SIMULATION = "SIMULATION (the event loop)"
BASELINE = Path(__file__).resolve().parents[1] / "faults" / "baseline.yaml"
WALL: defaultdict[str, float] = defaultdict(float)
CPU: defaultdict[str, float] = defaultdict(float)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, adding the wall and CPU seconds each call takes to phase ``name``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            WALL[name] += time.perf_counter() - wall
            CPU[name] += time.process_time() - cpu

    return wrapper


def instrument() -> None:
    """Wrap the phases of a run where the command looks them up (module attributes, at call time)."""
    import testbed.finish as finish
    import testbed.observe.pipeline as pipeline
    import testbed.observe.prometheus as prometheus
    import testbed.observe.traces as traces
    import testbed.report.write as write
    import testbed.sim.engine as engine
    import simpy

    import testbed.cli.run as run
    from testbed.spec import Scenario

    simpy.Environment.run = timed("event loop", simpy.Environment.run)  # type: ignore[method-assign]
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


def phases(s: dict[str, float], total: float) -> list[tuple[str, float]]:
    """The run split into disjoint phases that add up to ``total``, from the timers ``s``."""
    observation = s["observation files"] - s["metrics.prom"] - s["traces.jsonl"]
    written = s["report.md"] + s["observation files"] + s["report.html"]
    rows = [
        ("import the CLI", s["import the CLI"]),
        ("load the spec", s["load the spec"]),
        ("draw", s["draw"]),
        ("build the fleet, request table", s["simulate"] - s["draw"] - s["event loop"] - s["finish_run"]),
        (SIMULATION, s["event loop"]),
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
    started, started_cpu = time.perf_counter(), time.process_time()
    import typer

    importlib.import_module("testbed.cli")  # what `testbed run` imports before it runs: every command
    WALL["import the CLI"], CPU["import the CLI"] = time.perf_counter() - started, time.process_time() - started_cpu
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
        total, total_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        traces = out / "traces.jsonl"
        traced = sum(1 for _ in traces.open()) if traces.exists() else 0
        traces_mb = traces.stat().st_size / 1e6 if traces.exists() else 0.0
    result = captured["result"]
    wall_rows, cpu_rows = phases(WALL, total), phases(CPU, total_cpu)
    print(f"{result.scenario.name}: {len(result.requests):,} requests; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"  {'phase':<34} {'wall':>8}  {'share':>6}  {'CPU':>8}  {'share':>6}")
    for (name, wall), (_, cpu) in zip(wall_rows, cpu_rows):
        print(f"  {name:<34} {wall:8.2f} s {wall / total:6.1%}  {cpu:8.2f} s {cpu / total_cpu:6.1%}")
    outside, outside_cpu = total - WALL["event loop"], total_cpu - CPU["event loop"]
    print(f"total_s={total:.3f} simulation_s={WALL['event loop']:.3f} outside_s={outside:.3f} outside_share={outside / total:.4f} "
          f"cpu_s={total_cpu:.3f} outside_cpu_share={outside_cpu / total_cpu:.4f} traces={traced} traces_mb={traces_mb:.2f}")
    if args.markdown:
        from page import provenance, table, write_block

        body = table(["phase", "wall", "share", "CPU", "share"], [
            [f"**{name}**" if name == SIMULATION else name, f"{wall:.2f} s", f"{wall / total:.1%}", f"{cpu:.2f} s", f"{cpu / total_cpu:.1%}"]
            for (name, wall), (_, cpu) in zip(wall_rows, cpu_rows)
        ])
        body += (f"\n\n`{result.scenario.name}`: {len(result.requests):,} requests, {total:.1f} s in all; outside the event loop "
                 f"**{outside:.1f} s = {outside / total:.1%}** of the wall time ({outside_cpu / total_cpu:.1%} of the CPU time); "
                 f"traces.jsonl {traced:,} traces, {traces_mb:.1f} MB.\n\n")
        write_block(args.markdown, "run_overhead", body + provenance(load_before))


if __name__ == "__main__":
    main()
