"""The pytest plugin, exercised the way a user's suite uses it: pytester writes a test file and
a scenario, runs pytest on them, and we read the outcomes and messages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.sim import simulate
from testbed.spec import Scenario

pytest_plugins = ["pytester"]

SCENARIO = {
    "name": "two-node",
    "topology": {
        "name": "two-node",
        "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [
            {"name": "rack", "nodes": 2, "device": "L4", "devices_per_node": 1}
        ]}]}]}],
    },
    "workload": {
        "arrival": {"kind": "poisson", "rate": 4.0},
        "prompt_tokens": {"kind": "fixed", "value": 256},
        "output_tokens": {"kind": "fixed", "value": 32},
    },
    "duration": 30.0,
    "drain": 30.0,
    "seed": 1,
    "sla": [{"metric": "availability", "min": 0.97}, {"metric": "ttft", "percentile": 99, "max": 30.0}],
}
BOTH_NODES = repr([{"kind": "node_crash", "target": f"p/r/z/rack/node-{n}", "at": 5, "duration": 10} for n in (0, 1)])


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".yaml", scenario=yaml.safe_dump(SCENARIO))
    return pytester


def test_fixtures_load_and_run_a_scenario_with_its_seed_or_the_option(suite):
    suite.makepyfile(
        """
        from testbed.pytest_plugin import assert_sla

        def test_runs(run_scenario, scenario_loader):
            scenario = scenario_loader("scenario.yaml")
            assert scenario.name == "two-node"
            result = run_scenario("scenario.yaml")
            assert_sla(result)
            assert result.seed == SEED and len(result.requests) > 50
            assert run_scenario(scenario, seed=11).seed == 11

        def test_plane_and_seed_fixtures(testbed_plane, testbed_seed):
            assert (testbed_plane, testbed_seed) == ("sim", SEED_OPTION)
        """.replace("SEED_OPTION", "7").replace("SEED", "7")
    )
    suite.runpytest("-p", "no:cacheprovider", "--testbed-seed", "7").assert_outcomes(passed=2)


def test_chaos_marker_breaks_the_sla_and_assert_sla_says_why_and_how_to_reproduce(suite):
    suite.makepyfile(
        f"""
        import pytest
        from testbed.pytest_plugin import assert_sla

        @pytest.mark.chaos(faults={BOTH_NODES})
        def test_both_nodes_down(run_scenario):
            result = run_scenario("scenario.yaml")
            assert len(result.scenario.faults) == 2
            assert_sla(result)

        @pytest.mark.chaos(faults={BOTH_NODES})
        def test_ignoring_the_violated_objective_passes(run_scenario):
            assert_sla(run_scenario("scenario.yaml"), ignore=["availability"])
        """
    )
    outcome = suite.runpytest("-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1, failed=1)
    text = outcome.stdout.str()
    assert "SLA violated: scenario 'two-node', seed 1: 1 of 2 objectives failed" in text
    line = re.search(r"availability: observed ([\d.]+)%, limit ≥ 97\.000%, margin (-[\d.]+)%", text)
    assert line is not None, text
    assert float(line.group(1)) < 97 and float(line.group(2)) == pytest.approx(float(line.group(1)) - 97, abs=2e-3)
    assert "p99 ttft" not in text.split("SLA violated")[1].split("reproduce")[0]  # only violations are listed
    # The reproduce line names a file with the marker's faults; running it fails the same way.
    reproduce = re.search(r"reproduce: testbed run (\S+\.yaml) --seed 1", text)
    assert reproduce is not None, text
    rerun = simulate(Scenario.from_yaml(reproduce.group(1)))
    assert not rerun.passed and f"{rerun.sla[0].observed * 100:.3f}" == line.group(1)


def test_chaos_marker_reads_a_file_and_stacks_class_and_function_markers(suite):
    suite.makefile(".yaml", crash=yaml.safe_dump({"faults": [{"kind": "node_crash", "target": "p/r/z/rack/node-1", "at": 5, "duration": 10}]}))
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.chaos(faults=[{"kind": "slowdown", "target": "p/r", "at": 1, "duration": 2, "speed": 0.5}])
        class TestStacked:
            @pytest.mark.chaos(file="crash.yaml")
            def test_both(self, run_scenario, chaos_faults):
                assert [f.kind for f in chaos_faults] == ["slowdown", "node_crash"]
                result = run_scenario("scenario.yaml", faults=[{"kind": "node_hang", "target": "p/r/z/rack/node-0", "at": 20, "duration": 1}])
                assert [f.kind for f in result.scenario.faults] == ["slowdown", "node_crash", "node_hang"]
                assert list(result.faults["kind"]) == ["slowdown", "node_crash", "node_hang"]
        """
    )
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_bad_markers_and_bad_scenarios_fail_with_one_clear_message(suite):
    suite.makefile(".yaml", broken=yaml.safe_dump({**SCENARIO, "duration": "soon"}))
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.chaos(faults=[{"kind": "node_crash", "target": "p/r/z/rack/node-9", "at": 1}])
        def test_unknown_target(run_scenario):
            run_scenario("scenario.yaml")

        @pytest.mark.chaos(faults=[{"kind": "node_crash", "at": 1}])
        def test_missing_field(run_scenario):
            run_scenario("scenario.yaml")

        def test_broken_scenario(run_scenario):
            run_scenario("broken.yaml")
        """
    )
    outcome = suite.runpytest("-p", "no:cacheprovider")
    outcome.assert_outcomes(failed=2, errors=1)  # a bad marker is an error in the fixture's setup
    text = outcome.stdout.str()
    assert "faults.0 (node_crash): no part of topology 'two-node' is named 'p/r/z/rack/node-9'; did you mean" in text
    assert "test_missing_field: chaos marker, faults: 0.node_crash.target: required field is missing" in text
    assert "broken.yaml: duration:" in text
    assert "Traceback" not in text and "pydantic" not in text and "During handling" not in text


def test_strategies_are_re_exported_for_given(suite):
    suite.makepyfile(
        """
        from hypothesis import HealthCheck, given, settings
        from testbed.pytest_plugin import assert_sla, fault_schedules
        from testbed.spec import Scenario

        SCENARIO = Scenario.from_yaml("scenario.yaml")

        @settings(max_examples=4, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(schedule=fault_schedules(SCENARIO, max_faults=1, kinds=["slowdown"]))
        def test_one_mild_fault_keeps_the_sla(run_scenario, schedule):
            assert_sla(run_scenario(SCENARIO, faults=schedule), only=["availability"])
        """
    )
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_options_are_checked_and_the_marker_is_registered(suite):
    suite.makepyfile("def test_plane(testbed_plane):\n    assert testbed_plane == 'live'\n")
    suite.runpytest("-p", "no:cacheprovider", "--testbed-plane", "live").assert_outcomes(passed=1)
    bad = suite.runpytest("-p", "no:cacheprovider", "--testbed-plane", "cloud")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'cloud'" in bad.stderr.str()
    markers = suite.runpytest("--markers").stdout.str()
    assert "@pytest.mark.chaos(faults=None, file=None)" in markers


def test_assert_sla_only_must_name_an_objective():
    from testbed.pytest_plugin import assert_sla

    result = simulate(Scenario.model_validate(SCENARIO))
    with pytest.raises(AssertionError, match=r"only=\['latency'\] matches no objective; objectives: availability"):
        assert_sla(result, only=["latency"])
    assert_sla(result, only=["p99 ttft"])


def test_loading_the_plugin_stays_cheap():
    heavy = ("torch", "fastapi", "hypothesis", "simpy", "pandas", "pydantic", "testbed.sim")
    code = f"import sys, testbed.pytest_plugin; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_live_stack_is_skipped_with_a_reason_when_the_live_extra_is_missing(suite, monkeypatch):
    monkeypatch.setitem(sys.modules, "testbed.live.stack", None)  # what a core install without torch/fastapi sees
    suite.makepyfile("def test_live(live_stack):\n    raise AssertionError('unreachable')\n")
    outcome = suite.runpytest("-p", "no:cacheprovider", "-rs")
    outcome.assert_outcomes(skipped=1)
    assert "the live plane is not installed" in outcome.stdout.str() and "pip install -e '.[live]'" in outcome.stdout.str()


@pytest.mark.live
def test_live_stack_starts_once_per_session_and_serves(suite):
    suite.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def live_stack_options():
            return {"n_replicas": 1, "model": "tiny"}
        """
    )
    suite.makepyfile(
        """
        import httpx

        SEEN = []

        def test_first(live_stack):
            SEEN.append(live_stack)
            assert httpx.get(live_stack.stack.gateway_url + "/health", timeout=10).status_code == 200

        def test_second(live_stack):
            assert live_stack is SEEN[0]  # the same running stack: started once
            live_stack.run(live_stack.stack.pause("r0"))
            live_stack.run(live_stack.stack.resume("r0"))
            assert list(live_stack.stack.faults()["kind"]) == ["node_hang"]
        """
    )
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_the_examples_suite_passes_as_shipped():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples"], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout


