"""Every scenario in faults/ runs and ends with the verdict its header comment promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.sim import simulate
from testbed.spec import Scenario

FAULTS = Path(__file__).resolve().parents[1] / "faults"

# file -> (every SLA passes?, objectives expected to fail). Keep in step with each file's comment.
EXPECTED = {
    "baseline.yaml": (True, set()),
    "trace-replay.yaml": (False, {"p99 ttft"}),
}


def test_every_scenario_file_has_an_expectation():
    assert {p.name for p in FAULTS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenario_meets_its_stated_expectation(name):
    passed, failing = EXPECTED[name]
    result = simulate(Scenario.from_yaml(FAULTS / name))
    assert result.passed is passed, result.verdicts
    assert {v.objective for v in result.sla if not v.passed} == failing
    assert not (result.requests["status"] == "pending").any()
