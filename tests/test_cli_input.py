"""The CLI on bad input and its new commands, run in-process (Typer's runner) on real files.

Bad input is one ``error:`` message naming the file and exit 2, and ``validate`` goes on to
check the other files; ``run`` blames an option only when it was given. ``compare`` and
``report`` work from the records of real simulated runs.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from testbed.cli import app
from testbed.cli.run import RunProgress, progress_columns
from testbed.observe.render import scorecard_table
from testbed.report.read import read_run

RUNNER = CliRunner()

TINY = {
    "name": "tiny",
    "topology": {
        "name": "tiny",
        "model": "llama-3-8b",
        "providers": [{"name": "aws", "regions": [{"name": "us-east-1", "zones": [{"name": "use1-az1", "racks": [
            {"name": "rack-0", "nodes": 2, "device": "H100", "devices_per_node": 1}]}]}]}],
    },
    "workload": {
        "arrival": {"kind": "poisson", "rate": "4/s"},
        "prompt_tokens": {"kind": "fixed", "value": 64},
        "output_tokens": {"kind": "fixed", "value": 16},
    },
    "sla": [{"metric": "availability", "min": "99%"}, {"metric": "ttft", "percentile": 99, "max": "2s"}],
    "duration": "30s",
    "drain": "30s",
}


def invoke(*args: str):
    return RUNNER.invoke(app, list(args))


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two real simulated runs of the tiny scenario: seed 1, and seed 2 with a node crash."""
    root = tmp_path_factory.mktemp("runs")
    crash = {**TINY, "faults": [{"kind": "node_crash", "target": "aws/us-east-1/use1-az1/rack-0/node-1", "at": "10s", "duration": "10s"}]}
    a, b = root / "a", root / "b"
    assert invoke("run", str(write(root / "a.yaml", TINY)), "--out", str(a), "--seed", "1", "--quiet").exit_code in (0, 1)
    assert invoke("run", str(write(root / "b.yaml", crash)), "--out", str(b), "--seed", "2", "--quiet").exit_code in (0, 1)
    return a, b


def test_validate_reports_a_non_utf8_file_and_goes_on_checking_the_others(tmp_path):
    good = write(tmp_path / "a.yaml", TINY)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    other = write(tmp_path / "c.yaml", TINY)
    result = invoke("validate", str(good), str(bad), str(other))
    assert result.exit_code == 2
    assert f"ok {good}" in result.stdout and f"ok {other}" in result.stdout
    assert f"error: {bad}: not UTF-8 text: byte 0xff on line 1" in result.stderr
    assert "Traceback" not in result.stderr and "UnicodeDecodeError" not in result.stderr


def test_run_does_not_blame_duration_when_none_was_given(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\n")
    result = invoke("run", str(bad), "--quiet")
    assert result.exit_code == 2
    assert "--duration" not in result.stderr and f"error: {bad}: not UTF-8 text" in result.stderr


def test_run_blames_duration_when_it_is_the_problem(tmp_path):
    result = invoke("run", str(write(tmp_path / "s.yaml", TINY)), "--duration", "soon", "--quiet")
    assert result.exit_code == 2 and "error: --duration: expected a duration" in result.stderr and "'soon'" in result.stderr


def test_validate_warns_about_a_delay_beyond_the_deadline_but_passes(tmp_path):
    slow = {**TINY, "serving": {"timeouts": {"request": "5s"}},
            "faults": [{"kind": "latency", "between": ["aws/us-east-1", "clients:aws/us-east-1"], "at": "5s", "delay": "6s"}]}
    result = invoke("validate", str(write(tmp_path / "slow.yaml", slow)))
    assert result.exit_code == 0, result.stderr
    assert "warning:" in result.stderr and "delay 6s is at or beyond the request deadline" in result.stderr


def test_short_help_and_version():
    assert invoke("-h").exit_code == 0 and "Usage" in invoke("-h").stdout
    assert "--seed" in invoke("run", "-h").stdout
    result = invoke("--version")
    assert result.exit_code == 0 and re.fullmatch(r"testbed \S+\n", result.stdout)


def test_compare_puts_two_runs_side_by_side_with_differences(runs):
    a, b = runs
    result = RUNNER.invoke(app, ["compare", str(a), str(b)], terminal_width=160)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for fragment in ("SLA verdicts", "objective", "A observed", "B observed", "B − A", "ttft p99", "e2e p50", "availability"):
        assert fragment in out, out
    # The crash in B delays the requests on the crashed node: a positive latency difference and change.
    ttft_p99 = next(line for line in out.splitlines() if "ttft p99" in line)
    assert re.search(r"\+\d[\d.]* (ms|s) .*\+\d[\d.]*%", ttft_p99), ttft_p99


def test_compare_of_a_directory_without_records_is_exit_2(tmp_path, runs):
    result = invoke("compare", str(runs[0]), str(tmp_path))
    assert result.exit_code == 2 and f"{tmp_path / 'verdicts.json'}: cannot read run records" in result.stderr


def test_report_rebuilds_the_reports_from_the_records(runs, tmp_path):
    a = runs[1]
    original = (a / "report.md").read_text()
    (a / "report.md").unlink()
    (a / "report.html").unlink(missing_ok=True)
    result = invoke("report", str(a))
    assert result.exit_code == 0, result.stderr
    rebuilt = (a / "report.md").read_text()
    assert _without_wall_time(rebuilt) == _without_wall_time(original)
    assert "## Observability scorecard" in rebuilt and "node_crash" in rebuilt
    assert read_run(a).passed == json.loads((a / "verdicts.json").read_text())["passed"]
    assert invoke("report", str(tmp_path)).exit_code == 2


def _without_wall_time(report: str) -> list[str]:
    """The report's lines but the wall-time note, which is the machine's, not the run's (and not recorded)."""
    return [line for line in report.splitlines() if line and "wall time" not in line]


def test_the_progress_bar_shows_the_simulated_clock_and_the_drain_phase():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    with Progress(*progress_columns(), console=console, auto_refresh=False) as bar:
        progress = RunProgress(bar, "tiny", duration=120.0, drain=600.0)
        progress(60.0 / 720.0)
        bar.refresh()
        assert "1:00 of 2:00 simulated" in out.getvalue() and "ETA" in out.getvalue()
        progress(200.0 / 720.0)
        bar.refresh()
    text = out.getvalue()
    assert "draining in-flight requests, then analysing the records" in text and "2:00 of 2:00 simulated" in text


def test_the_scorecard_keeps_the_whole_target_at_80_columns(runs):
    result = read_run(runs[1])
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(scorecard_table(result))
    text = out.getvalue()
    assert "aws/us-east-1/use1-az1/rack-0/node-1" in text, text
    assert "…" not in text
