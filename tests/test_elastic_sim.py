"""Elastic fleets in simulation: the catalog scenarios' verdicts and each mechanism on a small fleet."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from testbed.sim.engine import simulate
from testbed.spec import Scenario, SpecError, validate_spec

ROOT = Path(__file__).resolve().parents[1]
LAPTOP = str(ROOT / "topologies" / "live-laptop.yaml")  # 4 CPU slots of the tiny model, 2 regions
EAST0, WEST0, EAST1, WEST1 = 0, 2, 1, 3  # replica indices: east node-0/1, west node-0/1


def small(elastic: dict | None, **overrides) -> Scenario:
    data = {
        "name": "elastic-small",
        "topology": LAPTOP,
        "duration": "2min",
        "drain": "30s",
        "seed": 5,
        "workload": {
            "arrival": {"kind": "poisson", "rate": "4/s"},
            "prompt_tokens": {"kind": "uniform", "low": 32, "high": 96},
            "output_tokens": {"kind": "uniform", "low": 16, "high": 48},
        },
        "serving": {
            "batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": "10ms"},
            "timeouts": {"request": "20s"},
            "health_check": {"period": "1s", "timeout": "500ms"},
        },
        "elastic": elastic,
    } | overrides
    return validate_spec(data, Scenario, "elastic-small.yaml")


def phases(result, replica: int) -> list[tuple[float, str]]:
    fleet = result.fleet[result.fleet["replica"] == replica]
    return list(zip(fleet["time"].tolist(), fleet["phase"].tolist()))


# ---------------------------------------------------------------- the catalog scenarios


@cache
def catalog(name: str):
    """Each catalog scenario is simulated once for the tests below (tests/test_scenarios.py checks
    their verdicts against their headers)."""
    return simulate(Scenario.from_yaml(ROOT / "faults" / name))


def test_the_outage_scenarios_migrate_cut_streams_and_lose_none():
    for name in ("elastic-outage-headroom.yaml", "elastic-outage-no-headroom.yaml"):
        result = catalog(name)
        assert result.stats["migrations"] > 0 and result.stats["migration_check_ok"], result.stats
        assert (result.requests["status"] != "failed").all()  # slow or timed out, never a lost stream
    assert catalog("elastic-outage-no-headroom.yaml").stats["scale_ups"] >= 1


def test_the_spot_fleet_is_preempted_falls_back_and_costs_less_than_on_demand():
    stats = catalog("elastic-spot-fleet.yaml").stats
    assert stats["spot_preemptions"] >= 1 and stats["spot_fallbacks"] >= 1
    assert stats["cost_usd"] < 6 * 98.32 / 8 / 6  # six on-demand H100s for ten minutes
    assert (catalog("elastic-spot-fleet.yaml").requests["status"] == "ok").all()


def test_stockout_lengthens_the_outage_it_coincides_with():
    # Same seed, fleet and outage: the stockout is the only difference, and it costs availability.
    alone = catalog("elastic-outage-no-headroom.yaml")
    stocked = catalog("elastic-stockout-failover.yaml")
    assert stocked.sla[2].observed < alone.sla[2].observed - 0.2
    first = stocked.fleet[(stocked.fleet["phase"] == "provisioning") & (stocked.fleet["time"] > 0)]["time"].min()
    assert first >= 7 * 60  # nothing granted in gcp until the stockout ends at 7 min


def test_the_rolling_deployment_replaces_every_replica_two_at_a_time():
    result = catalog("elastic-rolling-deployment.yaml")
    fleet = result.fleet
    old = sorted(fleet[(fleet["time"] == 0) & (fleet["phase"] == "serving")]["replica"])
    gone = fleet[fleet["phase"] == "gone"]
    assert sorted(gone["replica"]) == old  # every original replica drained and left
    for replica in old:
        times = dict((p, t) for t, p in phases(result, replica))
        assert times["retiring"] <= times["draining"] <= times["gone"]
    # Never more than two start at once (max_surge), and four serve throughout.
    starts = fleet[fleet["phase"] == "provisioning"]["time"].value_counts()
    assert starts.max() == 2


# ---------------------------------------------------------------- lifecycle and repair


def measured_start() -> tuple[float, float]:
    """The live-laptop profile's measured start: (spawn to serving, of which the warm-up)."""
    profile = json.loads((ROOT / "profiles" / "cpu-fp32-tiny.json").read_text())
    return profile["startup_seconds"], profile["warmup_seconds"]


