"""Targets without a process: the spec's refusals, the plan's refusals, stop conditions, the
journal and the scraped series, each on plain data.

Rules the tests hold:
* a bad target file is one message naming the file, the field and what was expected (exit 2);
* a fault the target cannot carry out is refused before anything starts, naming the fault and
  the missing hook; so is a plan that would fault more endpoints at once than blast_radius allows;
* addresses outside loopback are refused unless --allow-remote is given;
* stop conditions trip on the window's availability and on a two-window burn rate;
* the journal keeps what is in force, so a rollback knows exactly what to undo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from testbed.cli import app
from testbed.live.injector import LiveUnsupported
from testbed.live.targets.journal import Journal, read
from testbed.live.targets.plan import plan_target
from testbed.live.targets.safety import StopWatch
from testbed.live.targets.scrape import fleet_series, parse, up_changes
from testbed.live.targets.spec import StopConditions, load_target
from testbed.spec import Objective, Scenario, SpecError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "targets"


def _endpoint(name: str, port: int, **actions) -> dict:
    return {"name": name, "url": f"http://127.0.0.1:{port}", "actions": actions}


KILL = {"signal": "SIGKILL", "pidfile": "x.pid"}
RESTART = {"command": "true"}


def _target(tmp_path: Path, endpoints: list[dict] | None = None, **top) -> Path:
    data = {"name": "t", "model": "tiny", "regions": {"local/east": {"pools": {"default": endpoints or [
        _endpoint("a", 9001, kill=KILL, restart=RESTART), _endpoint("b", 9002, kill=KILL, restart=RESTART)]}}}, **top}
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _scenario(faults: list[dict], nodes: int = 2) -> Scenario:
    data = yaml.safe_load((EXAMPLES / "replica-crash.yaml").read_text())
    data["faults"] = faults
    data["topology"]["providers"][0]["regions"][0]["zones"][0]["racks"][0]["nodes"] = nodes
    return Scenario.model_validate(data, context={"base_dir": str(EXAMPLES)})


CRASH = {"kind": "accelerator_failure", "target": "local/east/z0/host/node-0/cpu-0", "at": "3s", "duration": "3s"}


# --------------------------------------------------------------------------- the spec


def test_the_shipped_targets_validate():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if "regions" in yaml.safe_load(path.read_text()):
            assert load_target(path).endpoints()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kill": {"signal": "SIGKILLL", "pid": 3}}, "actions.kill.signal: unknown signal 'SIGKILLL'"),
        ({"kill": {"signal": "SIGKILL"}}, "give exactly one of pid, pidfile or pid_command (got none)"),
        ({"kill": {"signal": "SIGKILL", "pid": 3, "pidfile": "p"}}, "give exactly one of pid, pidfile or pid_command (got pid, pidfile)"),
        ({"kill": {"shell": "docker kill x"}}, "actions.kill: expected exactly one of signal, command, http or self_healing"),
        ({"restart": {"command": ""}}, "actions.restart.command: expected at least 1 character"),
        ({"hooks": {"http": {"url": "ftp://x"}}}, "expected an http(s) URL"),
        ({"explode": RESTART}, "actions.explode: unknown field"),
    ],
)
def test_a_bad_action_is_named_by_file_and_field(tmp_path, change, message):
    path = _target(tmp_path, [_endpoint("a", 9001, **change)])
    with pytest.raises(SpecError) as error:
        load_target(path)
    assert str(error.value).startswith(f"{path}: regions.local/east.pools.default.a.actions.")  # the endpoint by its name
    assert message in str(error.value)


def test_bad_top_level_fields(tmp_path):
    with pytest.raises(SpecError, match=r"regions: region 'east': expected a 'provider/region' path"):
        load_target(_target(tmp_path, **{"regions": {"east": {"pools": {"p": [_endpoint("a", 1)]}}}}))
    with pytest.raises(SpecError, match="endpoint names must be unique; repeated: a"):
        load_target(_target(tmp_path, [_endpoint("a", 9001), _endpoint("a", 9002)]))
    with pytest.raises(SpecError, match="blast_radius: .*less than or equal to 1"):
        load_target(_target(tmp_path, blast_radius=1.5))


def test_addresses_outside_loopback_are_refused_unless_allowed(tmp_path):
    path = _target(tmp_path, [{"name": "a", "url": "http://10.1.2.3:8000"}])
    with pytest.raises(SpecError, match=r"regions.local/east.pools.default.0.url: http://10.1.2.3:8000 is not on this machine .*--allow-remote"):
        load_target(path)
    assert load_target(path, allow_remote=True).endpoints()[0].url == "http://10.1.2.3:8000"
    hooked = _target(tmp_path, [_endpoint("a", 9001, hooks={"http": {"url": "http://example.com/chaos"}})])
    with pytest.raises(SpecError, match="actions.hooks.http.url: http://example.com/chaos is not on this machine"):
        load_target(hooked)


def test_environment_variables_fill_strings_and_ports(tmp_path, monkeypatch):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nmodel: tiny\nregions:\n  local/east:\n    pools:\n      p:\n        - name: a\n"
                    "          url: http://127.0.0.1:${PORT_A:-9001}\n          proxy: {port: '${PROXY_A}'}\n")
    with pytest.raises(SpecError, match=r"proxy.port: \$\{PROXY_A\} is not set in the environment"):
        load_target(path)
    monkeypatch.setenv("PROXY_A", "9100")
    endpoint = load_target(path).endpoints()[0]
    assert endpoint.url == "http://127.0.0.1:9001" and endpoint.proxy.port == 9100


# --------------------------------------------------------------------------- the plan


def test_a_fault_without_its_hook_is_refused_before_anything_starts(tmp_path):
    target = load_target(_target(tmp_path, [_endpoint("a", 9001, kill=KILL), _endpoint("b", 9002)]))
    with pytest.raises(LiveUnsupported, match=r"faults.0 \(accelerator_failure on local/east/z0/host/node-0/cpu-0\) needs endpoint a's "
                       r"`restart` action, which the target does not give; add actions.restart"):
        plan_target(_scenario([CRASH]), target, "t.yaml")
    hang = {"kind": "node_hang", "target": "local/east/z0/host/node-1", "at": "1s", "duration": "1s"}
    with pytest.raises(LiveUnsupported, match="needs endpoint b's `pause` action"):
        plan_target(_scenario([hang]), target, "t.yaml")


def test_network_faults_need_a_proxy_and_in_client_mode_a_fixed_port(tmp_path):
    latency = {"kind": "latency", "between": ["clients:local/east", "local/east"], "at": "1s", "duration": "1s", "delay": "50ms"}
    target = load_target(_target(tmp_path))
    with pytest.raises(LiveUnsupported, match="needs a chaos proxy in front of endpoint a .* add `proxy: {port: ...}`"):
        plan_target(_scenario([latency]), target, "t.yaml")
    proxied = [dict(_endpoint(n, p), proxy={}) for n, p in (("a", 9001), ("b", 9002))]
    client = load_target(_target(tmp_path, proxied, entry="http://127.0.0.1:9000", blast_radius=1.0))
    with pytest.raises(LiveUnsupported, match="in client mode your router must send to endpoint a's chaos proxy; give the proxy a fixed port"):
        plan_target(_scenario([latency]), client, "t.yaml", mode="client")
    assert plan_target(_scenario([latency]), client, "t.yaml", mode="gateway").peak_faulted == 2


def test_blast_radius_counts_endpoints_faulted_at_once(tmp_path):
    other = dict(CRASH, target="local/east/z0/host/node-1/cpu-0", at="5s")
    target = load_target(_target(tmp_path))
    with pytest.raises(LiveUnsupported, match="blast_radius: the scenario's faults hold 2 of 2 endpoints at once; the limit 50% allows 1"):
        plan_target(_scenario([CRASH, other]), target, "t.yaml")
    apart = dict(other, at="7s")  # after the first is repaired
    assert plan_target(_scenario([CRASH, apart]), target, "t.yaml").peak_faulted == 1


def test_the_endpoints_must_match_the_topologys_replicas(tmp_path):
    target = load_target(_target(tmp_path))
    with pytest.raises(SpecError, match=r"pools.default: 2 endpoint\(s\), but scenario 'replica-crash' has 3 replica\(s\) in region local/east"):
        plan_target(_scenario([], nodes=3), target, "t.yaml")
    with pytest.raises(SpecError, match="entry: client mode sends the workload to your own entry point"):
        plan_target(_scenario([]), target, "t.yaml", mode="client")


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    result = CliRunner().invoke(app, ["live", str(EXAMPLES / "replica-crash.yaml"), "--target", str(EXAMPLES / "replica-servers.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "at    3.00 s  kill r0: SIGKILL to the process group of pidfile /tmp/testbed-r0.pid" in result.output
    assert "at    6.00 s  restart r0: run" in result.output and "blast radius: at most 1 of 2" in result.output


def test_cli_bad_target_exits_2_with_one_message(tmp_path):
    path = _target(tmp_path, [_endpoint("a", 9001, kill={"signal": "NOPE", "pid": 1})])
    result = CliRunner().invoke(app, ["live", str(EXAMPLES / "replica-crash.yaml"), "--target", str(path)])
    assert result.exit_code == 2 and "unknown signal 'NOPE'" in result.output and "Traceback" not in result.output
    hooks = {"http": {"url": "http://127.0.0.1:9002/chaos"}}
    refused = CliRunner().invoke(app, ["live", str(EXAMPLES / "replica-crash.yaml"), "--target", str(_target(tmp_path, [
        _endpoint("a", 9001, kill=KILL), _endpoint("b", 9002, hooks=hooks)]))])
    assert refused.exit_code == 2 and "needs endpoint a's `restart` action" in refused.output
    bad_journal = tmp_path / "j.jsonl"
    bad_journal.write_text('{"event": "applied"}\n')
    rolled = CliRunner().invoke(app, ["live", "--rollback", str(bad_journal)])
    assert rolled.exit_code == 2 and "not a testbed target journal" in rolled.output


# --------------------------------------------------------------------------- stop conditions


def test_availability_floor_over_a_sliding_window():
    watch = StopWatch(StopConditions.model_validate({"availability": {"window": "2s", "min": "50%", "min_requests": 4}}), [], "t")
    for t in (0.1, 0.2, 0.3):
        watch.record(t, False)
    assert watch.check(0.5) is None  # three requests: below min_requests
    for t in (2.6, 2.7, 2.8, 2.9):
        watch.record(t, True)
    assert watch.check(3.0) is None  # the early failures slid out of the window
    for t in (3.1, 3.2, 3.3, 3.4, 3.5):
        watch.record(t, False)
    reason = watch.check(3.6)
    assert reason == "availability 44.4% over the last 2 s is below the floor 50.0% (9 requests)"
    watch.record(3.7, True)
    assert watch.check(10.0) == reason  # once tripped, stays tripped


def test_burn_rate_needs_both_windows_and_a_budget():
    spec = StopConditions.model_validate({"burn_rate": {"long": "10s", "short": "2s", "burn": 5, "min_requests": 2}})
    with pytest.raises(ValueError, match="stop.burn_rate: the scenario has no availability objective"):
        StopWatch(spec, [], "t.yaml")
    watch = StopWatch(spec, [Objective.model_validate({"metric": "availability", "min": "90%"})], "t.yaml")
    for i in range(20):
        watch.record(i * 0.4, True)  # 0..7.6 s all good
    watch.record(7.8, False)
    watch.record(7.9, False)
    # short window (6..8 s): 2 bad of 7 = 29% -> 2.9x; long: 2 of 22 = 9% -> 0.9x: no alert
    assert watch.check(8.0) is None
    for i in range(22):
        watch.record(8.0 + i * 0.04, False)
    # long: 24 bad of 44 = 55% -> 5.5x; short (7..9 s): 24 of 26 -> 9.2x: both over 5x
    assert watch.check(9.0).startswith("burn-rate alert: the availability budget burns 5.5x over 10 s and 9.2x over 2 s")


# --------------------------------------------------------------------------- journal and series


def test_the_journal_keeps_what_is_in_force(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.write("begin", target={"name": "t"})
    journal.applied("kill", "restart:a", "SIGKILL", endpoint="a")
    journal.applied("pause", "resume:b", "SIGSTOP", endpoint="b")
    journal.applied("hooks", "hooks:a", "slow", endpoint="a", params={"slowdown": 2.0})
    journal.applied("restart", "restart:a", "ran", endpoint="a", undoes=True)
    assert sorted(journal.in_force) == ["hooks:a", "resume:b"]
    journal.close()
    with open(path, "a") as cut:
        cut.write('{"event": "applied", "se')  # a crash mid-line
    begin, in_force, lines = read(path)
    assert begin["target"] == {"name": "t"} and [e.key for e in in_force] == ["resume:b", "hooks:a"]
    assert [line["undoes"] for line in lines if line["event"] == "applied"] == [None, None, None, 1]


def test_scraped_vllm_metrics_become_the_fleet_series_and_up_becomes_health():
    page = ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="tiny"} 2\n'
            '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="tiny"} 3\n'
            '# TYPE vllm:request_success counter\nvllm:request_success_total{finished_reason="length"} {n}\n'
            '# TYPE other gauge\nother 1\n')
    rows = []
    for t, (up, n) in enumerate([(1, 5), (1, 9), (0, None), (1, 2)]):
        rows.append((float(t), 0, "a", "up", "{}", float(up)))
        if up:
            rows += [(float(t), 0, "a", name, labels, value) for name, labels, value in parse(page.replace("{n}", str(n)))]
    frame = pd.DataFrame(rows, columns=["time", "replica", "endpoint", "metric", "labels", "value"])
    assert set(frame["metric"]) == {"up", "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:request_success_total"}
    series = fleet_series(frame, ["local/east"])
    assert series["completed"].tolist() == [0, 4, 0, 2]  # from the first scrape; the restart counts from zero
    assert series["queue_depth"].tolist() == [3, 3, 0, 3] and series["running"].tolist() == [2, 2, 0, 2]
    assert up_changes(frame) == [(0, 2.0, "unhealthy"), (0, 3.0, "healthy")]
    assert json.loads(frame.iloc[1]["labels"]) in ({"model_name": "tiny"}, {"finished_reason": "length"})
