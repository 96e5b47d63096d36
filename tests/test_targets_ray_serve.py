"""A real Ray Serve application (examples/ray_serve/app.py: two replicas, ``@serve.batch``)
tested in client mode: one replica's worker process is SIGKILLed by the target's hook and
testbed measures Ray Serve's own recovery (its controller replacing the replica).

Ray Serve is in the ``ray`` extra; without it the test is skipped outside CI and fails in CI.
The application starts once for the module (a local Ray cluster and two model replicas).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testbed.live.targets.run import run_target
from testbed.live.targets.spec import load_target
from testbed.spec import Scenario

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES / "ray_serve"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def serve_app(tmp_path_factory):
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Ray Serve is missing in CI: {exc} (pip install -e '.[dev]')")
        pytest.skip(f"Ray Serve is not installed: {exc}")
    port = _free_port()
    pid_dir = tmp_path_factory.mktemp("ray")
    saved = {k: os.environ.get(k) for k in ("SERVE_PORT", "PID_DIR")}
    os.environ.update(SERVE_PORT=str(port), PID_DIR=str(pid_dir))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(pid_dir / "app.log", "wb")
    app = subprocess.Popen([sys.executable, str(EXAMPLES / "ray_serve" / "app.py"), "--port", str(port)], env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while _get(f"http://127.0.0.1:{port}/replicas") is None or _get(f"http://127.0.0.1:{port}/replicas")["status"] != "HEALTHY":
            assert app.poll() is None, (pid_dir / "app.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray Serve application did not start"
            time.sleep(1)
        yield port
    finally:
        app.send_signal(signal.SIGTERM)  # serve.shutdown() and ray.shutdown()
        try:
            app.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_ray_serve_replica_killed_and_ray_serves_own_recovery_measured(serve_app, tmp_path):
    from kill_replica import replica_pids

    before = replica_pids()
    assert len(before) == 2
    outcome = run_target(Scenario.from_yaml(EXAMPLES / "targets" / "ray-serve-replica-kill.yaml"), load_target(EXAMPLES / "targets" / "ray-serve.yaml"),
                         source="ray-serve.yaml", base_dir=EXAMPLES / "targets", journal_path=tmp_path / "journal.jsonl", out_dir=tmp_path / "out")
    result = outcome.result
    assert result.stats["mode"] == "client" and result.stats["live_action_failures"] == []
    lines = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    applied = [line for line in lines if line["event"] == "applied"]
    assert [(a["verb"], a["undoes"]) for a in applied] == [("kill", None), ("restart", 1)]
    killed = int(applied[0]["how"].split("SIGKILL to replica process ")[1].split()[0])
    assert killed in before and killed not in replica_pids()
    assert "recovered: {'RUNNING': 2}" in applied[1]["how"] or 'recovered: {"RUNNING": 2}' in applied[1]["how"]
    after = replica_pids()
    assert len(after) == 2 and set(after) != set(before)  # Ray Serve replaced the killed replica with a new process
    recovery = result.stats["live_restart_s"]
    assert len(recovery) == 1 and recovery[0] > 0.1  # Ray Serve's own time to be back at two replicas
    assert _get(f"http://127.0.0.1:{serve_app}/replicas") == {"status": "HEALTHY", "replica_states": {"RUNNING": 2}}
    verdicts = {v.objective: v for v in result.sla}
    assert verdicts["steady state before the faults"].passed and verdicts["steady state after recovery"].passed
    assert "availability" in verdicts and len(result.requests) == result.stats["requests"]
    assert (result.requests["status"] == "ok").sum() > len(result.requests) / 2  # the surviving replica kept serving
    assert len(result.scorecard) == 1 and (tmp_path / "out" / "verdicts.json").exists()
