"""Which requests leave a trace: every notable one, a seeded share of the rest, or all, or none.

The runs are real simulations small enough for the default suite; the CLI is run as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from testbed.observe.sampling import TraceSampler, in_share, notable_requests, parse_traces_option
from testbed.observe.traces import run_sampler, traced_requests
from testbed.records.attempts import attempts_frame
from testbed.report import write_run
from testbed.sim import simulate
from testbed.spec import ObservabilitySpec, Scenario, SpecError

ROOT = Path(__file__).resolve().parents[1]
REGION = {"name": "r", "zones": [{"name": "a", "racks": [{"name": "k", "nodes": 2, "device": "H100", "devices_per_node": 4}]}]}


def scenario(**observability) -> Scenario:
    """Eight replicas, one answering 30% of attempts with a 503 for a minute (retries), hedging on."""
    return Scenario.model_validate({
        "name": "sampling",
        "topology": {"name": "t", "providers": [{"name": "p", "regions": [REGION]}]},
        "workload": {"arrival": {"kind": "poisson", "rate": "40/s"}, "prompt_tokens": {"kind": "fixed", "value": 128},
                     "output_tokens": {"kind": "uniform", "low": 8, "high": 64}},
        "serving": {"retries": {"max_attempts": 2}, "hedging": {"enabled": True, "delay": "20ms"}},
        "faults": [{"kind": "error_injection", "target": "p/r/a/k/node-0", "rate": 0.3, "status": 503, "at": "20s", "duration": "60s"}],
        "duration": "100s",
        "seed": 5,
        "observability": observability,
    })


@lru_cache(maxsize=None)
def run(**observability):
    return simulate(scenario(**observability))


def test_sampled_keeps_every_notable_request_and_the_seeded_share_of_the_rest():
    result = run(trace_sample=0.1)
    requests = result.requests
    notable = notable_requests(requests, result.attempts)
    traced = set(traced_requests(result)["request_id"])
    ids = requests["request_id"].to_numpy()
    # Every request something happened to: failed, retried, hedged (the hedge delay is short).
    assert (requests["retries"] > 0).sum() > 20 and requests["hedged"].sum() > 20
    assert set(ids[notable]) <= traced
    assert set(ids[(requests["status"] != "ok").to_numpy() | requests["hedged"].to_numpy()]) <= traced
    # The rest: exactly the seeded share, about 10% of them.
    rest = ids[~notable]
    chosen = set(rest[in_share(rest, 0.1, result.seed)])
    assert traced - set(ids[notable]) == chosen
    assert 0.07 < len(chosen) / len(rest) < 0.13
    # Deterministic: same seed, same traces; another seed, another share.
    again = simulate(scenario(trace_sample=0.1))
    assert set(traced_requests(again)["request_id"]) == traced
    other = set(traced_requests(result, TraceSampler("sampled", 0.1, result.seed + 1))["request_id"])
    assert other != traced and set(ids[notable]) <= other


def test_a_migrated_stream_and_degraded_or_fallback_requests_are_notable():
    requests = pd.DataFrame({
        "request_id": np.arange(6), "status": ["ok", "ok", "ok", "ok", "timeout", "ok"], "retries": [0, 0, 0, 0, 0, 0],
        "hedged": [False] * 6, "failed_over": [False] * 6,
        "fallback": [False, False, True, False, False, False], "degraded": [False, False, False, True, False, False],
    })
    # Request 1's stream broke and resumed elsewhere: its first attempt ended failed, without a retry.
    attempts = attempts_frame([(1, 10, 0, 0.0, 1.0, "failed", False), (1, 11, 1, 1.0, 2.0, "ok", False), (5, 12, 0, 0.0, 1.0, "ok", False)])
    assert notable_requests(requests, attempts).tolist() == [False, True, True, True, True, False]


def test_all_and_none_trace_every_request_or_none(tmp_path):
    everything = run(traces="all")
    write_run(everything, tmp_path)
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert len(lines) == len(everything.requests)
    ids = {a["value"]["intValue"] for line in lines for span in json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]
           for a in span["attributes"] if a["key"] == "testbed.request_id"}
    assert ids == {str(i) for i in everything.requests["request_id"]}
    nothing = run(traces="none")
    assert run_sampler(nothing).exports is False and traced_requests(nothing).empty
    write_run(nothing, tmp_path)  # into the same directory: the earlier run's traces must not pass for this one's
    assert not (tmp_path / "traces.jsonl").exists() and (tmp_path / "metrics.prom").exists()


def test_the_traces_option_and_field_refuse_bad_values(tmp_path):
    assert (ObservabilitySpec().traces, ObservabilitySpec().trace_sample) == ("sampled", 0.001)  # the documented default
    assert parse_traces_option("ALL") == {"traces": "all"}
    assert parse_traces_option("5%") == {"traces": "sampled", "trace_sample": pytest.approx(0.05)}
    assert parse_traces_option("0.2") == {"traces": "sampled", "trace_sample": 0.2}
    for bad in ("some", "150%", "-0.1", "nan", ""):
        with pytest.raises(ValueError, match="--traces: expected sampled, all, none or a share"):
            parse_traces_option(bad)
    data = yaml.safe_load((ROOT / "faults" / "baseline.yaml").read_text())
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**data, "topology": str(ROOT / "topologies" / "gpu-region.yaml"), "observability": {"traces": "most"}}))
    with pytest.raises(SpecError, match=r"observability\.traces"):
        Scenario.from_yaml(path)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_run_traces_flag_chooses_the_traces_and_a_bad_value_exits_2(tmp_path):
    data = yaml.safe_load((ROOT / "faults" / "baseline.yaml").read_text())
    data.update(topology=str(ROOT / "topologies" / "gpu-region.yaml"), duration="12s", warmup="2s")
    data["workload"]["arrival"]["rate"] = "100/s"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = cli("run", str(path), "--out", str(tmp_path / "all"), "--quiet", "--traces", "all")
    assert proc.returncode == 0, proc.stderr
    requests = pd.read_parquet(tmp_path / "all" / "requests.parquet")
    assert len((tmp_path / "all" / "traces.jsonl").read_text().splitlines()) == len(requests)
    # Same seed, another process: the very same file (the SDK's per-process service.instance.id is replaced).
    assert cli("run", str(path), "--out", str(tmp_path / "again"), "--quiet", "--traces", "all").returncode == 0
    assert (tmp_path / "again" / "traces.jsonl").read_bytes() == (tmp_path / "all" / "traces.jsonl").read_bytes()
    for bad, said in (("most", "--traces: expected sampled, all, none or a share"), ("2", "got '2'")):
        proc = cli("run", str(path), "--quiet", "--traces", bad)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    path.write_text(yaml.safe_dump({**data, "observability": {"enabled": False}}))
    proc = cli("run", str(path), "--quiet", "--traces", "all")
    assert proc.returncode == 2 and "observability.enabled: false" in proc.stderr
    path.write_text(yaml.safe_dump({**data, "observability": {"traces": "every"}}))
    proc = cli("run", str(path), "--quiet")
    assert proc.returncode == 2 and "observability.traces" in proc.stderr and "Traceback" not in proc.stderr


def test_live_and_serve_refuse_a_bad_traces_option_before_starting_anything(tmp_path):
    for args, said in (
        (["serve", "--port", "0", "--traces", "most", "--trace-file", str(tmp_path / "spans.jsonl")], "--traces: expected sampled, all, none or a share"),
        (["serve", "--port", "0", "--traces", "all"], "give --trace-file too"),
        (["live", str(ROOT / "faults" / "live-replica-crash.yaml"), "--traces", "150%"], "--traces: expected sampled, all, none or a share"),
    ):
        proc = cli(*args)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