def test_a_replaced_replica_pays_the_lifecycle_chain_with_the_measured_start():
    # A node crash on a fixed elastic pool: the replica is gone and the slot, once repaired, is
    # filled by a new replica that pays node + image (local: 30 + 45 s), then the start that
    # calibration measured for the tiny model's replica: its loading (process, libraries,
    # weights) and its warm-up, from the profile.
    result = simulate(small({}, faults=[{"kind": "node_crash", "target": "local/east/z0/host/node-0", "at": "10s", "duration": "5s"}]))
    history = phases(result, EAST0)
    assert [p for _, p in history] == ["serving", "gone", "provisioning", "loading", "warming", "serving"]
    times = [t for t, _ in history]
    startup, warmup = measured_start()
    assert startup > warmup > 0
    assert 10 <= times[1] <= 11 and 15 <= times[2] <= 16  # gone at the next tick; re-granted once repaired
    assert times[3] - times[2] == pytest.approx(75.0)
    assert times[4] - times[3] == pytest.approx(startup - warmup)
    assert times[5] - times[4] == pytest.approx(warmup)
    # While it starts, the slot takes no requests: nothing is answered there in that window.
    answered = result.requests[result.requests["replica"] == EAST0]
    assert not ((answered["arrival"] > times[1] + 1) & (answered["finish"] < times[5])).any()


def test_lifecycle_overrides_shorten_the_chain():
    elastic = {"lifecycle": {"provisioning": "5s", "image_pull": "0s", "warmup": "1s", "storage_bandwidth": "8Gbps"}}
    result = simulate(small(elastic, faults=[{"kind": "node_crash", "target": "local/east/z0/host/node-0", "at": "10s", "duration": "5s"}]))
    times = [t for t, _ in phases(result, EAST0)]
    assert times[-1] - times[2] == pytest.approx(5.0 + 4.21e6 * 4 / 1e9 + 1.0)  # the tiny model's weights at 1 GB/s


# ---------------------------------------------------------------- autoscaling and drain


def test_scale_down_drains_and_no_request_fails():
    auto = {"target": 4, "min_replicas": 1, "max_replicas": 4, "initial_replicas": 4, "interval": "5s", "downscale_delay": "10s"}
    result = simulate(small({"pools": {"default": {"autoscaler": auto}}}, workload={
        "arrival": {"kind": "poisson", "rate": "2/s"},
        "prompt_tokens": {"kind": "fixed", "value": 64},
        "output_tokens": {"kind": "fixed", "value": 32},
    }))
    assert result.stats["scale_downs"] >= 1
    drained = result.fleet[result.fleet["phase"] == "draining"]["replica"].tolist()
    assert drained and set(drained) <= set(result.fleet[result.fleet["phase"] == "gone"]["replica"])
    assert (result.requests["status"] == "ok").all()
    for replica in drained:
        history = dict((p, t) for t, p in phases(result, replica))
        late = result.requests[(result.requests["replica"] == replica) & (result.requests["arrival"] > history["draining"] + 0.01)]
        assert late.empty  # a draining replica takes no new requests


def test_a_burst_scales_the_pool_up_through_cold_starts():
    auto = {"target": 2, "min_replicas": 1, "max_replicas": 4, "initial_replicas": 1, "interval": "5s", "upscale_delay": "5s"}
    elastic = {"pools": {"default": {"autoscaler": auto}}, "lifecycle": {"provisioning": "10s", "image_pull": "0s"}}
    result = simulate(small(elastic, workload={
        "arrival": {"kind": "poisson", "rate": "12/s"},
        "prompt_tokens": {"kind": "fixed", "value": 64},
        "output_tokens": {"kind": "fixed", "value": 48},
    }))
    assert result.stats["scale_ups"] >= 1 and result.stats["cold_starts"] >= 1
    serving = result.fleet[(result.fleet["phase"] == "serving") & (result.fleet["time"] > 0)]["time"]
    assert serving.min() >= 5 + 10  # first decision after the delay, then the 10 s node and warm-up


# ---------------------------------------------------------------- spot


