"""Cache-aware routing on the real Mooncake conversation trace, and what the cache model costs.

Part 1 replays the first ``--minutes`` of the Mooncake conversation trace (vendored in
faults/traces/, 512-token prefix block ids) on eight H100 replicas with prefix caching, the setup
of faults/prefix-affinity-crash.yaml (~75% busy), fault-free and with one GPU failure (2 min,
cold restart), for round robin, power of two, prefix affinity and the cache-aware scorer. It
prints the prefix-cache hit rate (cached / prompt tokens), TTFT p50 / p99, and goodput (share of
requests answered with TTFT <= 2 s and TPOT <= 100 ms).

Part 2 runs the fleet benchmark of benchmarks/sim_throughput.py (1,000 GPUs, ~70% load) three
ways in one process — as today; with eight 512-token system prompts per class, cache off; the
same with prefix caching on — and prints the wall-time ratios (the machine is shared: only
ratios measured in one run compare).

Run: python benchmarks/prefix_routing.py [--minutes 10] [--requests 100000] [--skip-fleet] [--skip-routing]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_throughput import fleet_scenario  # noqa: E402

from testbed.records.schema import latency_columns  # noqa: E402
from testbed.sim import simulate  # noqa: E402
from testbed.spec import Scenario  # noqa: E402

SCENARIO = Path(__file__).resolve().parents[1] / "faults" / "prefix-affinity-crash.yaml"
ROUTERS = ("round_robin", "power_of_two", "prefix_affinity", "cache_aware")


def routing_run(policy: str, crash: bool, minutes: float) -> dict[str, float]:
    data = Scenario.from_yaml(SCENARIO).model_dump(by_alias=True)
    data["serving"]["routing"]["policy"] = policy
    data["duration"] = minutes * 60
    data["sla"] = []
    if not crash:
        data["faults"] = []
    result = simulate(Scenario.model_validate(data, context={"base_dir": str(SCENARIO.parent)}))
    requests = result.requests
    latency = latency_columns(requests)
    ok = requests["status"] == "ok"
    good = ok & (latency["ttft"] <= 2.0) & (latency["tpot"].fillna(0) <= 0.1)
    return {
        "hit": requests["cached_tokens"].sum() / requests["prompt_tokens"].sum(),
        "p50": float(np.nanpercentile(latency["ttft"][ok], 50)),
        "p99": float(np.nanpercentile(latency["ttft"][ok], 99)),
        "goodput": float(good.mean()),
        "busy": float(result.timeseries["utilisation"].mean()),
        "n": len(requests),
    }


def fleet_cost(requests: int, seed: int) -> None:
    """Wall time of the fleet benchmark as today, and of a shared-prefix workload without and with the cache.

    The cache model's own cost is the last ratio: the same requests (system prompts make them
    longer than today's) simulated with caching off and on.
    """
    base = fleet_scenario(requests, 0.7, seed)
    prompts = base.model_dump(by_alias=True)
    prompts["workload"]["prefix"] = {"system_prompts": {"count": 8, "tokens": 512}}
    cached = Scenario.model_validate(prompts).model_dump(by_alias=True)
    cached["serving"]["batching"]["prefix_caching"] = True
    walls = {}
    for label, scenario in (
        ("today (no prefixes, no cache)", base),
        ("8 system prompts of 512 tokens, cache off", Scenario.model_validate(prompts)),
        ("8 system prompts of 512 tokens, cache on", Scenario.model_validate(cached)),
    ):
        started = time.perf_counter()
        result = simulate(scenario)
        walls[label] = time.perf_counter() - started
        hit = result.requests["cached_tokens"].sum() / result.requests["prompt_tokens"].sum()
        print(f"  {label:44s} {len(result.requests):>8,} requests  {walls[label]:6.1f} s  hit rate {hit:.1%}")
    labels = list(walls)
    print(f"  cache model's cost (same requests, on / off): x{walls[labels[2]] / walls[labels[1]]:.2f}")
    print(f"  cache on vs today's benchmark:                 x{walls[labels[2]] / walls[labels[0]]:.2f}")


def routing_table(minutes: float) -> None:
    print(f"Mooncake conversation trace, first {minutes:g} min, 8 x H100, prefix caching (block 16)")
    print(f"{'router':16s} {'fault':10s} {'hit rate':>8s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'goodput':>8s} {'busy':>5s}")
    for crash in (False, True):
        for policy in ROUTERS:
            m = routing_run(policy, crash, minutes)
            print(
                f"{policy:16s} {'gpu crash' if crash else 'none':10s} {m['hit']:8.1%} {m['p50']:8.3f}s "
                f"{m['p99']:8.3f}s {m['goodput']:8.1%} {m['busy']:5.0%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of the trace to replay")
    parser.add_argument("--requests", type=int, default=100_000, help="fleet benchmark size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-routing", action="store_true")
    args = parser.parse_args()
    if not args.skip_routing:
        routing_table(args.minutes)
    if not args.skip_fleet:
        print(f"fleet benchmark (benchmarks/sim_throughput.py, {args.requests:,} requests): wall time")
        fleet_cost(args.requests, args.seed)


if __name__ == "__main__":
    main()
