"""Live replay: the fault schedule as live actions, sizing and scaling, the fidelity comparison,
and a short real replay with a replica crash (real processes on 127.0.0.1)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest

from testbed.faults import build_schedule
from testbed.live.fidelity import compare, relative_error
from testbed.live.injector import Action, LiveUnsupported, plan
from testbed.rng import RandomStreams
from testbed.sim import simulate
from testbed.spec import Scenario, SpecError, validate_spec
from testbed.topology import Topology

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent

TOPOLOGY = {
    "name": "two-regions",
    "model": "tiny",
    "providers": [
        {
            "name": "local",
            "regions": [
                {"name": region, "zones": [{"name": "z", "racks": [{"name": "host", "nodes": 2, "device": "cpu-fp32", "devices_per_node": 1}]}]}
                for region in ("east", "west")
            ],
        }
    ],
}


def scenario(faults: list[dict], **changes: object) -> Scenario:
    data = {
        "name": "t",
        "topology": TOPOLOGY,
        "duration": 20,
        "drain": 30,
        "workload": {"arrival": {"kind": "poisson", "rate": 4}, "prompt_tokens": {"kind": "fixed", "value": 32}, "output_tokens": {"kind": "fixed", "value": 16}},
        "serving": {"batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": 0.01}},
        "faults": faults,
        "sla": [{"metric": "availability", "min": "90%"}, {"metric": "e2e", "percentile": 99, "max": "5s"}],
        **changes,
    }
    return validate_spec(data, Scenario, source="test")


def planned(faults: list[dict]) -> list[Action]:
    spec = scenario(faults)
    topology = Topology.from_spec(spec.topology)
    return plan(build_schedule(spec.faults, topology, 100, RandomStreams(0)), topology)


NODE0 = "local/east/z/host/node-0"


def test_a_crash_is_a_kill_then_a_restart_at_repair():
    actions = planned([{"kind": "node_crash", "target": NODE0, "at": 5, "duration": 10}])
    assert [(a.at, a.verb, a.target) for a in actions] == [(5, "kill", 0), (15, "restart", 0)]


def test_overlapping_crashes_kill_once_and_restart_after_the_last_repair():
    actions = planned(
        [
            {"kind": "node_crash", "target": NODE0, "at": 5, "duration": 10},
            {"kind": "outage", "target": "local/east/z", "at": 8, "duration": 20},
        ]
    )
    assert [(a.at, a.verb, a.target) for a in actions] == [(5, "kill", 0), (8, "kill", 1), (28, "restart", 0), (28, "restart", 1)]


def test_region_outage_is_cut_at_the_proxy_and_a_hang_is_a_pause():
    actions = planned(
        [
            {"kind": "outage", "target": "local/west", "at": 3, "duration": 4},
            {"kind": "node_hang", "target": NODE0, "at": 1},
        ]
    )
    assert [(a.at, a.verb, a.target) for a in actions] == [(1, "pause", 0), (3, "cut", "local/west"), (7, "heal", "local/west")]


def test_slowdowns_multiply_and_errors_take_the_worst_rate():
    actions = planned(
        [
            {"kind": "slowdown", "target": NODE0, "speed": 0.5, "at": 1, "duration": 10},
            {"kind": "slowdown", "target": "local/east", "speed": 0.5, "at": 2, "duration": 2},
            {"kind": "error_injection", "target": NODE0, "rate": 0.3, "status": 503, "at": 3, "duration": 1},
        ]
    )
    hooks = [(a.at, a.target, a.params) for a in actions if a.target == 0]
    assert hooks == [
        (1, 0, {"slowdown": 2.0}),
        (2, 0, {"slowdown": 4.0}),
        (3, 0, {"error_rate": 0.3, "error_status": 503.0}),
        (4, 0, {"slowdown": 2.0}),
        (4, 0, {"error_rate": 0.0, "error_status": 500.0}),
        (11, 0, {"slowdown": 1.0}),
    ]


def test_a_client_partition_is_a_toxic_on_the_region():
    actions = planned([{"kind": "partition", "between": ["clients:local/east", "local/east"], "at": 2, "duration": 3}])
    assert [(a.at, a.verb, a.target, a.params["kind"]) for a in actions] == [
        (2, "toxic", "local/east", "partition"),
        (5, "untoxic", "local/east", "partition"),
    ]


@pytest.mark.parametrize(
    "fault, message",
    [
        ({"kind": "memory_pressure", "target": NODE0, "kv_fraction": 0.5, "at": 1}, "memory_pressure .*no KV-cache limit"),
        ({"kind": "latency", "between": ["local/east", "local/west"], "delay": "50ms", "at": 1}, "no path between regions"),
    ],
)
def test_faults_without_a_live_counterpart_are_refused(fault: dict, message: str):
    with pytest.raises(LiveUnsupported, match=message):
        planned([fault])


# --------------------------------------------------------------------------- fidelity


def test_comparing_a_run_with_itself_has_no_error_and_agreeing_verdicts():
    result = simulate(scenario([{"kind": "node_crash", "target": NODE0, "at": 5, "duration": 5}]))
    comparison = compare(result, result)
    assert comparison.verdicts_agree
    assert comparison.error("e2e p50") == 0 and comparison.error("availability") == 0
    text = comparison.markdown()
    assert "| e2e p99 |" in text and "node_crash" in text


def test_a_slower_simulation_shows_positive_latency_error(tmp_path: Path):
    base = scenario([])
    slow = simulate(base.model_copy(update={"serving": base.serving.model_copy(update={"batching": base.serving.batching.model_copy(update={"max_queue_delay": 0.5})})}))
    comparison = compare(slow, simulate(base))
    assert comparison.error("ttft p50") > 0.5
    assert (comparison.write(tmp_path)).read_text().startswith("# Fidelity: t")


def test_relative_error_edge_cases():
    assert relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert relative_error(0.0, 0.0) == 0.0
    assert math.isinf(relative_error(1.0, 0.0))
    assert math.isnan(relative_error(math.nan, 1.0))


# --------------------------------------------------------------------------- sizing and refusals


def test_a_fleet_too_large_is_refused_with_the_scale_that_fits():
    from testbed.live.sizing import Machine, check_fits

    big = scenario([], topology={**TOPOLOGY, "providers": [{"name": "local", "regions": [{"name": "east", "zones": [{"name": "z", "racks": [{"name": "host", "nodes": 40, "device": "cpu-fp32", "devices_per_node": 1}]}]}]}]})
    with pytest.raises(SpecError, match=r"40 replicas do not fit on this machine \(2 cores run at most 4\); scale it down with --scale 0.1"):
        check_fits(big, Machine(cores=2, memory_bytes=16e9))


def test_scale_shrinks_replicas_and_load_in_proportion():
    from testbed.live.sizing import replica_count, scale

    big = scenario([], topology={**TOPOLOGY, "providers": [{"name": "local", "regions": [{"name": "east", "zones": [{"name": "z", "racks": [{"name": "host", "nodes": 8, "device": "cpu-fp32", "devices_per_node": 1}]}]}]}]})
    small = scale(big, 0.25)
    assert replica_count(small) == 2
    assert small.workload.arrival.rate == pytest.approx(big.workload.arrival.rate * 0.25)


@pytest.mark.parametrize(
    "path, message",
    [
        ("faults/baseline.yaml", "the live plane runs its built-in models"),
        ("faults/trace-replay.yaml", "the live plane runs its built-in models"),
    ],
)
def test_live_refuses_what_it_cannot_run_with_exit_2(path: str, message: str):
    from typer.testing import CliRunner

    from testbed.cli import app

    outcome = CliRunner().invoke(app, ["live", str(ROOT / path)])
    assert outcome.exit_code == 2
    assert message in " ".join(outcome.output.split())
    assert "Traceback" not in outcome.output


# --------------------------------------------------------------------------- a real replay


@pytest.mark.live
def test_live_replay_with_a_replica_crash_conserves_requests_in_the_simulation_schema(tmp_path: Path):
    from testbed.live.fidelity import compare
    from testbed.live.replay import run_live
    from testbed.records.schema import REQUEST_COLUMNS

    topology = {
        **TOPOLOGY,
        "profiles": {"cpu-fp32": str(ROOT / "profiles" / "cpu-fp32-tiny.json")},
        "providers": [
            {
                "name": "local",
                "regions": [
                    {"name": region, "zones": [{"name": "z", "racks": [{"name": "host", "nodes": 1, "device": "cpu-fp32", "devices_per_node": 1}]}]}
                    for region in ("east", "west")
                ],
            }
        ],
    }
    spec = scenario(
        [{"kind": "node_crash", "target": NODE0, "at": 3, "duration": 3}],
        topology=topology,
        duration=10,
        drain=15,
        serving={"batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": 0.01}, "health_check": {"period": 1, "timeout": 0.5}},
    )
    live = run_live(spec, out_dir=tmp_path / "live")
    sim = simulate(spec)

    records = live.requests
    assert list(records.columns) == list(REQUEST_COLUMNS)
    assert [str(t) for t in records.dtypes] == [str(t) for t in sim.requests.dtypes]
    # Conservation: every request the workload drew was sent, recorded once and ended.
    assert len(records) == len(sim.requests)
    assert set(records["status"].astype(str)) <= {"ok", "failed", "timeout", "shed"}
    # Each row is the workload's request of the same id (sent as x-request-id), sent on time
    # give or take the event loop, with the lengths it asked for.
    assert records["request_id"].tolist() == sim.requests["request_id"].tolist()
    assert abs(records["arrival"].to_numpy() - sim.requests["arrival"].to_numpy()).max() < 0.5
    assert (records["prompt_tokens"].to_numpy() == sim.requests["prompt_tokens"].to_numpy()).all()
    assert live.stats["live_restart_s"] and all(t > 0 for t in live.stats["live_restart_s"])
    # The crash happened for real: the kill and the restart were carried out, and nothing was
    # served by the dead replica while it was down.
    assert live.stats["live_actions"] == 2 and not live.stats["live_action_failures"]
    served = records[(records["status"] == "ok") & (records["replica"] == 0)]
    assert not ((served["first_token"] > 3.5) & (served["first_token"] < 6.0)).any()
    assert (records["status"] == "ok").mean() > 0.8
    assert (tmp_path / "live" / "requests.parquet").exists() and (tmp_path / "live" / "verdicts.json").exists()

    comparison = compare(sim, live)
    text = comparison.write(tmp_path / "live").read_text()
    assert "| e2e p50 |" in text and "node_crash" in text
    assert comparison.metrics.set_index("metric").loc["requests ok", "live"] == (records["status"] == "ok").sum()


def test_requests_the_gateway_never_accepted_are_recorded_as_failed_in_the_same_schema():
    from testbed.live.records import LiveRecorder
    from testbed.live.replay import _unreached_rows, prepare

    replay = prepare(scenario([]))
    recorder = LiveRecorder(["local/east", "local/west"])
    row = recorder.open(0.1, client_region="local/east")
    recorder.close(row, "ok", 0.5)
    recorded = recorder.frame()
    extra = _unreached_rows(recorded, replay, [(1, 3.0)])
    both = pd.concat([recorded, extra], ignore_index=True)
    assert [str(t) for t in both.dtypes] == [str(t) for t in recorded.dtypes]
    assert both["status"].astype(str).tolist() == ["ok", "failed"]
    assert both["arrival"].iloc[1] == replay.arrivals.time[1] and both["finish"].iloc[1] == 3.0
    assert both["request_id"].tolist() == [0, 1]


def test_unanswered_rows_get_the_lengths_asked_for_by_their_request_id_not_their_position():
    from testbed.live.records import LiveRecorder
    from testbed.live.replay import _fill_lengths, prepare

    replay = prepare(scenario([]))
    recorder = LiveRecorder(["local/east", "local/west"])
    for i in (2, 0, 1):  # the gateway saw them in another order than the workload's
        row = recorder.open(0.1 * i, i, client_region="local/east")
        recorder.close(row, "failed", 0.5)
    recorded = recorder.frame()
    _fill_lengths(recorded, replay.arrivals)
    by_id = recorded.set_index("request_id")
    for i in (0, 1, 2):
        assert by_id.loc[i, "prompt_tokens"] == replay.arrivals.prompt_tokens[i]
        assert by_id.loc[i, "output_tokens"] == replay.arrivals.output_tokens[i]
