"""The simulator against textbook queues.

A simulator that cannot reproduce M/D/1 and M/G/1 cannot be trusted with LLM batching. With a
calibrated-table performance model whose times do not depend on batch or context, a micro-batcher
of size 1 is a single FIFO server with a known service-time distribution, so the mean time in
system must match Pollaczek-Khinchine; and with continuous batching and batch-independent step
times, every request is served at once, so the system is M/G/infinity and Little's law gives the
mean number in service.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from testbed.sim import simulate
from testbed.spec import Scenario

PREFILL_S = 0.1
DECODE_STEP_S = 0.02


def flat_profile(path: Path, prefill: float) -> None:
    """A profile whose prefill and decode times are constants: service times become exact."""
    profile = {
        "device": "flat",
        "model": "llama-3-8b",
        "prefill": {"tokens": [1, 100_000], "seconds": [prefill, prefill]},
        "decode": {
            "batch_sizes": [1, 4096],
            "context_tokens": [1, 100_000],
            "seconds": [[DECODE_STEP_S, DECODE_STEP_S], [DECODE_STEP_S, DECODE_STEP_S]],
        },
    }
    path.write_text(json.dumps(profile))


def scenario(
    tmp_path: Path, rate: float, output: dict, batching: dict, duration: float, prefill: float = PREFILL_S
) -> Scenario:
    flat_profile(tmp_path / "flat.json", prefill)
    topology = {
        "name": "one-server",
        "devices": {"flat": {"peak_flops": 1e15, "memory_bandwidth": 1e12, "memory_bytes": 1e12}},
        "profiles": {"flat": "flat.json"},
        "intra_region_rtt": 0,
        "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
            {"name": "k", "device": "flat", "devices_per_node": 1}]}]}]}],
    }
    data = {
        "name": "queue",
        "topology": topology,
        "workload": {
            "arrival": {"kind": "poisson", "rate": rate},
            "prompt_tokens": {"kind": "fixed", "value": 16},
            "output_tokens": output,
        },
        "serving": {"batching": batching},
        "duration": duration,
        "warmup": duration / 20,
        "seed": 3,
    }
    return Scenario.model_validate(data, context={"base_dir": str(tmp_path)})


def mean_sojourn(result) -> float:
    requests = result.requests
    steady = requests[requests["arrival"] >= result.scenario.warmup]
    assert (steady["status"] == "ok").all()
    return float((steady["finish"] - steady["arrival"]).mean())


SINGLE_SERVER = {"policy": "micro", "max_batch_size": 1, "max_queue_delay": 0}


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_time_in_system(tmp_path, rho):
    rate = rho / PREFILL_S
    result = simulate(scenario(tmp_path, rate, {"kind": "fixed", "value": 1}, SINGLE_SERVER, duration=40_000 * PREFILL_S / rho))
    expected = PREFILL_S + rho * PREFILL_S / (2 * (1 - rho))
    assert mean_sojourn(result) == pytest.approx(expected, rel=0.06)


def test_mg1_pollaczek_khinchine(tmp_path):
    low, high = 1, 11
    lengths = np.arange(low, high + 1)
    service = PREFILL_S + (lengths - 1) * DECODE_STEP_S
    mean_s, mean_s2 = service.mean(), (service**2).mean()
    rate = 0.7 / mean_s
    result = simulate(
        scenario(tmp_path, rate, {"kind": "uniform", "low": low, "high": high}, SINGLE_SERVER, duration=40_000 * mean_s)
    )
    rho = rate * mean_s
    expected = mean_s + rate * mean_s2 / (2 * (1 - rho))
    assert mean_sojourn(result) == pytest.approx(expected, rel=0.06)


def test_continuous_batching_is_mg_infinity_and_obeys_littles_law(tmp_path):
    """Batch-independent step times and a negligible prefill: nobody waits for anybody."""
    prefill = 1e-4
    batching = {"policy": "continuous", "max_num_seqs": 4096, "kv_cache_tokens": 10_000_000}
    rate, output = 50.0, {"kind": "uniform", "low": 20, "high": 60}
    result = simulate(scenario(tmp_path, rate, output, batching, duration=2000, prefill=prefill))
    # The joining iteration prefills and also runs a decode step for the batch (about 40
    # sequences are always running), then 39 more steps: 40 steps and a prefill on average.
    mean_service = prefill + 40 * DECODE_STEP_S
    # A request joins at the end of the step in progress: it waits half a step on average.
    sojourn = mean_sojourn(result)
    assert sojourn == pytest.approx(mean_service + DECODE_STEP_S / 2, rel=0.01)
    series = result.timeseries[result.timeseries["time"] > result.scenario.warmup]
    assert series["running"].mean() == pytest.approx(rate * sojourn, rel=0.05)  # L = lambda W