def test_spot_notice_drains_before_the_reclaim_and_falls_back_to_on_demand():
    spot = {"share": 1.0, "preemption_rate": "60/h", "notice": "10s", "fallback": "on_demand", "fallback_hold": "1h"}
    result = simulate(small({"pools": {"default": {"spot": spot}}}))
    fleet = result.fleet
    assert result.stats["spot_preemptions"] >= 1 and result.stats["spot_fallbacks"] >= 1
    for replica in fleet[fleet["phase"] == "notice"]["replica"].unique().tolist():
        history = phases(result, replica)
        notice = next(t for t, p in history if p == "notice")
        gone = next(t for t, p in history if p == "gone" and t >= notice)
        assert gone - notice <= 10.0 + 1e-9
        late = result.requests[(result.requests["replica"] == replica) & (result.requests["arrival"] > notice + 0.01) & (result.requests["finish"] < gone + 1e-9)]
        assert late.empty
    replacements = fleet[(fleet["phase"] == "provisioning") & (fleet["time"] > 0)]
    assert (replacements["market"] == "on_demand").all()  # the hold keeps the region on on-demand
    assert result.stats["migration_check_ok"]


def test_spot_is_cheaper_than_on_demand_for_the_same_fleet():
    on_demand = simulate(small({}))
    spot = simulate(small({"pools": {"default": {"spot": {"share": 1.0, "preemption_rate": "0/h"}}}}))
    assert spot.stats["device_hours"] == pytest.approx(on_demand.stats["device_hours"])
    assert spot.stats["cost_usd"] == pytest.approx(on_demand.stats["cost_usd"] * 0.35)
    assert on_demand.stats["device_hours"] == pytest.approx(4 * on_demand.stats["simulated_s"] / 3600)


# ---------------------------------------------------------------- migration


LONG = {
    "arrival": {"kind": "poisson", "rate": "3/s"},
    "prompt_tokens": {"kind": "fixed", "value": 64},
    "output_tokens": {"kind": "fixed", "value": 200},
}
CRASHES = [{"kind": "node_crash", "target": "local/east/z0/host/node-0", "at": "20s", "duration": "30s"},
           {"kind": "node_crash", "target": "local/west/z0/host/node-0", "at": "40s", "duration": "30s"}]


def test_streams_cut_by_a_crash_migrate_with_their_tokens_and_pass_the_checker():
    result = simulate(small({"migration": {"limit": 1}}, workload=LONG, faults=CRASHES))
    stats = result.stats
    assert stats["migrations"] > 0 and stats["migrations"] == stats["migrated_requests"]  # at most one each
    assert stats["migration_check_ok"] and stats["migration_tokens_lost"] == stats["migration_tokens_duplicated"] == 0
    off = simulate(small({"migration": {"enabled": False}}, workload=LONG, faults=CRASHES))
    assert off.stats["migrations"] == 0
    # Without migration the cut streams are retried from scratch: more retries, later answers.
    assert off.requests["retries"].sum() > result.requests["retries"].sum()


def test_a_migrated_attempt_carries_the_delivered_tokens_as_prompt():
    from testbed.draw import draw
    from testbed.sim.engine import _Run

    run = _Run(draw(small({}, workload=LONG), 5), None)
    assert run.elastic is not None
    run.elastic.offset[3] = 120
    assert run.elastic.work_for(3, 64, 200) == (64 + 120, 80)  # the re-prefill: 120 more prompt tokens
    assert run.elastic.work_for(4, 64, 200) == (64, 200)


# ---------------------------------------------------------------- degradation


def test_the_ladder_caps_max_tokens_under_overload_and_the_share_is_judged():
    ladder = {"steps": [{"action": "cap_max_tokens", "max_tokens": 8}], "enter_load": 0.5, "exit_load": 0.2, "hold": "5s"}
    auto = {"target": 100, "min_replicas": 2, "max_replicas": 2, "interval": "5s"}
    scenario = small(
        {"pools": {"default": {"autoscaler": auto, "degradation": ladder}}},
        workload={"arrival": {"kind": "poisson", "rate": "30/s"}, "prompt_tokens": {"kind": "fixed", "value": 64},
                  "output_tokens": {"kind": "fixed", "value": 48}},
        sla=[{"metric": "degraded_share", "max": "10%"}],
    )
    result = simulate(scenario)
    degraded = result.requests[result.requests["degraded"]]
    assert len(degraded) > 0 and (degraded["output_tokens"] == 8).all()
    assert (result.requests.loc[~result.requests["degraded"], "output_tokens"] == 48).all()
    [verdict] = result.sla
    ok = result.requests[result.requests["status"] == "ok"]
    assert verdict.observed == pytest.approx(ok["degraded"].mean()) and not verdict.passed


