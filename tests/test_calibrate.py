"""Calibration: the grid, the fit, the held-out error, the profile the simulator loads, and a
real calibration of the built-in PyTorch engine on the tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed.live.calibrate import Grid, calibrate, fit, held_out_errors, measure, midpoints
from testbed.perf import TableModel, perf_model_for
from testbed.spec import TopologySpec

os.environ.setdefault("OMP_NUM_THREADS", "1")


class AnalyticTimer:
    """An engine whose times are a known function of the point: the fit must recover it.

    Only isolates the fitting arithmetic; the real engine is calibrated below.
    """

    def __init__(self, curvature: float = 0.0) -> None:
        self.curvature = curvature
        self.calls: list[tuple[str, int, int]] = []

    def prefill(self, batch: int, prompt_tokens: int) -> float:
        self.calls.append(("prefill", batch, prompt_tokens))
        tokens = batch * prompt_tokens
        return 0.002 + 1e-5 * tokens + self.curvature * tokens**2

    def decode(self, batch: int, context_tokens: int, steps: int) -> float:
        self.calls.append(("decode", batch, context_tokens))
        # per step: fixed + per sequence + attention over the (growing) context
        return sum(0.003 + 2e-4 * batch + 1e-7 * batch * (context_tokens + s) for s in range(steps))


SMALL = Grid(batch_sizes=(1, 2, 4), prompt_tokens=(16, 64), context_tokens=(32, 128), decode_steps=4, repetitions=2)


def test_midpoints_are_integer_geometric_means_strictly_inside():
    assert midpoints([1, 2, 4, 8]) == [3, 6]  # none between 1 and 2
    assert midpoints([16, 64, 256]) == [32, 128]


def test_held_out_points_are_off_the_fit_grid():
    held = SMALL.held_out_prefill()
    assert held and not set(held) & set(SMALL.prefill_points())
    assert (3, 16) in held and (1, 32) in held and (3, 32) in held


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_sizes": (4, 2)}, "batch_sizes must be at least two strictly increasing"),
        ({"prompt_tokens": (16,)}, "prompt_tokens must be at least two"),
        ({"repetitions": 0}, "repetitions must be at least 1"),
        ({"context_tokens": (2, 64), "decode_steps": 8}, "context_tokens must start above"),
    ],
)
def test_bad_grid_is_refused(changes: dict, message: str):
    with pytest.raises(ValueError, match=message):
        Grid(**changes)


def test_measure_warms_up_then_keeps_the_median():
    timer = AnalyticTimer()
    grid = Grid(batch_sizes=(1, 2), prompt_tokens=(8, 16), context_tokens=(8, 16), decode_steps=2, repetitions=3, warmup=2)
    measured = measure(timer, grid, [(1, 8)], [(2, 16)])
    assert [c for c in timer.calls if c[0] == "prefill"] == [("prefill", 1, 8)] * 5
    # decode starts half the steps early so the mean context of the timed steps is the grid's
    assert ("decode", 2, 15) in timer.calls
    assert measured.prefill[1, 8] == pytest.approx(0.002 + 8e-5)
    assert measured.decode[2, 16] == pytest.approx(0.003 + 4e-4 + 1e-7 * 2 * 15.5)


def test_a_linear_engine_is_fitted_exactly_and_held_out_error_is_tiny():
    profile, errors = calibrate(AnalyticTimer(), SMALL, "cpu-fp32", "tiny")
    assert profile.prefill.tokens == [16, 32, 64, 128, 256]  # totals B*L of the fit grid
    assert profile.decode.batch_sizes == [1, 2, 4]
    assert errors and all(abs(e.relative) < 1e-6 for e in errors)
    assert set(profile.held_out_error) == {"prefill_median", "prefill_max", "decode_median", "decode_max"}


def test_held_out_error_reveals_a_curve_the_grid_cannot_follow():
    profile, errors = calibrate(AnalyticTimer(curvature=1e-6), SMALL, "cpu-fp32", "tiny")
    worst = max(abs(e.relative) for e in errors if e.phase == "prefill")
    assert worst > 0.01
    assert profile.held_out_error["prefill_max"] == pytest.approx(worst, abs=1e-4)


def test_prefill_totals_shared_by_several_points_take_the_median():
    grid = Grid(batch_sizes=(1, 4), prompt_tokens=(16, 64), context_tokens=(32, 128), decode_steps=4, repetitions=1)
    timer = AnalyticTimer()
    measured = measure(timer, grid, grid.prefill_points(), grid.decode_points())
    measured.prefill[1, 64] = 0.010
    measured.prefill[4, 16] = 0.020
    profile = fit(measured, grid, "cpu-fp32", "tiny")
    assert profile.prefill.tokens == [16, 64, 256]
    assert profile.prefill.seconds[1] == pytest.approx(0.015)
    assert held_out_errors(profile, measured, grid) == []  # no held-out points were measured


def test_a_calibrated_profile_is_loaded_by_the_simulation(tmp_path: Path):
    profile, _ = calibrate(AnalyticTimer(), SMALL, "cpu-fp32", "tiny")
    path = tmp_path / "cpu-fp32.json"
    path.write_text(json.dumps(profile.model_dump(mode="json")))
    topology = TopologySpec.model_validate(
        {
            "name": "t",
            "model": "tiny",
            "profiles": {"cpu-fp32": "cpu-fp32.json"},
            "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [{"name": "k", "device": "cpu-fp32", "devices_per_node": 1}]}]}]}],
        },
        context={"base_dir": str(tmp_path)},
    )
    model = perf_model_for(topology, "cpu-fp32", 1)
    assert isinstance(model, TableModel)
    assert model.iteration_time(64, 0, 0) == pytest.approx(0.002 + 64e-5)


@pytest.mark.live
def test_calibrating_the_real_engine_gives_a_profile_the_simulation_runs(tmp_path: Path):
    from testbed.live.replica.models import ensure_model
    from testbed.live.timers import TorchTimer
    from testbed.sim import simulate
    from testbed.spec import Scenario, validate_spec

    grid = Grid(batch_sizes=(1, 2, 4), prompt_tokens=(8, 256), context_tokens=(16, 64), decode_steps=2, repetitions=3)
    profile, errors = calibrate(TorchTimer(ensure_model("tiny")), grid, "cpu-fp32", "tiny")
    assert len(errors) == len(grid.held_out_prefill()) + len(grid.held_out_decode())
    assert all(e.measured > 0 and e.predicted > 0 for e in errors)
    # a 4 x 256-token prefill does far more work than a 1 x 8 one (162 vs 7 ms here); at
    # 4 x 32 the tiny model's fixed cost per step made the two equal within noise under load
    assert profile.prefill.seconds[-1] > profile.prefill.seconds[0]
    (tmp_path / "profile.json").write_text(json.dumps(profile.model_dump(mode="json")))
    rack = {"name": "host", "nodes": 2, "device": "cpu-fp32", "devices_per_node": 1}
    spec = validate_spec(
        {
            "name": "calibrated",
            "duration": 30,
            "topology": {"name": "t", "model": "tiny", "profiles": {"cpu-fp32": "profile.json"}, "providers": [{"name": "p", "regions": [{"name": "r", "zones": [{"name": "z", "racks": [rack]}]}]}]},
            "workload": {"arrival": {"kind": "poisson", "rate": 5}, "prompt_tokens": {"kind": "fixed", "value": 32}, "output_tokens": {"kind": "fixed", "value": 8}},
            "serving": {"batching": {"policy": "micro", "max_batch_size": 4}},
        },
        Scenario,
        source="test",
        base_dir=tmp_path,
    )
    result = simulate(spec)
    ok = result.requests[result.requests["status"] == "ok"]
    assert len(ok) == len(result.requests) > 100
    # simulated service times are the measured ones: at least the quickest prefill and seven of the quickest decode steps
    floor = min(profile.prefill.seconds) + 7 * min(min(row) for row in profile.decode.seconds)
    assert ((ok["finish"] - ok["arrival"]) >= floor * 0.999).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "H100"], "--device: the live engines run on this CPU"),
        (["--engine", "tensorrt"], "--engine: expected one of torch, torch-runner, vllm"),
        (["--grid", "huge"], "--grid: expected one of"),
        (["--model", "/nonexistent/model"], "expected a built-in name"),
    ],
)
def test_calibrate_refuses_bad_options_with_exit_2(tmp_path: Path, args: list[str], message: str):
    from typer.testing import CliRunner

    from testbed.cli import app

    outcome = CliRunner().invoke(app, ["calibrate", "--out", str(tmp_path / "p.json"), *args])
    assert outcome.exit_code == 2, outcome.output
    assert message in " ".join(outcome.output.split())
    assert not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- what the simulation charges


def test_a_padding_engine_is_charged_batch_size_times_its_longest_prompt():
    profile, _ = calibrate(AnalyticTimer(), SMALL, "cpu-fp32", "tiny")
    packed = TableModel(profile)
    padded = TableModel(profile.model_copy(update={"prefill_padding": "longest"}))
    assert packed.prefill_charge(96, [16, 80]) == 96
    assert padded.prefill_charge(96, [16, 80]) == 160
    assert padded.prefill_charge(64, [64]) == 64  # one prompt has nothing to pad


class StartingTimer(AnalyticTimer):
    """Reports the start-up times of the servers it started, as ServerTimer does."""

    startups = (3.0, 2.0, 2.5)
    loads = (1.5, 1.0, 1.2)
    warmups = (0.2, 0.1, 0.3)


def test_the_fit_records_the_engines_padding_and_median_start_up():
    profile, _ = calibrate(StartingTimer(), SMALL, "cpu-fp32", "tiny")
    assert (profile.startup_seconds, profile.load_seconds, profile.warmup_seconds) == (2.5, 1.2, 0.2)
    assert profile.prefill_padding == "none"
    from testbed.live.calibrate import PADDING, fit_with_error, measure_grid

    padded, _ = fit_with_error(measure_grid(StartingTimer(), SMALL), SMALL, "cpu-fp32", "tiny", padding=PADDING["torch"])
    assert padded.prefill_padding == "longest" and padded.startup_seconds == 2.5


def _crash_scenario(tmp_path: Path, fault_kind: str, eject: bool = True, **profile_changes):
    """faults/live-replica-crash.yaml with its replica-0 fault of ``fault_kind`` and a changed profile."""
    from testbed.spec import Scenario, validate_spec

    root = Path(__file__).resolve().parent.parent
    base = Scenario.from_yaml(root / "faults" / "live-replica-crash.yaml")
    profile = json.loads((root / "profiles" / "cpu-fp32-tiny.json").read_text())
    profile.update(profile_changes)
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    data = base.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data["topology"]["profiles"] = {"cpu-fp32": str(tmp_path / "profile.json")}
    # A core per replica: these tests are about how a crash is seen, not about the laptop's
    # measured share of its cores, which would put a queue behind every retry.
    data["topology"]["host_cores"] = None
    node = "local/east/z0/host/node-0"
    target = f"{node}/cpu-0" if fault_kind == "accelerator_failure" else node
    data["faults"] = [{"kind": fault_kind, "target": target, "at": 15, "duration": 10}]
    data["serving"]["outlier_ejection"] = {"enabled": eject}
    return validate_spec(data, Scenario, source="test", base_dir=tmp_path)


def _first_served_after(result, replica: int, after: float) -> float:
    requests = result.requests
    served = requests[(requests["replica"] == replica) & (requests["arrival"] > after) & (requests["status"] == "ok")]
    return float(served["arrival"].min())


def test_a_repaired_replica_serves_only_once_it_has_started(tmp_path: Path):
    from testbed.sim import simulate

    # Without ejection: fast refusals would eject the replica for 30 s and hide its return.
    instant = simulate(_crash_scenario(tmp_path, "accelerator_failure", eject=False, startup_seconds=0.0))
    slow = simulate(_crash_scenario(tmp_path, "accelerator_failure", eject=False, startup_seconds=4.0))
    assert _first_served_after(instant, 0, 25.0) < 29.0
    assert _first_served_after(slow, 0, 25.0) >= 29.0


def test_a_crashed_process_refuses_at_once_where_a_crashed_machine_times_out(tmp_path: Path):
    from testbed.sim import simulate

    process = simulate(_crash_scenario(tmp_path, "accelerator_failure")).requests
    machine = simulate(_crash_scenario(tmp_path, "node_crash")).requests
    connect = 1.0  # the scenario's connect timeout
    def retried(requests):
        return requests[requests["retries"] > 0]

    assert len(retried(process)) and len(retried(machine))
    assert ((retried(machine)["finish"] - retried(machine)["arrival"]) >= connect).any()
    assert ((retried(process)["finish"] - retried(process)["arrival"]) < connect).all()


@pytest.mark.live
def test_startup_only_times_real_replica_starts_into_the_profile_and_the_simulated_cold_start_follows(tmp_path: Path):
    """``testbed calibrate --startup-only``: a real replica server started (spawn to READY, its
    model load and warm-up from /health) and the figures written into a profile whose tables stay
    as they were; an elastic simulation on that profile then brings a new replica up in exactly
    node + image + the measured start."""
    from typer.testing import CliRunner

    from testbed.cli import app
    from testbed.sim import simulate
    from testbed.spec import Scenario, validate_spec

    root = Path(__file__).resolve().parent.parent
    before = json.loads((root / "profiles" / "cpu-fp32-tiny.json").read_text())
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(before | {"startup_seconds": 0.0, "load_seconds": 0.0, "warmup_seconds": 0.0}))
    outcome = CliRunner().invoke(app, ["calibrate", "--startup-only", "--starts", "1", "--out", str(path)])
    assert outcome.exit_code == 0, outcome.output
    after = json.loads(path.read_text())
    startup, load, warmup = after["startup_seconds"], after["load_seconds"], after["warmup_seconds"]
    assert startup > load + warmup and load > 0 and warmup > 0  # the rest: interpreter and server start
    assert after["prefill"] == before["prefill"] and after["decode"] == before["decode"]
    assert "--startup-only" in after["source"]

    topology = (root / "topologies" / "live-laptop.yaml").read_text().replace("../profiles/cpu-fp32-tiny.json", str(path))
    (tmp_path / "laptop.yaml").write_text(topology)
    auto = {"target": 1, "min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "interval": "2s", "upscale_delay": "0s"}
    spec = validate_spec(
        {
            "name": "measured-cold-start",
            "topology": str(tmp_path / "laptop.yaml"),
            "duration": "40s",
            "workload": {"arrival": {"kind": "poisson", "rate": "6/s"}, "prompt_tokens": {"kind": "fixed", "value": 32},
                         "output_tokens": {"kind": "fixed", "value": 48}},
            "serving": {"batching": {"policy": "micro", "max_batch_size": 4}, "timeouts": {"request": "20s"}},
            "elastic": {"pools": {"default": {"autoscaler": auto}}, "lifecycle": {"provisioning": "1s", "image_pull": "0s"}},
        },
        Scenario,
        source="test",
        base_dir=tmp_path,
    )
    fleet = simulate(spec).fleet
    started = fleet[fleet["time"] > 0]
    replica = started["replica"].iloc[0]
    times: dict[str, float] = {}
    for phase, at in zip(started.loc[started["replica"] == replica, "phase"], started.loc[started["replica"] == replica, "time"]):
        times.setdefault(phase, at)  # its first start
    assert times["loading"] - times["provisioning"] == pytest.approx(1.0)
    assert times["warming"] - times["loading"] == pytest.approx(startup - warmup)
    assert times["serving"] - times["warming"] == pytest.approx(warmup)


def test_startup_only_refuses_what_it_cannot_measure_with_exit_2(tmp_path: Path):
    from typer.testing import CliRunner

    from testbed.cli import app

    root = Path(__file__).resolve().parent.parent
    profile = tmp_path / "p.json"
    profile.write_text((root / "profiles" / "cpu-fp32-tiny.json").read_text())
    for args, message in (
        (["--out", str(tmp_path / "none.json")], "cannot read profile"),
        (["--out", str(profile), "--device", "cpu-int8"], "the profile is for cpu-fp32 / tiny, not cpu-int8 / tiny"),
        (["--out", str(profile), "--engine", "vllm"], "--startup-only: times the built-in replica server"),
        (["--out", str(profile), "--starts", "0"], "--starts: expected an integer >= 1"),
    ):
        outcome = CliRunner().invoke(app, ["calibrate", "--startup-only", *args])
        assert outcome.exit_code == 2, outcome.output
        assert message in " ".join(outcome.output.split()), outcome.output
    assert profile.read_text() == (root / "profiles" / "cpu-fp32-tiny.json").read_text()  # left as it was
