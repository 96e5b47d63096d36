"""A real vLLM OpenAI server started on its own (not by testbed's stack), killed and restarted
by the hooks of examples/targets/vllm.yaml, under the scenario examples/targets/vllm-crash.yaml.

Skipped with the reason when vLLM is not installed here; with TESTBED_REQUIRE_VLLM=1 (CI) that
skip is a failure. The server starts once (~40 s on a quiet machine) and is restarted once by the
target's own restart command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from testbed.live.targets.run import run_target
from testbed.live.targets.spec import load_target
from testbed.live.replica.vllm import START_TIMEOUT, missing_reason
from testbed.spec import Scenario

pytestmark = [pytest.mark.live, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "targets"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("TESTBED_REQUIRE_VLLM") == "1":
            pytest.fail(f"TESTBED_REQUIRE_VLLM=1 but vLLM cannot run: {reason}")
        pytest.skip(reason)
    pid_dir = tmp_path_factory.mktemp("vllm-pids")
    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("PID_DIR", "V0_PORT")}
    os.environ.update(PID_DIR=str(pid_dir), V0_PORT=str(port))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    pidfile = pid_dir / "testbed-v0.pid"
    try:
        started = subprocess.run([sys.executable, str(EXAMPLES / "start_server.py"), "vllm", "--name", "v0", "--port", str(port),
                                  "--pidfile", str(pidfile), "--wait", str(START_TIMEOUT)], env=env, capture_output=True, text=True)
        assert started.returncode == 0, started.stderr + (pidfile.with_suffix(".log").read_text()[-3000:] if pidfile.with_suffix(".log").exists() else "")
        yield pid_dir, port
    finally:
        if pidfile.exists():
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_vllm_killed_and_restarted_by_the_targets_hooks(vllm_server, tmp_path):
    pid_dir, port = vllm_server
    first = int((pid_dir / "testbed-v0.pid").read_text())
    scenario = Scenario.from_yaml(EXAMPLES / "vllm-crash.yaml")
    outcome = run_target(scenario, load_target(EXAMPLES / "vllm.yaml"), source="vllm.yaml", base_dir=EXAMPLES,
                         journal_path=tmp_path / "journal.jsonl", out_dir=tmp_path / "out")
    result = outcome.result
    assert result.stats["live_action_failures"] == []
    verdicts = {v.objective: v for v in result.sla}
    # One server, no redundancy: what was sent while it was down failed; it came back and served again.
    assert not verdicts["availability"].passed and 0 < verdicts["availability"].observed < 1
    assert verdicts["steady state before the faults"].passed and verdicts["steady state after recovery"].passed
    second = int((pid_dir / "testbed-v0.pid").read_text())
    assert second != first and _healthy(port)
    with pytest.raises(ProcessLookupError):
        os.killpg(first, 0)  # the old server's whole group is gone, engine core included
    lines = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    applied = [(line["verb"], line["undoes"]) for line in lines if line["event"] == "applied"]
    assert applied == [("kill", None), ("restart", 1)]
    assert result.stats["live_restart_s"] and result.stats["live_restart_s"][0] > 0  # vLLM's own time to come back
    # vLLM's own metrics were scraped, and its silence while down is in the fleet series and the up signal.
    names = set(outcome.metrics["metric"])
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "up"} <= names
    assert any(name.startswith("vllm:request_success") for name in names)
    up = outcome.metrics[outcome.metrics["metric"] == "up"]["value"]
    assert up.min() == 0.0 and up.iloc[-1] == 1.0
    assert not result.timeseries.empty and len(result.scorecard) == 1
    assert (tmp_path / "out" / "scorecard.json").exists() and (tmp_path / "out" / "target_metrics.parquet").exists()
