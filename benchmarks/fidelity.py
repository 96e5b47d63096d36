"""Sim-vs-live fidelity: the same scenario replayed on real replicas and simulated with their profile.

For each load (a share of the capacity the calibrated profile implies, testbed.capacity, for at
most as many replicas as there are cores: beyond that they share them) and with
and without the scenario's faults, it replays the scenario live, simulates it with the same seed,
and prints one row per run: end-to-end, TTFT and TPOT percentiles, their relative error
(sim / live - 1), availability, verdict agreement, and when health checks noticed the fault.

    python benchmarks/fidelity.py                                   # faults/live-replica-crash.yaml
    python benchmarks/fidelity.py --loads 0.3,0.6 --duration 30s --markdown docs/fidelity.md

Each run takes its duration plus start-up and drain in wall time (about a minute at 40 s).
Figures depend on what else the machine is doing: the live replicas share its cores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from page import print_columns, write_table  # noqa: E402
from testbed.capacity import fleet_capacity  # noqa: E402
from testbed.live.fidelity import compare  # noqa: E402
from testbed.live.replay import run_live  # noqa: E402
from testbed.live.sizing import replica_count, scale  # noqa: E402
from testbed.sim import simulate  # noqa: E402
from testbed.spec import Scenario, validate_spec  # noqa: E402
from testbed.units import parse_duration  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def variant(base: Scenario, rate: float, faults: bool, duration: float) -> Scenario:
    data = base.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data["workload"]["arrival"] = {"kind": "poisson", "rate": rate}
    data["duration"] = duration
    if not faults:
        data["faults"] = []
    return validate_spec(data, Scenario, source=f"{base.name} at {rate:.2f}/s")


def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:+.1f}%"


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "faults" / "live-replica-crash.yaml"))
    parser.add_argument("--loads", default="0.3,0.6,0.85", help="shares of the profile's capacity")
    parser.add_argument("--duration", default="40s")
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--scale", type=float, default=None, help="shrink the scenario first (testbed live --scale)")
    parser.add_argument("--faults", default="both", choices=["both", "none", "only"], help="runs without/with the scenario's faults")
    parser.add_argument("--repeat", action="store_true", help="replay each run twice: live-vs-live differences are the noise floor")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the table into this docs page (docs/fidelity.md)")
    parser.add_argument("--block", default="fidelity", help="the page's block to replace (a page may hold several, e.g. a rerun of some rows)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    base = Scenario.from_yaml(args.scenario)
    if args.scale is not None:
        base = scale(base, args.scale)
    duration = parse_duration(args.duration)
    # The profile's capacity assumes a core per replica; replicas beyond the cores share them
    # (the topology's host_cores, which the simulation models, or else this machine's).
    replicas = replica_count(base)
    cores = base.topology.host_cores or len(os.sched_getaffinity(0))
    capacity = fleet_capacity(base) * min(1.0, cores / replicas)
    loads = [float(x) for x in args.loads.split(",")]
    print(f"{base.name}: {replicas} replicas on {cores:g} cores, capacity {capacity:.1f} req/s by the profile; "
          f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    header = ["load", "faults", "req/s", "requests", "e2e p50 sim/live ms", "err", "e2e p99 sim/live ms", "err",
              "ttft p50 err", "tpot p50 err", "avail sim/live", "verdicts agree", "detected sim/live s"]
    header += ["live restart"]
    if args.repeat:
        header += ["live rerun e2e p50/p99 diff"]
    rows = []
    for faults in {"both": (False, True), "none": (False,), "only": (True,)}[args.faults]:
        for load in loads:
            scenario = variant(base, load * capacity, faults, duration)
            started = time.perf_counter()
            live = run_live(scenario, engine=args.engine)
            sim = simulate(scenario)
            c = compare(sim, live)
            m = c.metrics.set_index("metric")
            detected = "—"
            if not c.faults.empty:
                f = c.faults.iloc[0]
                detected = f"{f['sim_detected']:.1f} / {f['live_detected']:.1f}"
            rows.append([
                f"{load:.0%}", "crash" if faults else "none", f"{load * capacity:.1f}", f"{len(live.requests)}",
                f"{ms(m.loc['e2e p50', 'sim'])} / {ms(m.loc['e2e p50', 'live'])}", pct(c.error("e2e p50")),
                f"{ms(m.loc['e2e p99', 'sim'])} / {ms(m.loc['e2e p99', 'live'])}", pct(c.error("e2e p99")),
                pct(c.error("ttft p50")), pct(c.error("tpot p50")),
                f"{m.loc['availability', 'sim']:.1%} / {m.loc['availability', 'live']:.1%}",
                "yes" if c.verdicts_agree else "no", detected,
            ])
            restarts = live.stats.get("live_restart_s") or []
            rows[-1].append(", ".join(f"{t:.1f} s" for t in restarts) or "—")
            if args.repeat:
                again = compare(run_live(scenario, engine=args.engine), live)
                rows[-1].append(f"{pct(again.error('e2e p50'))} / {pct(again.error('e2e p99'))}")
            print(f"  {rows[-1][0]} {rows[-1][1]}: done in {time.perf_counter() - started:.0f} s "
                  f"(load average {os.getloadavg()[0]:.1f})"
                  + (f"; live restart took {', '.join(f'{t:.1f}' for t in restarts)} s" if restarts else ""), file=sys.stderr)
    if args.markdown:
        intro = (f"`{base.name}`: {replicas} replicas on {cores} cores, Poisson load at a share of the profile's capacity "
                 f"({capacity:.1f} req/s), {args.duration}, errors `sim / live - 1`, latencies in ms.")
        write_table(args.markdown, args.block, intro, header, rows, load_before)
    print_columns(header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