def test_run_scenario_takes_durations_as_strings_like_the_marker_and_the_cli(suite):
    suite.makepyfile(
        """
        def test_string_duration(run_scenario):
            result = run_scenario("scenario.yaml", duration="10s")
            assert result.requests["arrival"].max() < 10 and result.stats["duration_override"] == 10

        def test_bad_duration(run_scenario):
            run_scenario("scenario.yaml", duration="soon")
        """
    )
    outcome = suite.runpytest("-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1, failed=1)
    text = outcome.stdout.str()
    assert "run_scenario(duration='soon'): expected a duration" in text
    assert "TypeError" not in text and "Traceback" not in text


def test_assert_sla_fails_names_what_must_break_and_says_when_it_held(suite):
    suite.makepyfile(
        f"""
        import pytest
        from testbed.pytest_plugin import assert_sla_fails

        @pytest.mark.chaos(faults={BOTH_NODES})
        def test_both_nodes_down_breaks_availability(run_scenario):
            [verdict] = assert_sla_fails(run_scenario("scenario.yaml"), objective="availability")
            assert verdict.observed < 0.97

        def test_steady_state_does_not_break_it(run_scenario):
            assert_sla_fails(run_scenario("scenario.yaml"), objective="availability")

        def test_an_unknown_objective_is_named(run_scenario):
            assert_sla_fails(run_scenario("scenario.yaml"), objective="availabilty")
        """
    )
    outcome = suite.runpytest("-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1, failed=2)
    text = outcome.stdout.str()
    assert "expected availability to fail, but it held: scenario 'two-node', seed 1" in text
    assert re.search(r"availability: observed 100\.000%, limit ≥ 97\.000%, margin \+?3\.000%", text), text
    assert "objective='availabilty' matches no objective; objectives: availability, p99 ttft, ttft" in text


def test_a_failing_test_keeps_its_reproduce_file_and_report_outside_pytest_tmp(suite, tmp_path):
    artifacts = tmp_path / "kept"
    suite.makepyfile(
        f"""
        import pytest
        from testbed.pytest_plugin import assert_sla

        @pytest.mark.chaos(faults={BOTH_NODES})
        def test_both_nodes_down(run_scenario):
            assert_sla(run_scenario("scenario.yaml"))

        @pytest.mark.chaos(faults={BOTH_NODES})
        def test_passing_keeps_no_report(run_scenario):
            assert_sla(run_scenario("scenario.yaml"), ignore=["availability"])
        """
    )
    outcome = suite.runpytest("-p", "no:cacheprovider", "--testbed-artifacts", str(artifacts))
    outcome.assert_outcomes(passed=1, failed=1)
    text = outcome.stdout.str()
    reproduce = re.search(r"reproduce: testbed run (\S+\.yaml) --seed 1", text)
    assert reproduce is not None and Path(reproduce.group(1)).is_relative_to(artifacts), text
    report = re.search(r"report: (\S+\.report\.html)", text)
    assert report is not None, text
    page = Path(report.group(1))
    assert page.is_relative_to(artifacts) and "two-node" in page.read_text()
    assert not list(artifacts.glob("*passing_keeps_no_report*/*.report.*"))  # a passing test keeps no report
    assert not simulate(Scenario.from_yaml(reproduce.group(1))).passed
