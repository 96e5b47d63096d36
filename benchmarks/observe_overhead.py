"""What observation costs a run: the same scenario simulated with and without it, in one process.

Usage: python benchmarks/observe_overhead.py [SCENARIO ...] [--repeat N]

By default a small and a large scenario: the explorer's default (provider-outage-fallback, about
1k requests), where fixed costs dominate, and the 300k-request baseline, where per-request costs
do. For each it prints the fastest of ``--repeat`` wall times of the simulation alone, of
``observe()`` (metrics, detectors, root causes, scorecard — what every simulation and explorer
click pays) and of writing its files (metrics, alerts, scorecard, Prometheus exposition,
OTLP/JSON traces — only ``run --out`` pays that), then two ratios: observed run / simulation
alone, and with the files written too. Both are measured in the same run, so a busy machine
slows numerator and denominator alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from page import provenance, table, write_block  # noqa: E402
from testbed.observe.pipeline import observe, write_observation  # noqa: E402
from testbed.sim import simulate  # noqa: E402
from testbed.spec import Scenario  # noqa: E402

FAULTS = Path(__file__).resolve().parents[1] / "faults"
DEFAULT = [FAULTS / "provider-outage-fallback.yaml", FAULTS / "baseline.yaml"]


def measure(path: Path, repeat: int) -> dict[str, float | int | str]:
    scenario = Scenario.from_yaml(path)
    blind = scenario.model_copy(update={"observability": scenario.observability.model_copy(update={"enabled": False})})
    simulated = observed = written = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        result = simulate(blind)
        simulated = min(simulated, time.perf_counter() - started)
        result = dataclasses.replace(result, scenario=scenario)
        started = time.perf_counter()
        observation = observe(result)
        observed = min(observed, time.perf_counter() - started)
        result = dataclasses.replace(result, observation=observation, alerts=observation.alerts, scorecard=observation.scorecard)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            write_observation(result, Path(out))
            written = min(written, time.perf_counter() - started)
            traces = sum(1 for _ in open(Path(out) / "traces.jsonl"))
    return {
        "scenario": scenario.name, "requests": len(result.requests), "traces": traces, "alerts": len(observation.alerts),
        "simulate_s": simulated, "observe_s": observed, "write_s": written,
        "observed_ratio": (simulated + observed) / simulated, "written_ratio": (simulated + observed + written) / simulated,
    }


def line(m: dict[str, float | int | str]) -> str:
    """One machine-readable line: key=value pairs."""
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", type=Path, default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario; the fastest of each phase is printed")
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the figures into this docs page (docs/benchmarks.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for path in args.scenarios:
        m = measure(path, max(1, args.repeat))
        print(line(m), flush=True)
        rows.append([f"`{m['scenario']}`", f"{m['requests']:,}", f"{m['simulate_s']:.2f} s", f"{m['observe_s']:.2f} s",
                     f"{m['observed_ratio']:.2f}", f"{m['written_ratio']:.2f}"])
    if args.markdown:
        header = ["scenario", "requests", "simulate", "observe", "observed / simulated", "+ files"]
        write_block(args.markdown, "observe_overhead", table(header, rows) + "\n\n" + provenance(load_before))


if __name__ == "__main__":
    main()
