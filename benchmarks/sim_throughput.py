"""How fast the simulator runs: N requests on the 1,000-GPU fleet at ~70% of its capacity.

Continuous batching, power-of-two routing, Poisson arrivals, lengths that vary per request.
With ``--failures`` it runs the same requests twice in one process, without and with a
stochastic node-crash process on the fleet (MTBF 2 min per node, MTTR 1 min: hundreds of
crashes), and prints the ratio, since this machine is shared and only ratios measured in one
run are comparable. The last line is machine-readable:

    requests=<N> wall_s=<float> requests_per_s=<float> peak_rss_mb=<float>

Run: python benchmarks/sim_throughput.py --requests 1000000 [--failures]
"""

from __future__ import annotations

import argparse
import os
import resource
from pathlib import Path

from page import provenance, table, write_block
from testbed.capacity import fleet_capacity
from testbed.sim import simulate
from testbed.spec import Scenario

FLEET = Path(__file__).resolve().parents[1] / "topologies" / "fleet-1k.yaml"


FAILURES = [{"kind": "failure_process", "level": "node", "effect": "node_crash", "mtbf": "2min", "mttr": "1min"}]


def fleet_scenario(requests: int, load: float, seed: int, failures: bool = False) -> Scenario:
    """The benchmark scenario: duration chosen so that about ``requests`` arrive."""
    base = {
        "name": "sim-throughput",
        "topology": str(FLEET),
        "workload": {
            "arrival": {"kind": "poisson", "rate": 1.0},
            "prompt_tokens": {"kind": "lognormal", "median": 512, "sigma": 0.6, "max": 4096},
            "output_tokens": {"kind": "uniform", "low": 32, "high": 256},
        },
        "serving": {
            "batching": {"policy": "continuous", "max_num_seqs": 128},
            "routing": {"policy": "power_of_two"},
        },
        "duration": 1.0,
        "seed": seed,
        "timeseries_interval": 10.0,
    }
    probe = Scenario.model_validate(base)
    rate = load * fleet_capacity(probe)
    base["workload"]["arrival"]["rate"] = rate
    base["duration"] = requests / rate
    if failures:
        base["faults"] = FAILURES
    return Scenario.model_validate(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--load", type=float, default=0.7, help="offered load as a share of fleet capacity")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--failures", action="store_true", help="also run with a node-crash process and compare")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the figures into this docs page (docs/benchmarks.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    ratio = "not measured (no --failures)"
    scenario = fleet_scenario(args.requests, args.load, args.seed)
    result = simulate(scenario)
    if args.failures:
        faulty = simulate(fleet_scenario(args.requests, args.load, args.seed, failures=True))
        n_faulty = len(faulty.requests)
        rate_plain = len(result.requests) / result.stats["wall_s"]
        rate_faulty = n_faulty / faulty.stats["wall_s"]
        ratio = f"{rate_faulty / rate_plain:.2f} × ({faulty.stats['faults']} node crashes)"
        print(
            f"with failures: {faulty.stats['faults']} node crashes, outcomes "
            f"{faulty.requests['status'].value_counts().to_dict()}; {rate_faulty:.0f} req/s vs {rate_plain:.0f} "
            f"fault-free: ratio {rate_faulty / rate_plain:.2f}"
        )
    n = len(result.requests)
    wall = result.stats["wall_s"]
    counts = result.requests["status"].value_counts().to_dict()
    print(f"fleet: {scenario.topology.name}, offered {scenario.workload.arrival.rate:,.0f} req/s "
          f"for {scenario.duration:,.1f} simulated s; outcomes {counts}; preemptions {result.stats['preemptions']}")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"requests={n} wall_s={wall:.3f} requests_per_s={n / wall:.0f} peak_rss_mb={peak_rss_mb:.1f}")
    if args.markdown:
        rows = [[f"{n:,}", f"{n / wall:,.0f} ({wall:.1f} s)", ratio, f"{peak_rss_mb:.0f} MB"]]
        write_block(args.markdown, "sim_throughput", table(
            ["requests", "simulated requests/s", "with failures", "peak RSS"], rows) + "\n\n" + provenance(load_before))


if __name__ == "__main__":
    main()
