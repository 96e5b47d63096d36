"""Campaign throughput with 1 and 2 workers: how well the local executor uses the cores.

Runs the same campaign twice in one process — once with one worker (runs in this process), once
with a spawn pool of two — and prints runs per second for each and their ratio. Only the ratio
is comparable across machines, and only within one invocation: this machine is shared, so both
measurements should see the same background load. It also checks that both give the same
results (runs are deterministic functions of cell and seed). The last line is machine-readable:

    runs=<N> wall_1_s=<float> wall_2_s=<float> speedup=<float> identical=<bool>

Run: python benchmarks/campaign_scaling.py [--campaign faults/campaigns/failover-matrix.yaml] [--seeds N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from page import provenance, table, write_block
from testbed.campaign.driver import run_campaign
from testbed.campaign.spec import SeedRange, load_campaign, resolve

DEFAULT = Path(__file__).resolve().parents[1] / "faults" / "campaigns" / "failover-matrix.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", type=Path, default=DEFAULT, help="campaign file to run")
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the figures into this docs page (docs/benchmarks.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    os.environ["OMP_NUM_THREADS"] = "1"
    campaign = load_campaign(args.campaign)
    if args.seeds is not None:
        spec = campaign.spec.model_copy(update={"seeds": SeedRange(count=args.seeds, start=1)})
        campaign = resolve(spec, source=str(args.campaign), base_dir=args.campaign.parent)
    walls, frames = {}, {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = run_campaign(campaign, workers=workers, out_dir=out)
            walls[workers] = time.perf_counter() - started
            frames[workers] = result.results.drop(columns=["wall_s"])
        print(f"workers={workers}: {campaign.runs} runs in {walls[workers]:.1f} s = {campaign.runs / walls[workers]:.3f} runs/s")
    identical = frames[1].equals(frames[2])
    speedup = walls[1] / walls[2]
    print(f"speedup with 2 workers: {speedup:.2f}x (target >= 1.8x on 2 cores); results identical: {identical}")
    if args.markdown:
        rows = [[f"`{args.campaign.name}`", campaign.runs, f"{walls[1]:.0f} s", f"{walls[2]:.0f} s", f"**{speedup:.2f}x**",
                 "yes" if identical else "**no**"]]
        write_block(args.markdown, "campaign_scaling", table(
            ["campaign", "runs", "1 worker", "2 workers", "speed-up", "results identical"], rows) + "\n\n" + provenance(load_before))
    print(f"runs={campaign.runs} wall_1_s={walls[1]:.2f} wall_2_s={walls[2]:.2f} speedup={speedup:.3f} identical={identical}")


if __name__ == "__main__":
    main()