# ---------------------------------------------------------------- determinism, spec, live


def test_elastic_runs_are_deterministic():
    spot = {"share": 0.5, "preemption_rate": "30/h", "notice": "5s"}
    a = simulate(small({"pools": {"default": {"spot": spot}}}, workload=LONG, faults=CRASHES))
    b = simulate(small({"pools": {"default": {"spot": spot}}}, workload=LONG, faults=CRASHES))
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.fleet, b.fleet)
    assert {k: v for k, v in a.stats.items() if k != "wall_s"} == {k: v for k, v in b.stats.items() if k != "wall_s"}


@pytest.mark.parametrize(
    "elastic, faults, message",
    [
        (None, [{"kind": "stockout", "target": "local/east", "at": "1s"}], "faults.0 (stockout): a fixed fleet acquires no devices"),
        ({"pools": {"gpu": {}}}, [], "elastic.pools.gpu: not a pool of the topology"),
        ({"pools": {"default": {"autoscaler": {"target": 1, "max_replicas": 9}}}}, [], "max_replicas: 9 is more than the 4 primary replicas"),
        ({"quotas": {"local/north": {"cpu-fp32": 2}}}, [], "elastic.quotas.local/north: not a region path"),
        ({}, [{"kind": "stockout", "target": "local/east/z0", "at": "1s"}], "stockout needs a region"),
        ({"pools": {"default": {"degradation": {"steps": [{"action": "route_class", "class": "batch", "to_pool": "x"}]}}}}, [], "'batch' is not one of"),
    ],
)
def test_bad_elastic_specs_get_one_clear_message(elastic, faults, message):
    with pytest.raises(SpecError) as error:
        small(elastic, faults=faults)
    assert message in str(error.value) and str(error.value).startswith("elastic-small.yaml")


def test_the_live_plane_refuses_what_it_cannot_do_with_exit_2(tmp_path: Path):
    from typer.testing import CliRunner

    from testbed.cli import app

    path = tmp_path / "elastic.yaml"
    path.write_text(small({"pools": {"default": {"autoscaler": {"target": 2, "max_replicas": 4}, "spot": {"preemption_rate": "1/h"}}}}).to_yaml())
    outcome = CliRunner().invoke(app, ["live", str(path)])
    assert outcome.exit_code == 2
    assert "pools.default.spot: runs in simulation only" in " ".join(outcome.output.split())
    assert "Traceback" not in outcome.output


def test_the_report_shows_cost_next_to_the_verdicts():
    from testbed.report.markdown import markdown_report

    report = markdown_report(simulate(small({})))
    assert "## Fleet cost and elasticity" in report and "goodput per $" in report
    assert "Fleet cost" not in markdown_report(simulate(small(None)))


# ---------------------------------------------------------------- quotas, scale to zero, metrics


BURST = {
    "arrival": {"kind": "poisson", "rate": "12/s"},
    "prompt_tokens": {"kind": "fixed", "value": 64},
    "output_tokens": {"kind": "fixed", "value": 48},
}
FAST_START = {"provisioning": "5s", "image_pull": "0s"}


def test_a_quota_caps_the_devices_a_region_grants():
    auto = {"target": 1, "min_replicas": 1, "max_replicas": 4, "initial_replicas": 1, "interval": "5s", "upscale_delay": "5s"}
    elastic = {"pools": {"default": {"autoscaler": auto}}, "lifecycle": FAST_START,
               "quotas": {"local/east": {"cpu-fp32": 1}, "local/west": {"cpu-fp32": 1}}}
    result = simulate(small(elastic, workload=BURST))
    assert result.stats["scale_ups"] >= 1 and result.stats["refused_grants"] > 0
    started = set(result.fleet[result.fleet["phase"].isin(["serving", "provisioning"])]["replica"])
    assert started == {EAST0, WEST0}  # one device per region, never more


def test_the_starting_fleet_respects_quotas_too():
    result = simulate(small({"quotas": {"local/east": {"cpu-fp32": 1}}}))
    serving = set(result.fleet[(result.fleet["time"] == 0) & (result.fleet["phase"] == "serving")]["replica"])
    assert serving == {EAST0, WEST0, WEST1}  # the pool wants all four; east grants one


