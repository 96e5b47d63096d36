"""Sim-vs-live fidelity on a prefix-heavy scenario: cache hit rate and TTFT, per router.

For each router it replays the scenario live (real replicas with their block-level prefix
caches, the live gateway routing by the prompts' block chains) and simulates it with the same
seed, then prints one row: the hit rate (cached / prompt tokens of ok requests) in both planes,
and TTFT p50 and p99 in both with their relative error (sim / live - 1).

    python benchmarks/prefix_fidelity.py                          # faults/live-prefix-cache.yaml
    python benchmarks/prefix_fidelity.py --scale 0.5 --markdown docs/caching.md  # two replicas, one per core

Each router takes the scenario's duration plus start-up and drain in wall time (about a minute
at 40 s). The live replicas share the machine's cores with the gateway and the load generator,
so the live figures move with whatever else runs.
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
from testbed.live.replay import run_live  # noqa: E402
from testbed.live.sizing import replica_count, scale  # noqa: E402
from testbed.records.result import Result  # noqa: E402
from testbed.sim import simulate  # noqa: E402
from testbed.spec import Scenario  # noqa: E402
from testbed.units import parse_duration  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def with_router(base: Scenario, policy: str, duration: float | None) -> Scenario:
    routing = base.serving.routing.model_copy(update={"policy": policy})
    scenario = base.model_copy(update={"serving": base.serving.model_copy(update={"routing": routing})})
    return scenario if duration is None else scenario.model_copy(update={"duration": duration})


def figures(result: Result) -> dict[str, float]:
    requests = result.requests
    ok = requests[requests["status"] == "ok"]
    ttft = ok["first_token"] - ok["arrival"]
    return {
        "ok": len(ok) / max(1, len(requests)),
        "hit": ok["cached_tokens"].sum() / max(1, ok["prompt_tokens"].sum()),
        "p50": float(ttft.quantile(0.5)),
        "p99": float(ttft.quantile(0.99)),
    }


def err(sim: float, live: float) -> str:
    return "n/a" if not live or math.isnan(sim) or math.isnan(live) else f"{sim / live - 1:+.0%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "faults" / "live-prefix-cache.yaml"))
    parser.add_argument("--routers", default="cache_aware,session_affinity,round_robin")
    parser.add_argument("--duration", default=None, help="override the scenario's duration (e.g. 20s)")
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--scale", type=float, default=None, help="shrink the scenario first (testbed live --scale)")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the table into this docs page (docs/caching.md)")
    parser.add_argument("--block", default="prefix-fidelity", help="the page's block to replace")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    base = Scenario.from_yaml(args.scenario)
    if args.scale is not None:
        base = scale(base, args.scale)
    duration = parse_duration(args.duration) if args.duration else None
    print(f"{base.name}: {replica_count(base)} replicas; load average {load_before:.1f}", file=sys.stderr)
    header = ["router", "requests", "hit rate sim / live", "ttft p50 sim / live ms", "err", "ttft p99 sim / live ms", "err",
              "ok sim / live"]
    rows = []
    for policy in args.routers.split(","):
        scenario = with_router(base, policy, duration)
        started = time.perf_counter()
        live = figures(run := run_live(scenario, engine=args.engine))
        sim = figures(simulate(scenario))
        rows.append([
            policy, str(len(run.requests)),
            f"{sim['hit']:.1%} / {live['hit']:.1%}",
            f"{sim['p50'] * 1000:.0f} / {live['p50'] * 1000:.0f}", err(sim["p50"], live["p50"]),
            f"{sim['p99'] * 1000:.0f} / {live['p99'] * 1000:.0f}", err(sim["p99"], live["p99"]),
            f"{sim['ok']:.1%} / {live['ok']:.1%}",
        ])
        print(f"  {policy}: done in {time.perf_counter() - started:.0f} s (load average {os.getloadavg()[0]:.1f})",
              file=sys.stderr)
    if args.markdown:
        span = args.duration or f"{base.duration:g} s"
        intro = (f"`{base.name}`: {replica_count(base)} replicas, {span}, the same seed in both planes; hit rate is "
                 "cached / prompt tokens of ok requests, errors `sim / live - 1`.")
        write_table(args.markdown, args.block, intro, header, rows, load_before)
    print_columns(header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
