"""Cache-cold failover in simulation: TTFT and hit rate before, during and after a region outage.

Simulates faults/cache-cold-failover.yaml once per router (the same seed and schedule) and
prints, per window — before the outage (after warm-up), during it, after the repair — TTFT p50,
p90 and p99 of ok requests and the hit rate (cached / prompt tokens).

    python benchmarks/cache_cold_failover.py
    python benchmarks/cache_cold_failover.py --routers cache_aware,round_robin --markdown docs/caching.md

About a second of CPU per router.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from page import print_columns, write_table
from testbed.sim import simulate
from testbed.sla import fault_windows
from testbed.spec import Scenario

ROOT = Path(__file__).resolve().parent.parent


def cell(requests) -> str:
    ttft = (requests["first_token"] - requests["arrival"]) * 1000
    hit = requests["cached_tokens"].sum() / max(1, requests["prompt_tokens"].sum())
    return " / ".join(f"{ttft.quantile(q):.0f}" for q in (0.5, 0.9, 0.99)) + f", hit {hit:.0%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "faults" / "cache-cold-failover.yaml"))
    parser.add_argument("--routers", default="cache_aware,session_affinity,prefix_affinity,round_robin,least_outstanding")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the table into this docs page (docs/caching.md)")
    parser.add_argument("--block", default="cache_cold_failover", help="the page's block to replace")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    base = Scenario.from_yaml(args.scenario)
    header = ["router", "before: TTFT p50 / p90 / p99 ms", "during the outage", "after the repair"]
    rows = []
    for policy in args.routers.split(","):
        routing = base.serving.routing.model_copy(update={"policy": policy})
        result = simulate(base.model_copy(update={"serving": base.serving.model_copy(update={"routing": routing})}))
        [(start, end)] = fault_windows(result.faults)
        ok = result.requests[result.requests["status"] == "ok"]
        arrival = ok["arrival"]
        rows.append([
            policy,
            cell(ok[(arrival >= base.warmup) & (arrival < start)]),
            cell(ok[(arrival >= start) & (arrival < end)]),
            cell(ok[arrival >= end]),
        ])
    if args.markdown:
        intro = (f"`{base.name}`, seed {base.seed}: TTFT p50 / p90 / p99 of ok requests in ms and the hit rate, "
                 "by when they arrived.")
        write_table(args.markdown, args.block, intro, header, rows, load_before)
    print_columns(header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
