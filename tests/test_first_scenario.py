"""The first-scenario guide (docs/guides/first-scenario.md) holds as written: its shipped files
run to the verdicts it quotes, its fix makes the failing scenario pass, and its suite passes.

Each ```text block of the guide that starts with ``$ testbed run FILE`` is run through the real
CLI, and every line it quotes (``...`` skips lines) must appear in the command's output, with the
exit code its last line implies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from testbed.cli import app
from testbed.sim import simulate
from testbed.spec import Scenario

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "first-scenario.md"
FILES = ROOT / "examples" / "first-scenario"


def quoted_runs() -> list[tuple[str, list[str]]]:
    blocks = re.findall(r"```text\n\$ testbed run (\S+)[^\n]*\n(.*?)```", GUIDE.read_text(), re.S)
    return [(path, [line.rstrip() for line in body.splitlines() if line.strip() and line != "..."]) for path, body in blocks]


def test_the_guide_quotes_a_passing_and_a_failing_run() -> None:
    runs = dict(quoted_runs())
    assert runs.keys() == {"examples/first-scenario/steady.yaml", "examples/first-scenario/zone-outage.yaml"}
    assert runs["examples/first-scenario/steady.yaml"][-1] == "all SLAs met"
    assert runs["examples/first-scenario/zone-outage.yaml"][-1] == "SLA violated"


@pytest.mark.parametrize(("path", "quoted"), quoted_runs(), ids=lambda v: Path(v).stem if isinstance(v, str) else "")
def test_each_quoted_run_prints_what_the_guide_says(path: str, quoted: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, ["run", path, "--out", str(tmp_path / "out")], env={"COLUMNS": "120"})
    printed = [line.rstrip() for line in result.output.splitlines()]
    for line in quoted:
        assert line in printed, f"the guide quotes {line!r}; `testbed run {path}` printed:\n{result.output}"
    assert result.exit_code == (0 if quoted[-1] == "all SLAs met" else 1), result.output
    assert (tmp_path / "out" / "requests.parquet").exists() and (tmp_path / "out" / "report.md").exists()


def test_a_third_node_per_zone_makes_the_zone_outage_pass(tmp_path: Path) -> None:
    for name in ("my-region.yaml", "zone-outage.yaml"):
        shutil.copy(FILES / name, tmp_path / name)
    topology = tmp_path / "my-region.yaml"
    topology.write_text(topology.read_text().replace("nodes: 2", "nodes: 3"))
    result = simulate(Scenario.from_yaml(tmp_path / "zone-outage.yaml"))
    assert result.passed, result.verdicts
    e2e = next(v for v in result.sla if v.metric == "e2e")
    assert f"{e2e.observed:.1f}" == "13.6"  # "p99 e2e comes down to about 13.6 s"


def test_the_guide_suite_passes_as_shipped() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(FILES)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr
