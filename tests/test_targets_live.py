"""Targets on real processes: two of the project's replica servers started by hand (as someone
else's deployment), faulted only through the hooks a target file names.

The servers start once for the module (examples/targets/start_server.py, outside testbed's
stack) and every test leaves them healthy again — which is what the rollbacks are for. Shown:
gateway mode with a crash and a slowdown (verdicts, scorecard, journal, scraped /metrics);
client mode aborted by a stop condition, with the rollback switching off what it injected; a
SIGKILL of testbed mid-run and ``testbed live --rollback`` restoring every endpoint; and the
Chaos Toolkit module under the real ``chaos run``.
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
import yaml

from testbed.live.targets.run import run_target
from testbed.live.targets.spec import load_target
from testbed.spec import Scenario

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "targets"
START = EXAMPLES / "start_server.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _pid(pid_dir: Path, name: str) -> int:
    return int((pid_dir / f"testbed-{name}.pid").read_text())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """r0 and r1 on free ports, their pid files in a temporary directory (the target reads both from the environment)."""
    pid_dir = tmp_path_factory.mktemp("pids")
    ports = {"r0": _free_port(), "r1": _free_port()}
    saved = {k: os.environ.get(k) for k in ("PID_DIR", "R0_PORT", "R1_PORT")}
    os.environ.update(PID_DIR=str(pid_dir), R0_PORT=str(ports["r0"]), R1_PORT=str(ports["r1"]))
    starts = [
        subprocess.Popen([sys.executable, str(START), "replica", "--name", name, "--port", str(port),
                          "--pidfile", str(pid_dir / f"testbed-{name}.pid"), "--wait", "180"], env=_env())
        for name, port in ports.items()
    ]
    try:
        assert [p.wait(200) for p in starts] == [0, 0], "the replica servers did not start"
        yield pid_dir, ports
    finally:
        for name in ports:
            with_pid = pid_dir / f"testbed-{name}.pid"
            if with_pid.exists():
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.killpg(_pid(pid_dir, name), sig)
                    except ProcessLookupError:
                        pass
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def target_servers(servers):
    pid_dir, ports = servers
    assert all(_healthy(p) for p in ports.values()), "a previous test left an endpoint down"
    return servers


def _journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gateway_mode_crash_and_slowdown_through_the_targets_hooks(target_servers, tmp_path):
    pid_dir, ports = target_servers
    before = _pid(pid_dir, "r0")
    scenario = Scenario.from_yaml(EXAMPLES / "replica-crash.yaml")
    target = load_target(EXAMPLES / "replica-servers.yaml")
    outcome = run_target(scenario, target, source="replica-servers.yaml", base_dir=EXAMPLES, journal_path=tmp_path / "journal.jsonl",
                         out_dir=tmp_path / "out")
    result = outcome.result
    assert result.stats["mode"] == "gateway" and result.stats["live_action_failures"] == []
    assert len(result.requests) == result.stats["requests"] and set(result.requests["status"]) <= {"ok", "failed", "timeout"}
    verdicts = {v.objective: v.passed for v in result.sla}
    assert verdicts["steady state before the faults"] and verdicts["steady state after recovery"]
    assert verdicts["no stop condition tripped"]
    # The crash was a real SIGKILL of the process group, the restart a new process.
    assert _pid(pid_dir, "r0") != before and _healthy(ports["r0"])
    lines = [line for line in _journal(tmp_path / "journal.jsonl") if line["event"] == "applied"]
    assert [(line["verb"], line["endpoint"]) for line in lines] == [("hooks", "r1"), ("hooks", "r1"), ("kill", "r0"), ("restart", "r0")]
    assert lines[0]["how"].endswith('-> 200 {"slowdown": 2.0}') and lines[3]["undoes"] == lines[2]["seq"]
    assert f"SIGKILL to process group {before}" in lines[2]["how"]
    # The scorecard judged the faults; the target's own /metrics were scraped beside the records.
    assert len(result.scorecard) == 2 and result.scorecard["detected"].any()
    metrics = outcome.metrics
    running = metrics[metrics["metric"] == "vllm:num_requests_running"]
    assert set(running["endpoint"]) == {"r0", "r1"}
    up = metrics[(metrics["metric"] == "up") & (metrics["endpoint"] == "r0")]["value"]
    assert up.min() == 0.0 and up.iloc[-1] == 1.0  # down while killed, up again once restarted
    assert {"replica", "completed", "queue_depth"} <= set(result.timeseries.columns)
    # The same scenario simulated is the baseline a target run is compared with (--compare).
    from testbed.live.fidelity import compare
    from testbed.sim import simulate

    assert "availability" in compare(simulate(result.scenario, seed=result.seed), result).markdown()
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"requests.parquet", "verdicts.json", "scorecard.json", "target_metrics.parquet", "report.md"} <= written


def test_client_mode_stop_condition_aborts_and_the_rollback_switches_the_errors_off(target_servers, tmp_path):
    pid_dir, ports = target_servers
    data = yaml.safe_load((EXAMPLES / "replica-servers.yaml").read_text())
    r0 = data["regions"]["local/east"]["pools"]["default"][0]
    del r0["proxy"]
    data["regions"]["local/east"]["pools"]["default"] = [r0]
    data |= {"mode": "client", "entry": "http://127.0.0.1:${R0_PORT}", "blast_radius": 1.0,
             "stop": {"availability": {"window": "2s", "min": "60%", "min_requests": 3}}}
    path = EXAMPLES / f".client-{os.getpid()}.yaml"  # beside start_server.py: commands run in the target's directory
    path.write_text(yaml.safe_dump(data))
    scenario = yaml.safe_load((EXAMPLES / "replica-crash.yaml").read_text())
    scenario["topology"]["providers"][0]["regions"][0]["zones"][0]["racks"][0]["nodes"] = 1
    # Every answer an error from 1 s on (the replica's own hook): fast to trip, and its rollback is instant.
    errors = {"kind": "error_injection", "target": "local/east/z0/host/node-0", "at": "1s", "duration": "25s", "rate": 1.0, "status": 503}
    scenario |= {"duration": "30s", "faults": [errors],
                 "workload": {**scenario["workload"], "arrival": {"kind": "poisson", "rate": "6/s"}}}
    try:
        outcome = run_target(Scenario.model_validate(scenario), load_target(path), source=str(path), base_dir=EXAMPLES,
                             journal_path=tmp_path / "journal.jsonl")
    finally:
        path.unlink()
    result = outcome.result
    assert result.stats["mode"] == "client"
    aborted = result.stats["aborted"]
    assert aborted.startswith("availability") and "below the floor 60.0%" in aborted
    assert not result.passed and not {v.objective: v.passed for v in result.sla}[f"no stop condition tripped: {aborted}"]
    # Sent: only what arrived before the abort, every one recorded from the client's side.
    assert 6 <= result.stats["requests_sent"] == len(result.requests) < 100
    assert (result.requests["replica"] == -1).all() and (result.requests["status"] == "failed").any()
    journal = _journal(tmp_path / "journal.jsonl")
    applied = [(line["verb"], line["params"], line["undoes"]) for line in journal if line["event"] == "applied"]
    # The rollback switched the errors off, long before their repair time.
    assert applied == [("hooks", {"error_rate": 1.0, "error_status": 503.0}, None), ("hooks", {"slowdown": 1.0, "error_rate": 0.0}, 1)]
    assert journal[-1]["event"] == "end" and journal[-1]["outcome"].startswith("aborted: availability")
    assert _healthy(ports["r0"]) and {v.objective: v.passed for v in result.sla}["steady state after recovery"]


def test_sigkill_of_testbed_mid_run_then_rollback_restores_every_endpoint(target_servers, tmp_path):
    pid_dir, ports = target_servers
    target = yaml.safe_load((EXAMPLES / "replica-servers.yaml").read_text())
    target |= {"blast_radius": 1.0, "stop": {}}
    target_path = EXAMPLES / f".rollback-{os.getpid()}.yaml"
    target_path.write_text(yaml.safe_dump(target))
    scenario = yaml.safe_load((EXAMPLES / "replica-crash.yaml").read_text())
    scenario |= {"duration": "60s", "faults": [
        {"kind": "node_crash", "target": "local/east/z0/host/node-0", "at": "500ms", "duration": "50s"},
        {"kind": "node_hang", "target": "local/east/z0/host/node-1", "at": "500ms", "duration": "50s"},
    ]}
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text(yaml.safe_dump(scenario))
    journal = tmp_path / "journal.jsonl"
    testbed = [sys.executable, "-m", "testbed"]
    try:
        run = subprocess.Popen([*testbed, "live", str(scenario_path), "--target", str(target_path), "--journal", str(journal),
                                "--out", str(tmp_path / "out")], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while sum(line["event"] == "applied" for line in _journal(journal)) < 2 if journal.exists() else True:
            assert run.poll() is None, run.stderr.read().decode()
            assert time.monotonic() < deadline, "the faults were not applied in time"
            time.sleep(0.1)
        run.send_signal(signal.SIGKILL)  # no finally block, no rollback: the journal is all that is left
        run.wait(10)
        assert not _healthy(ports["r0"]) and not _healthy(ports["r1"], timeout=1.0)  # killed, and stopped
        rolled = subprocess.run([*testbed, "live", "--rollback", str(journal)], env=_env(), capture_output=True, text=True, timeout=200)
    finally:
        target_path.unlink()
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert _healthy(ports["r0"]) and _healthy(ports["r1"])
    assert "rolled back resume:r1: SIGCONT to process group" in rolled.stdout and "rolled back restart:r0: ran" in rolled.stdout
    lines = _journal(journal)
    assert lines[-1]["event"] == "rolled_back" and lines[-1]["failures"] == []
    again = subprocess.run([*testbed, "live", "--rollback", str(journal)], env=_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to roll back" in again.stdout


def test_sigterm_mid_run_rolls_back_before_testbed_exits(target_servers, tmp_path):
    """SIGTERM (and Ctrl-C, the same cancellation) ends the run through its rollbacks."""
    pid_dir, ports = target_servers
    scenario = yaml.safe_load((EXAMPLES / "replica-crash.yaml").read_text())
    scenario |= {"duration": "60s", "faults": [{"kind": "node_hang", "target": "local/east/z0/host/node-1", "at": "500ms", "duration": "50s"}]}
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text(yaml.safe_dump(scenario))
    journal = tmp_path / "journal.jsonl"
    run = subprocess.Popen([sys.executable, "-m", "testbed", "live", str(scenario_path), "--target", str(EXAMPLES / "replica-servers.yaml"),
                            "--journal", str(journal), "--out", str(tmp_path / "out")], env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (journal.exists() and any(line["event"] == "applied" for line in _journal(journal))):
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline, "the fault was not applied in time"
        time.sleep(0.1)
    assert not _healthy(ports["r1"], timeout=1.0)  # stopped
    run.send_signal(signal.SIGTERM)
    run.wait(120)
    assert _healthy(ports["r1"])  # resumed by the run's own rollback, before it exited
    lines = _journal(journal)
    assert [(line["verb"], line["undoes"]) for line in lines if line["event"] == "applied"] == [("pause", None), ("resume", 1)]
    assert lines[-1]["event"] == "end" and lines[-1]["outcome"] == "interrupted"


def test_chaos_toolkit_experiment_runs_testbed_under_the_real_chaos_run(target_servers, tmp_path):
    chaos = Path(sys.executable).with_name("chaos")
    if not chaos.exists():
        pytest.fail("the chaos command is missing: install the chaostoolkit extra (pip install -e '.[dev]')")
    scenario = yaml.safe_load((EXAMPLES / "replica-crash.yaml").read_text())
    scenario |= {"duration": "6s", "faults": [scenario["faults"][0]]}  # the slowdown only: no restart to wait for
    scenario_path = tmp_path / "scenario.yaml"
    scenario_path.write_text(yaml.safe_dump(scenario))
    experiment = json.loads((EXAMPLES / "chaostoolkit-experiment.json").read_text())
    configuration = {"target": str(EXAMPLES / "replica-servers.yaml"), "scenario": str(scenario_path), "out": str(tmp_path / "out"),
                     "journal": str(tmp_path / "faults.jsonl")}
    experiment["configuration"] = configuration
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(experiment))
    run = subprocess.run([str(chaos), "--no-version-check", "run", "--journal-path", str(tmp_path / "chaos-journal.json"), str(path)],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads((tmp_path / "chaos-journal.json").read_text())
    assert record["status"] == "completed" and record["deviated"] is False
    steps = {r["activity"]["name"]: r for r in record["run"]}
    assert steps["run the replica-crash load with its faults"]["output"]["passed"] is True
    assert steps["slow r0 down"]["output"].startswith("POST http://127.0.0.1:")
    assert record["steady_states"]["after"]["steady_state_met"] is True
    rollbacks = record["rollbacks"]
    assert rollbacks and rollbacks[0]["status"] == "succeeded" and rollbacks[0]["output"] == []
    faults = _journal(tmp_path / "faults.jsonl")
    assert [line["verb"] for line in faults if line["event"] == "applied"] == ["hooks", "hooks"]  # slowed, then rolled back
    with urllib.request.urlopen(f"{load_target(EXAMPLES / 'replica-servers.yaml').endpoints()[0].url}/chaos") as answer:
        assert json.loads(answer.read())["slowdown"] == 1.0
