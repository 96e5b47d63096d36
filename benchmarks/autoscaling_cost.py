"""Goodput per dollar for a few autoscaler settings on one region outage, same seed.

The workload, fault and seed of faults/elastic-outage-no-headroom.yaml on its topology with 8
slots per region instead of 4 (room for the survivor to grow); only the ``elastic:`` section
changes between rows. Goodput counts requests answered with TTFT <= 2 s and
TPOT <= 100 ms; cost is device-hours from grant to gone at testbed/cloud.py's prices. The table
is the capacity planner's trade-off: a fleet kept large holds the SLA and pays for idle GPUs; a
lazy autoscaler saves money until the outage, then pays in cold starts and missed requests.

    PYTHONPATH=. python benchmarks/autoscaling_cost.py [--seed N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from testbed.sim.engine import simulate
from testbed.spec import Scenario

SCENARIO = Path(__file__).resolve().parents[1] / "faults" / "elastic-outage-no-headroom.yaml"
GOODPUT = {"metric": "goodput", "ttft": 2.0, "tpot": 0.1, "min": 0.9}
BASE = {"metric": "ongoing_requests", "min_replicas": 4, "max_replicas": 16, "initial_replicas": 4, "upscale_delay": 30, "downscale_delay": 300}


def autoscaled(**knobs) -> dict:
    return {"pools": {"default": {"autoscaler": BASE | knobs}}}


SETTINGS: dict[str, dict] = {
    "fixed: 8 replicas serving": autoscaled(target=40, min_replicas=8, initial_replicas=8, max_replicas=8),
    "4..16, target 40": autoscaled(target=40),
    "4..16, target 40, no upscale delay, step 8": autoscaled(target=40, upscale_delay=0, max_step_up=8),
    "4..16, target 20": autoscaled(target=20),
    "6..16, target 40 (headroom floor)": autoscaled(target=40, min_replicas=6, initial_replicas=6),
    "4..16, target 40, spot with on-demand fallback": {
        "pools": {"default": {
            "autoscaler": BASE | {"target": 40},
            "spot": {"share": 1.0, "preemption_rate": "1/h", "fallback": "on_demand"},
        }}
    },
}


def with_slots(data: dict, per_node: int) -> dict:
    """The scenario's topology with twice the slots per region, so the survivor has room to grow."""
    topology = data["topology"]
    for provider in topology["providers"]:
        for region in provider["regions"]:
            for zone in region["zones"]:
                for rack in zone["racks"]:
                    rack["nodes"] = per_node
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="default: the scenario's own")
    args = parser.parse_args()
    base = Scenario.from_yaml(SCENARIO)
    data = with_slots(base.model_dump(mode="json", by_alias=True, exclude_defaults=True), per_node=2)
    print(f"{SCENARIO.name}, seed {base.seed if args.seed is None else args.seed}")
    header = ("setting", "p99 TTFT s", "availability", "goodput", "SLA", "device-h", "cost $", "goodput/$", "wall s")
    print(" | ".join(header))
    print("|".join("---" for _ in header))
    for name, elastic in SETTINGS.items():
        scenario = Scenario.model_validate(data | {"elastic": elastic, "sla": data["sla"] + [GOODPUT]})
        started = time.perf_counter()
        result = simulate(scenario, seed=args.seed)
        wall = time.perf_counter() - started
        verdict = {v.objective: v for v in result.sla}
        stats = result.stats
        print(
            f"{name} | {verdict['p99 ttft'].observed:.2f} | {verdict['availability'].observed:.2%} | "
            f"{verdict['goodput'].observed:.2%} | {'pass' if result.passed else 'FAIL'} | {stats['device_hours']:.2f} | "
            f"{stats['cost_usd']:.2f} | {stats['goodput_per_dollar']:.0f} | {wall:.1f}"
        )


if __name__ == "__main__":
    main()
