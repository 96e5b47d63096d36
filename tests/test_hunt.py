"""Failure hunting on a planted failure: a two-replica region survives one node crash but not
two at once; hunt must find that and shrink to exactly two overlapping node crashes, and must
report nothing where a region has enough redundancy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.hunt import _Oracle, _refine, hunt, size
from testbed.sim import simulate
from testbed.spec import Scenario
from testbed.strategies import make_fault

ROOT = Path(__file__).resolve().parents[1]


def region_scenario(nodes: int, rate: float = 4.0, **changes) -> Scenario:
    """One region of ``nodes`` single-L4 nodes, one replica each, with a 97% availability SLA.

    A node crash fails the requests in flight on it and a few sent to it before it is known to be
    dead (least-outstanding routing sees an empty replica); 97% leaves room for that, so one crash
    passes and only losing every replica at once fails.
    """
    data = {
        "name": f"region-of-{nodes}",
        "topology": {
            "name": f"{nodes}-nodes",
            "providers": [
                {"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
                    {"name": "rack", "nodes": nodes, "device": "L4", "devices_per_node": 1}
                ]}]}]}
            ],
        },
        "workload": {
            "arrival": {"kind": "poisson", "rate": rate},
            "prompt_tokens": {"kind": "fixed", "value": 256},
            "output_tokens": {"kind": "fixed", "value": 32},
        },
        "duration": 60.0,
        "drain": 30.0,
        "seed": 1,
        "sla": [{"metric": "availability", "min": 0.97}],
        **changes,
    }
    return Scenario.model_validate(data)


def crash(node: int, at: float, duration: float):
    return make_fault(kind="node_crash", target=f"p/r/z/rack/node-{node}", at=at, duration=duration)


@pytest.fixture(scope="module")
def planted():
    """The planted failure, hunted once for the module (it is the expensive part)."""
    scenario = region_scenario(2)
    assert simulate(scenario).passed, "the planted scenario must hold its SLA without faults"
    return scenario, hunt(scenario, budget=40, kinds=["node_crash"], max_faults=3)


def test_hunt_finds_and_shrinks_to_exactly_two_overlapping_node_crashes(planted):
    scenario, found = planted
    assert found.found and found.first_failure is not None
    first, second = found.schedule
    assert first.kind == second.kind == "node_crash"
    assert first.target != second.target  # both replicas of the region
    assert first.at < second.at + second.duration and second.at < first.at + first.duration  # overlapping
    assert size(found.schedule) <= size(found.first_failure)
    # Minimal: without either fault, or with either one step shorter, the SLA holds again.
    for i in range(2):
        assert simulate(scenario.model_copy(update={"faults": found.schedule[:i] + found.schedule[i + 1 :]})).passed
    # Why it fails: the availability objective, observed below its limit by a negative margin.
    (violation,) = found.violations
    assert violation.metric == "availability" and violation.observed < violation.limit and violation.margin < 0
    assert found.search_evaluations <= 40 and found.wall_time > 0


def test_the_written_scenario_runs_and_fails_the_same_way(planted, tmp_path):
    _, found = planted
    path = found.write(tmp_path)
    assert path == tmp_path / "minimal-failure.yaml"
    text = path.read_text()
    assert text.startswith("# minimal failure of scenario 'region-of-2', seed 1") and "# violates availability" in text
    reloaded = Scenario.from_yaml(path)
    assert reloaded.seed == 1 and len(reloaded.faults) == 2
    rerun = simulate(reloaded)
    assert [(v.objective, v.observed, v.passed) for v in rerun.sla] == [(v.objective, v.observed, v.passed) for v in found.result.sla]


def test_hunt_reports_nothing_where_the_region_has_enough_redundancy():
    found = hunt(region_scenario(4), budget=15, kinds=["node_crash"], max_faults=2)
    assert not found.found and found.schedule is None and found.violations == []
    assert found.search_evaluations == 15 and found.shrink_evaluations == 0


def test_hunt_is_deterministic_for_a_search_seed():
    scenario = region_scenario(2)
    runs = [hunt(scenario, budget=10, shrink_budget=5, kinds=["node_crash"], search_seed=3) for _ in range(2)]
    assert runs[0].schedule == runs[1].schedule and runs[0].first_failure == runs[1].first_failure
    assert (runs[0].search_evaluations, runs[0].shrink_evaluations) == (runs[1].search_evaluations, runs[1].shrink_evaluations)


def test_a_scenario_that_fails_without_faults_shrinks_to_the_empty_schedule():
    found = hunt(region_scenario(2, sla=[{"metric": "ttft", "percentile": 50, "max": 0.001}]), budget=5)
    assert found.found and found.schedule == [] and found.search_evaluations == 1
    assert found.violations[0].metric == "ttft"


class Rule:
    """A stand-in oracle isolating the shrink passes: fails iff two crashes overlap >= 4 s."""

    def __init__(self) -> None:
        self.calls = 0

    def fails(self, schedule) -> bool:
        self.calls += 1
        spans = [(f.at, f.at + f.duration) for f in schedule if f.kind == "node_crash"]
        return any(
            min(a[1], b[1]) - max(a[0], b[0]) >= 4 for i, a in enumerate(spans) for b in spans[i + 1 :]
        )


def test_own_shrink_passes_drop_shorten_and_move_earlier():
    padded = [crash(0, 10, 40), make_fault(kind="slowdown", target="p/r", at=5, duration=30, speed=0.5), crash(1, 20, 30)]
    rule = Rule()
    assert rule.fails(padded)
    shrunk, steps = _refine(padded, rule, step=1.0)
    assert [f.kind for f in shrunk] == ["node_crash", "node_crash"]
    assert [(f.at, f.duration) for f in shrunk] == [(0.0, 4.0), (0.0, 4.0)]
    assert steps[0].startswith("dropped slowdown") and any(s.startswith("moved") for s in steps)


def test_the_oracle_memoises_and_respects_its_budget():
    oracle = _Oracle(region_scenario(2), seed=1, budget=2, shrink_budget=0, progress=None)
    assert oracle.fails([]) is False and oracle.fails([]) is False
    assert oracle.used["search"] == 1
    assert oracle.fails([crash(0, 0, 5)]) is False
    assert oracle.fails([crash(1, 0, 5)]) is None  # budget spent: unknown, not simulated
    assert oracle.used["search"] == 2


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="budget must be at least 1"):
        hunt(region_scenario(2), budget=0)
    with pytest.raises(ValueError, match="unknown fault kind 'crash'"):
        hunt(region_scenario(2), kinds=["crash"])


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_hunt_prints_the_minimal_schedule_why_and_cost_and_exits_1(tmp_path):
    path = tmp_path / "planted.yaml"
    path.write_text(yaml.safe_dump(region_scenario(2).model_dump(mode="json", by_alias=True, exclude_defaults=True)))
    proc = run_cli("hunt", str(path), "--budget", "20", "--shrink-budget", "30", "--kinds", "node_crash", "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "minimal failing schedule (2 faults)" in out and out.count("node_crash") >= 2
    assert "why it fails" in out and "availability" in out and "≥ 97.000%" in out
    assert "hunt took" in out and "simulations" in out
    assert "reproduce: testbed run" in out and "minimal-failure.yaml --seed 1" in out.replace("\n", "")
    from typer.testing import CliRunner

    from testbed.cli import app

    rerun = CliRunner().invoke(app, ["run", str(tmp_path / "out" / "minimal-failure.yaml"), "--quiet", "--out", str(tmp_path / "run")])
    assert rerun.exit_code == 1 and "FAIL" in rerun.output


def test_cli_hunt_bad_input_exits_2_with_one_message(tmp_path):
    from typer.testing import CliRunner

    from testbed.cli import app

    path = tmp_path / "planted.yaml"
    path.write_text(yaml.safe_dump(region_scenario(2).model_dump(mode="json", by_alias=True, exclude_defaults=True)))
    runner = CliRunner()
    bad_kind = runner.invoke(app, ["hunt", str(path), "--kinds", "node_crsh"])
    assert bad_kind.exit_code == 2 and "unknown fault kind 'node_crsh'" in bad_kind.output
    missing = runner.invoke(app, ["hunt", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml: cannot read file" in missing.output
    assert runner.invoke(app, ["hunt", str(path), "--budget", "0"]).exit_code == 2


def test_a_hunt_for_one_objective_refuses_a_label_the_sla_does_not_have():
    with pytest.raises(ValueError, match=r"unknown objective\(s\) 'p99 latency'; this scenario's are: "):
        hunt(region_scenario(2), budget=1, objectives=["p99 latency"])
