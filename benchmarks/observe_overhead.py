"""What observation costs a run: the same scenario simulated with and without it, in one process.

Usage: python benchmarks/observe_overhead.py [SCENARIO] [--repeat N]

Prints, for each repeat, the wall time of the simulation alone, of ``observe()`` (metrics,
detectors, root causes, scorecard) and of writing its files (metrics, alerts, scorecard,
Prometheus exposition, OTLP/JSON traces), then the ratio of the whole to the simulation alone —
both measured in the same run, so a busy machine slows both.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from testbed.observe.pipeline import observe, write_observation  # noqa: E402
from testbed.sim import simulate  # noqa: E402
from testbed.spec import Scenario  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(Path(__file__).resolve().parents[1] / "faults" / "baseline.yaml"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    scenario = Scenario.from_yaml(args.scenario)
    blind = scenario.model_copy(update={"observability": scenario.observability.model_copy(update={"enabled": False})})
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = simulate(blind)
        simulated = time.perf_counter() - started
        result.scenario = scenario
        started = time.perf_counter()
        observation = observe(result)
        observed = time.perf_counter() - started
        result.observation, result.alerts, result.scorecard = observation, observation.alerts, observation.scorecard
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            write_observation(result, Path(out))
            written = time.perf_counter() - started
            traces = sum(1 for _ in open(Path(out) / "traces.jsonl"))
        print(
            f"scenario={scenario.name} requests={len(result.requests)} traces={traces} alerts={len(observation.alerts)} "
            f"simulate_s={simulated:.2f} observe_s={observed:.2f} write_s={written:.2f} "
            f"ratio={(simulated + observed + written) / simulated:.3f}"
        )


if __name__ == "__main__":
    main()
