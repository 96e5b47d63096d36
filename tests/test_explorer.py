"""The explorer, driven through Streamlit's AppTest: widgets change the scenario that runs, the
page shows its verdicts, and the YAML it offers runs to the same verdicts on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from testbed import explore
from testbed.sim import simulate
from testbed.spec import Scenario, SpecError

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TOKEN = explore.DEFAULT_SCENARIO  # widget keys of the default scenario's knobs start with it


def key(name: str) -> str:
    return f"{TOKEN}:{name}"


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_default_run_shows_verdicts_metrics_and_charts(app):
    base = Scenario.from_yaml(explore.scenario_catalog()[explore.DEFAULT_SCENARIO])
    expected = simulate(base)
    assert texts(app.error) == ["SLA violated: p99 ttft (during faults)"]
    metrics = {m.label: m for m in app.metric}
    assert metrics["requests"].value == f"{len(expected.requests):,}"
    availability = next(v for v in expected.sla if v.metric == "availability")
    assert metrics["availability"].value == f"{availability.observed * 100:.3f}%"
    assert len(app.get("plotly_chart")) >= 5  # over time, CDF, availability, fault timeline, topology


def test_switching_off_the_fallback_tier_fails_availability_and_the_yaml_reproduces_it(app):
    app.toggle(key=key("fallback")).set_value(False).run()
    assert not app.exception
    assert texts(app.error) == ["SLA violated: availability, p99 ttft (during faults)"]
    shown = {m.label: m.value for m in app.metric}
    text = app.code[0].value
    assert "fallback_tier: false" in text
    replayed = simulate(explore.scenario_from_yaml(text))
    failing = [v.metric for v in replayed.sla if not v.passed]
    assert sorted(failing) == ["availability", "ttft"]  # what the page said, nothing more
    availability = next(v for v in replayed.sla if v.metric == "availability")
    assert shown["availability"] == f"{availability.observed * 100:.3f}%"


def test_invalid_settings_show_a_message_naming_the_field_not_a_traceback(app):
    app.checkbox(key=key("proc:rack")).check().run()
    app.text_input(key=key("mtbf:rack")).set_value("often").run()
    assert not app.exception
    message = " ".join(texts(app.error))
    assert "faults.2.mtbf" in message and "expected a duration" in message and "'often'" in message


def test_a_fault_added_on_the_timeline_is_simulated(app):
    app.selectbox(key=key("new:kind")).set_value("slowdown").run()  # slowdown brings its speed input
    app.selectbox(key=key("new:target")).set_value("onprem/cpu-fallback")
    app.number_input(key=key("new:at")).set_value(180.0)
    app.number_input(key=key("new:duration")).set_value(240.0)
    app.number_input(key=key("new:value")).set_value(0.25)
    app.button(key=key("new:add")).click().run()
    assert not app.exception
    assert "slowdown onprem/cpu-fallback at 180 s for 240 s (speed 0.25)" in [c.label for c in app.checkbox]
    text = app.code[0].value
    scenario = explore.scenario_from_yaml(text)
    assert [f.kind for f in scenario.faults] == ["outage", "outage", "slowdown"]


def test_ab_comparison_highlights_the_flipped_verdict(app):
    app.button(key="pin").click().run()
    app.toggle(key=key("fallback")).set_value(False).run()
    assert not app.exception
    frames = [d.value for d in app.dataframe]
    diff = next(f for f in frames if list(f.columns) == ["field", "A", "B"])
    assert diff.to_dict("records") == [{"field": "serving.failover.fallback_tier", "A": "True", "B": "False"}]
    verdicts = next(f for f in frames if "changed" in f.columns)
    flipped = verdicts[verdicts["changed"]]
    assert flipped["objective"].tolist() == ["availability"]
    assert flipped[["A", "B"]].values.tolist() == [["pass", "FAIL"]]


def test_uploaded_scenario_runs_and_a_broken_upload_is_explained(app):
    app.radio(key="source").set_value("upload").run()
    original = explore.scenario_catalog()["region-outage-no-failover"].read_text()
    text = original.replace("duration: 12min", "duration: 4min").replace("rate: 200/s", "rate: 40/s")
    app.file_uploader(key="upload").set_value(("what-if.yaml", text.encode(), "application/yaml")).run()
    assert not app.exception
    assert any("availability" in e for e in texts(app.error))  # no failover: the outage costs availability
    broken = text.replace("rate: 40/s", "rate: lots")
    app.file_uploader(key="upload").set_value(("broken.yaml", broken.encode(), "application/yaml")).run()
    assert not app.exception
    assert texts(app.error) == [
        "broken.yaml: workload.arrival.rate: expected a rate: a number per second or a string like "
        "'250/s', '1200/min', '40000/h' (got 'lots')"
    ]


def test_replicas_are_resized_by_whole_racks_and_the_page_says_so():
    base = Scenario.from_yaml(explore.scenario_catalog()["region-outage-failover"])
    knobs = explore.knobs_from(base)
    knobs.replicas = {**knobs.replicas, "aws/us-east-1": 8, "aws/eu-west-1": 12}
    scenario, notes = explore.build_scenario(base, knobs)
    assert explore.region_replicas(scenario)["aws/us-east-1"] == 8
    assert notes == ["aws/eu-west-1: 12 replicas asked, 16 placed (whole racks and nodes)"]
    knobs.replicas["aws/us-east-1"] = 0
    with pytest.raises(SpecError, match="replicas of aws/us-east-1: expected at least 1"):
        explore.build_scenario(base, knobs)


def test_runs_are_cached_by_scenario_and_seed():
    base = Scenario.from_yaml(explore.scenario_catalog()[explore.DEFAULT_SCENARIO])
    base = base.model_copy(update={"observability": base.observability.model_copy(update={"enabled": False})})
    cache = explore._Cache(size=2)
    first = cache.run(base)
    assert cache.run(base.model_copy()) is first and cache.misses == 1
    other = cache.run(base.model_copy(update={"seed": base.seed + 1}))
    assert other is not first and cache.misses == 2


def test_explore_command_serves_app_py_on_localhost_and_explains_a_missing_app(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from testbed.cli import app as cli

    command = explore.streamlit_command()
    assert command[command.index("run") + 1] == APP
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    monkeypatch.setattr(explore, "ROOT", tmp_path)
    result = CliRunner().invoke(cli, ["explore"])
    assert result.exit_code == 2
    assert "app.py: not found" in result.output and "Traceback" not in result.output


def test_hunt_from_the_page_reports_why_the_settings_fail(app):
    assert explore.hunt_available()
    app.number_input(key="hunt_budget").set_value(1).run()
    app.button(key="hunt").click().run()
    assert not app.exception
    assert any(w.startswith("These settings fail with no added fault (1 simulations") for w in texts(app.warning))
    violations = next(d.value for d in app.dataframe if "verdict" in d.value.columns and "objective" in d.value.columns and len(d.value) == 1)
    assert violations.to_dict("records")[0]["objective"] == "p99 ttft (during faults)"


def test_a_big_what_if_waits_for_the_run_button_and_says_the_results_are_stale(app):
    shown = {m.label: m.value for m in app.metric}["requests"]
    app.number_input(key=key("rate")).set_value(40.0).run()  # 40/s x 600 s: over the auto-run limit
    assert not app.exception
    assert {m.label: m.value for m in app.metric}["requests"] == shown  # nothing was simulated
    assert any("press **Run simulation**" in w for w in texts(app.warning))
    app.button(key="run").click().run()
    assert not app.exception
    assert not any("press **Run simulation**" in w for w in texts(app.warning))
    assert int({m.label: m.value for m in app.metric}["requests"].replace(",", "")) > 20_000


def test_metric_cards_say_the_margin_in_words_not_as_an_arrow(app):
    assert all(not m.delta for m in app.metric)
    captions = [c.value for c in app.caption]
    assert any(c.startswith("pass, ") and c.endswith(" to spare") for c in captions)
    assert any(c.startswith("FAIL, ") and c.endswith(" beyond the limit") for c in captions)  # p99 ttft during faults


def test_an_edited_scenario_downloads_under_a_what_if_name(app):
    assert f"name: {explore.DEFAULT_SCENARIO}\n" in app.code[0].value  # unedited: the catalog's own name
    app.toggle(key=key("hedging")).set_value(True).run()
    assert f"name: {explore.DEFAULT_SCENARIO}-whatif\n" in app.code[0].value


def test_ab_counts_failures_next_to_latency(app):
    app.button(key="pin").click().run()
    app.toggle(key=key("fallback")).set_value(False).run()
    outcomes = next(d.value for d in app.dataframe if "B - A" in d.value.columns)
    failed = outcomes.set_index("outcome").loc["failed"]
    assert failed["B"] > failed["A"] and failed["B - A"] == failed["B"] - failed["A"]
    cdf = next(c for c in app.get("plotly_chart") if "a failed one never arrives" in c.proto.spec)
    assert cdf is not None


def test_hunt_tab_picks_kinds_and_an_objective_and_says_when_the_settings_already_fail(app):
    assert any(w.startswith("These settings already fail without any added fault (p99 ttft (during faults))") for w in texts(app.warning))
    app.selectbox(key="hunt_objective").set_value("availability").run()
    assert not any(w.startswith("These settings already fail") for w in texts(app.warning))
    app.multiselect(key="hunt_kinds").set_value(["node_crash"]).run()
    app.number_input(key="hunt_budget").set_value(2).run()
    app.button(key="hunt").click().run()
    assert not app.exception
    assert any(s.startswith("No failing schedule found (") for s in texts(app.success)) or any(
        e.startswith("Minimal failing schedule") for e in texts(app.error)
    )