@pytest.mark.parametrize("metric, target", [("queue_depth", 0.5), ("kv_utilisation", 0.1), ("latency", 0.05)])
def test_every_metric_scales_a_loaded_pool_up(metric: str, target: float):
    auto = {"metric": metric, "target": target, "min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
            "interval": "5s", "upscale_delay": "5s", "percentile": 90}
    serving = {"batching": {"policy": "continuous", "max_num_seqs": 8, "kv_cache_tokens": 2048}, "timeouts": {"request": "20s"}}
    result = simulate(small({"pools": {"default": {"autoscaler": auto}}, "lifecycle": FAST_START}, workload=BURST, serving=serving))
    assert result.stats["scale_ups"] >= 1 and result.stats["cold_starts"] >= 1


def test_an_idle_pool_scales_to_zero_and_a_request_brings_it_back():
    auto = {"target": 2, "min_replicas": 0, "max_replicas": 2, "initial_replicas": 1, "interval": "5s",
            "downscale_delay": "10s", "scale_to_zero": True}
    workload = {"arrival": {"kind": "step", "rate": "0/s", "steps": [{"at": "60s", "rate": "1/s"}]},
                "prompt_tokens": {"kind": "fixed", "value": 32}, "output_tokens": {"kind": "fixed", "value": 200}}
    serving = {"batching": {"policy": "micro", "max_batch_size": 4, "max_queue_delay": "10ms"},
               "timeouts": {"request": "30s"}, "retries": {"max_attempts": 20, "backoff": "1s", "max_backoff": "2s"}}
    # The modelled start (the tiny model's weights at 1 GB/s, 2 s warm-up), not this machine's measured one.
    lifecycle = FAST_START | {"storage_bandwidth": "8Gbps", "warmup": "2s"}
    result = simulate(small({"pools": {"default": {"autoscaler": auto}}, "lifecycle": lifecycle}, workload=workload, serving=serving))
    fleet = result.fleet
    gone = fleet[fleet["phase"] == "gone"]["time"]
    assert not gone.empty and gone.min() < 60  # scaled to zero while idle
    back = fleet[(fleet["phase"] == "serving") & (fleet["time"] > 60)]["time"]
    # The first request at ~60 s; the next decision within 5 s; a 5 s node and a 2 s warm-up.
    assert not back.empty and back.min() < 60 + 5 + 1 + 5 + 2 + 1
    assert len(back) == 1  # averaged over the interval, the light load keeps one replica: no flapping
    assert (result.requests["status"] == "ok").mean() > 0.9  # retries outlasted the cold start


# ---------------------------------------------------------------- the other ladder steps


def two_pools() -> dict:
    import yaml

    topology = yaml.safe_load(Path(LAPTOP).read_text())
    topology["profiles"] = {k: str((Path(LAPTOP).parent / v).resolve()) for k, v in topology["profiles"].items()}
    east = topology["providers"][0]["regions"][0]["zones"][0]["racks"]
    east.append({"name": "small", "nodes": 1, "device": "cpu-fp32", "devices_per_node": 1, "pool": "small"})
    return topology


def test_route_class_sends_a_class_to_the_smaller_pool_and_quantize_speeds_the_pool():
    ladder = {"steps": [{"action": "quantize", "speedup": 1.1}, {"action": "route_class", "class": "batch", "to_pool": "small"}],
              "enter_load": 0.3, "exit_load": 0.1, "hold": "2s"}
    workload = BURST | {"classes": [{"name": "chat", "share": 0.5}, {"name": "batch", "share": 0.5, "priority": 1}]}
    auto = {"target": 100, "min_replicas": 2, "max_replicas": 2, "interval": "2s"}
    result = simulate(small({"pools": {"default": {"autoscaler": auto, "degradation": ladder}}}, topology=two_pools(), workload=workload))
    requests = result.requests
    [small_replica] = result.fleet.loc[result.fleet["pool"] == "small", "replica"].unique().tolist()
    routed = requests[requests["replica"] == small_replica]
    assert len(routed) > 0 and (routed["request_class"] == "batch").all() and routed["degraded"].all()
    assert requests["degraded"].sum() > len(routed)  # quantized answers of the default pool count too
