"""What ``testbed live`` says while it runs — faults fired and repaired, counters — and the
host-load figures and hint (a real replay on 127.0.0.1 for the first, pure functions for the hint)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from testbed.live.injector import Action
from testbed.live.progress import FaultEvent, Tally, is_repair, load_hint

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
NODE0 = "local/east/z/host/node-0"
REPLICA0 = NODE0 + "/replica-0"


def _scenario(tmp_path: Path) -> Path:
    spec = {
        "name": "progress",
        "topology": {
            "name": "two-regions",
            "model": "tiny",
            "profiles": {"cpu-fp32": str(ROOT / "profiles" / "cpu-fp32-tiny.json")},
            "providers": [{"name": "local", "regions": [{"name": "east", "zones": [{"name": "z", "racks": [{"name": "host", "nodes": 1, "device": "cpu-fp32", "devices_per_node": 1}]}]}]}],
        },
        "duration": 6,
        "drain": 15,
        "workload": {"arrival": {"kind": "poisson", "rate": 4}, "prompt_tokens": {"kind": "fixed", "value": 16}, "output_tokens": {"kind": "fixed", "value": 8}},
        "serving": {"batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": 0.01}, "health_check": {"period": 1, "timeout": 0.5}},
        # A hang, not a crash: its repair (SIGCONT) is instant, where a restart reloads the model.
        "faults": [{"kind": "node_hang", "target": NODE0, "at": 2, "duration": 1.5}],
        "sla": [{"metric": "availability", "min": "10%"}],
    }
    path = tmp_path / "progress.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.live
def test_live_prints_each_fault_fired_and_repaired_and_counters_and_records_the_host_load(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    import testbed.live.replay as replay
    from testbed.cli import app

    results = []
    real = replay.run_live
    monkeypatch.setattr(replay, "run_live", lambda *a, **k: results.append(real(*a, **k)) or results[-1])  # a spy: the run is real
    outcome = CliRunner().invoke(app, ["live", str(_scenario(tmp_path)), "--out", str(tmp_path / "out")])
    text = outcome.output
    assert outcome.exit_code in (0, 1), text
    fired = re.search(rf"(\d+\.\d)s  fault fired: node_hang on {NODE0} \(pause {REPLICA0}\)", text)
    repaired = re.search(rf"(\d+\.\d)s  fault repaired: node_hang on {NODE0} \(resume {REPLICA0}\)", text)
    assert fired and repaired, text
    assert 2.0 <= float(fired.group(1)) < 3.5 and float(repaired.group(1)) >= 3.5
    tally = re.search(r"(\d+\.\d)s  sent (\d+)  ok (\d+)  failed (\d+)  in flight (\d+)", text)
    assert tally, text
    sent, ok, failed, flying = map(int, tally.groups()[1:])
    assert sent > 0 and sent == ok + failed + flying
    stats = results[0].stats
    assert stats["host_cores"] == os.cpu_count()
    assert len(stats["host_load_start"]) == 3 and len(stats["host_load_end"]) == 3
    assert stats["host_load_peak_1m"] >= max(stats["host_load_start"][0], stats["host_load_end"][0])


def test_fault_and_counter_lines_read_as_people_say_them():
    assert FaultEvent(12.04, "kill", "r0", "node_crash on a/b", repair=False).describe() == "   12.0s  fault fired: node_crash on a/b (kill r0)"
    assert FaultEvent(3, "restart", "r0", "node_crash on a/b", True, "RuntimeError: no").describe().endswith("(restart r0) FAILED: RuntimeError: no")
    assert Tally(5.0, 20, 12, 3).describe() == "    5.0s  sent 20  ok 12  failed 3  in flight 5"


def test_repairs_are_restarts_resumes_heals_and_neutral_hooks():
    assert [is_repair(Action(0, v, 0)) for v in ("kill", "restart", "pause", "resume", "cut", "heal", "toxic", "untoxic")] == [
        False, True, False, True, False, True, False, True,
    ]
    assert not is_repair(Action(0, "hooks", 0, {"slowdown": 2.0}))
    assert is_repair(Action(0, "hooks", 0, {"slowdown": 1.0}))
    assert not is_repair(Action(0, "hooks", 0, {"error_rate": 0.3, "error_status": 503.0}))
    assert is_repair(Action(0, "hooks", 0, {"error_rate": 0.0, "error_status": 503.0}))


LOADED = {"host_cores": 2, "host_load_start": [1.5, 1.0, 1.0], "host_load_end": [3.1, 2.0, 1.0], "host_load_peak_1m": 4.2}
IDLE = {**LOADED, "host_load_end": [0.5, 0.5, 0.5], "host_load_peak_1m": 1.5}


def test_the_load_hint_appears_only_when_the_host_was_loaded_and_the_verdict_is_in_doubt():
    hint = load_hint(LOADED, live_passed=False, reference_passed=True)
    assert hint == (
        "hint: the live verdict (fail) differs from the simulated one (pass) while the host was loaded — 1-minute load "
        "average peaked at 4.2 on 2 cores (start 1.5, end 3.1); replicas shared the CPU with other work, which slows them"
    )
    assert load_hint(LOADED, live_passed=False, reference_passed=None).startswith("hint: the live run failed while")
    assert load_hint(LOADED, live_passed=True, reference_passed=True) is None  # verdicts agree
    assert load_hint(LOADED, live_passed=True, reference_passed=None) is None  # passed despite the load
    assert load_hint(IDLE, live_passed=False, reference_passed=True) is None  # not loaded: no excuse offered
    assert load_hint({}, live_passed=False, reference_passed=True) is None  # a run without the figures
