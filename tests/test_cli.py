"""The `testbed` command as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def short_scenario(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "faults" / "baseline.yaml").read_text())
    data["topology"] = str(ROOT / "topologies" / "gpu-region.yaml")
    data.update(duration="40s", warmup="5s")
    data["workload"]["arrival"]["rate"] = "300/s"
    data.update(changes)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_prints_verdicts_writes_records_and_exits_0_when_slas_hold(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", str(short_scenario(tmp_path)), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "SLA verdicts" in proc.stdout and "all SLAs met" in proc.stdout
    requests = pd.read_parquet(out / "requests.parquet")
    assert len(requests) > 1000 and (requests["status"] == "ok").all()
    assert not pd.read_parquet(out / "timeseries.parquet").empty
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert verdicts["passed"] is True and len(verdicts["verdicts"]) == 6  # five SLA objectives and the false-alert objective
    assert "## SLA verdicts" in (out / "report.md").read_text()


def test_run_exits_1_when_an_sla_is_violated(tmp_path):
    strict = [{"metric": "ttft", "percentile": 99, "max": "1ms"}]
    proc = run_cli("run", str(short_scenario(tmp_path, sla=strict)), "--out", str(tmp_path / "o"), "--quiet")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "SLA violated" in proc.stdout


def test_seed_and_duration_overrides(tmp_path):
    proc = run_cli("run", str(short_scenario(tmp_path)), "--out", str(tmp_path / "o"), "--seed", "9", "--duration", "20s", "--quiet")
    assert proc.returncode == 0, proc.stderr
    requests = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert requests["arrival"].max() < 20
    assert json.loads((tmp_path / "o" / "verdicts.json").read_text())["seed"] == 9


def test_bad_input_is_one_message_and_exit_2_never_a_traceback(tmp_path):
    bad = short_scenario(tmp_path, duration="soon")
    proc = run_cli("run", str(bad), "--quiet")
    assert proc.returncode == 2
    assert f"{bad}: duration: expected a duration" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    proc = run_cli("run", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "cannot read file" in proc.stderr
    proc = run_cli("run", str(short_scenario(tmp_path)), "--duration", "forever")
    assert proc.returncode == 2 and "--duration" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_checks_scenarios_and_topologies(tmp_path):
    catalog = [str(p) for p in sorted((ROOT / "topologies").glob("*.yaml")) + sorted((ROOT / "faults").glob("*.yaml"))]
    proc = run_cli("validate", *catalog)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok ") == len(catalog)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nproviders: [{name: p, regions: []}]\n")
    proc = run_cli("validate", catalog[0], str(broken))
    assert proc.returncode == 2
    assert "broken.yaml: providers.p.regions" in proc.stderr  # a list item with a name is named


def test_validate_checks_campaigns_cell_by_cell(tmp_path):
    campaigns = [str(p) for p in sorted((ROOT / "faults" / "campaigns").glob("*.yaml"))]
    proc = run_cli("validate", *campaigns)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(campaign)") == len(campaigns) >= 3
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"name: t\nscenario: {ROOT / 'faults' / 'baseline.yaml'}\nmatrix: {{serving.batchng.policy: [micro]}}\n")
    proc = run_cli("validate", str(typo))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "typo.yaml: matrix.serving.batchng.policy = micro gives an invalid scenario" in proc.stderr


def test_schema_prints_json_schema():
    proc = run_cli("schema")
    assert proc.returncode == 0
    assert "workload" in json.loads(proc.stdout)["properties"]
    assert "providers" in json.loads(run_cli("schema", "--kind", "topology").stdout)["properties"]
    assert run_cli("schema", "--kind", "nope").returncode == 2


def test_run_says_why_report_html_is_missing_without_plotly(tmp_path):
    # A core install (`pip install -e .`) has no plotly: the run still succeeds, and says what to install.
    blocked = "import sys; sys.modules['plotly'] = None; from testbed.cli import app; app()"
    scenario, out = short_scenario(tmp_path, duration="20s"), tmp_path / "o"
    proc = subprocess.run([sys.executable, "-c", blocked, "run", str(scenario), "--out", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "report.html not written" in proc.stdout and "[explore]" in proc.stdout
    assert (out / "report.md").exists() and not (out / "report.html").exists()
