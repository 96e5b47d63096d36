"""The scorecard, burn-rate and CUSUM arithmetic on hand-made records, and the observability spec."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from testbed.observe.detectors import Span, _cusum, burn_rate_alerts
from testbed.observe.rootcause import matches
from testbed.observe.scorecard import objective_verdicts, score
from testbed.spec import ChangePointSpec, DetectorsSpec, Objective, ObservabilityObjective, Scenario, SpecError, validate_spec

FAULTS = pd.DataFrame(
    {
        "fault_id": [0, 1],
        "kind": ["outage", "node_hang"],
        "target": ["aws/us-east-1", "aws/us-east-1/a/r/node-2"],
        "start": [100.0, 1000.0],
        "end": [400.0, 1200.0],
    }
)


def _alerts(rows):
    return pd.DataFrame(
        {
            "time": [r[0] for r in rows],
            "detector": [r[1] for r in rows],
            "root_causes": [json.dumps(r[2]) for r in rows],
        }
    )


def test_scorecard_counts_detections_false_alerts_and_root_cause_ranks():
    alerts = _alerts(
        [
            (50.0, "cusum", ["aws/us-west-2"]),  # before any fault: false
            (120.0, "health_check", ["aws/us-east-1/a/r/node-0", "aws/us-east-1"]),  # node inside the region: rank 1
            (130.0, "cusum", ["clients:aws/us-east-1"]),  # same fault, later: not the first
            (450.0, "cusum", ["aws/us-east-1"]),  # within 60 s grace after the repair: belongs to it
            (1030.0, "silent_replica", ["aws/us-east-1", "aws/us-east-1/a/r/node-1", "aws/us-east-1/a/r/node-2"]),
            (3000.0, "cusum", ["aws/us-east-1"]),  # fault-free time: false
        ]
    )
    card, summary = score(alerts, FAULTS, grace=60.0, span=(0.0, 3600.0))
    assert card["detected"].tolist() == [True, True]
    assert card["detector"].tolist() == ["health_check", "silent_replica"]
    assert card["time_to_detect"].tolist() == [20.0, 30.0]
    assert card["root_cause_rank"].tolist() == [1.0, 3.0]  # the region names no single node
    assert summary.false_alerts == 2 and summary.alerts == 6
    assert summary.precision == pytest.approx(4 / 6)
    assert summary.recall == 1.0
    fault_free = 3600 - (460 - 100) - (1260 - 1000)
    assert summary.fault_free_hours == pytest.approx(fault_free / 3600)
    assert summary.false_alerts_per_hour == pytest.approx(2 / (fault_free / 3600))
    assert summary.top1 == 0.5 and summary.top3 == 1.0


def test_a_windowed_alert_stamped_at_the_fault_start_saw_none_of_it_but_a_probe_did():
    # A silent-replica alert at t=100 sums the window ending at 100, before the outage began: it
    # is a false alert, not a detection in 0 s (the explorer showed "detect outage 0.0 ms").
    early = _alerts([(100.0, "silent_replica", ["aws/us-east-1"]), (110.0, "silent_replica", ["aws/us-east-1"])])
    card, summary = score(early, FAULTS, grace=60.0, span=(0.0, 3600.0))
    assert card["time_to_detect"].tolist()[0] == 10.0
    assert summary.false_alerts == 1
    probe = _alerts([(100.0, "health_check", ["aws/us-east-1"])])
    card, summary = score(probe, FAULTS, grace=60.0, span=(0.0, 3600.0))
    assert card["time_to_detect"].tolist()[0] == 0.0 and summary.false_alerts == 0


def test_a_missed_fault_fails_its_detect_objective_and_counts_against_recall():
    card, summary = score(_alerts([(120.0, "cusum", ["aws/us-east-1"])]), FAULTS, grace=0.0, span=(0.0, 3600.0))
    assert card["detected"].tolist() == [True, False]
    assert math.isnan(card["time_to_detect"].iloc[1]) and summary.recall == 0.5
    objectives = [
        ObservabilityObjective(detect={"kinds": ["outage"], "within": "60s"}),
        ObservabilityObjective(detect={"kinds": ["node_hang"], "within": "60s"}),
        ObservabilityObjective(false_alerts_per_day=1),
        ObservabilityObjective(root_cause_top1=0.5),
        ObservabilityObjective(recall=0.9),
    ]
    verdicts = {v.objective: v for v in objective_verdicts(objectives, card, summary)}
    assert verdicts["detect outage"].passed and verdicts["detect outage"].observed == 20.0
    assert verdicts["detect outage"].margin == 40.0
    assert not verdicts["detect node_hang"].passed and math.isinf(verdicts["detect node_hang"].observed)
    assert verdicts["false alerts per day"].passed and verdicts["false alerts per day"].observed == 0.0
    assert verdicts["root cause top1"].passed and verdicts["root cause top1"].observed == 1.0
    assert not verdicts["recall"].passed


def test_root_cause_matching_rules():
    assert matches("aws/us-east-1", "aws/us-east-1")
    assert matches("aws/us-east-1/a/r/node-2", "aws/us-east-1")  # a part of the dark region
    assert not matches("aws/us-east-1", "aws/us-east-1/a/r/node-2")  # too coarse for a hung node
    assert matches("aws/us-east-1/a/r/node-2", "aws/us-east-1/a/r/node-2/gpu-3")  # the node holding the GPU
    assert matches("clients:aws/us-east-1", "x", ("clients:aws/us-east-1", "aws/us-east-1"))
    assert not matches("gcp/us-central1", "x", ("clients:aws/us-east-1", "aws/us-east-1"))


def test_burn_rate_pages_on_a_fast_burn_and_not_on_a_slow_one():
    """99.9% availability: a 5% error ratio burns at 50x and pages; 0.5% burns at 5x and does not."""
    rng = np.random.default_rng(1)
    finish = np.sort(rng.uniform(0, 1200, 24000))
    bad_share = np.where((finish >= 600) & (finish < 900), 0.05, 0.005)
    status = np.where(rng.random(len(finish)) < bad_share, "failed", "ok")
    requests = pd.DataFrame({"finish": finish, "status": status, "request_class": "x", "stage": ""})
    objective = Objective(metric="availability", min=0.999)
    spec = DetectorsSpec()
    alerts = burn_rate_alerts(spec, [objective], requests, Span(10.0, 20.0, 1200.0))
    pages = [a for a in alerts if a.severity == "page"]
    assert len(pages) == 1  # one episode, one alert
    # The 1 h window holds 600 s at 0.5% before the burn: it reaches 14.4x after ~158 s of 5%.
    assert 740 <= pages[0].time <= 780 and pages[0].target == "availability"
    assert pages[0].value >= 14.4


def test_cusum_alarms_once_on_a_step_and_never_on_noise():
    spec = ChangePointSpec()
    rng = np.random.default_rng(3)
    times = np.arange(1, 61, dtype=float) * 10
    noise = 0.1 * (1 + 0.05 * rng.standard_normal(60))
    assert list(_cusum(noise, times, spec, is_error=False, direction=1)) == []
    step = noise.copy()
    step[30:45] *= 2.0  # latency doubles for 150 s
    alarms = list(_cusum(step, times, spec, is_error=False, direction=1))
    assert len(alarms) == 1 and times[30] <= alarms[0][0] <= times[32]


def test_observability_spec_errors_name_the_field():
    data = yaml_scenario()
    data["observability"] = {"objectives": [{"detect": {"kinds": ["outages"], "within": "60s"}}]}
    with pytest.raises(SpecError, match=r"observability\.objectives\.0\.detect\.kinds: unknown fault kinds \['outages'\]"):
        validate_spec(data, Scenario, "s.yaml")
    data["observability"] = {"objectives": [{"false_alerts_per_day": 1, "recall": 0.9}]}
    with pytest.raises(SpecError, match=r"observability\.objectives\.0: give exactly one of"):
        validate_spec(data, Scenario, "s.yaml")
    data["observability"] = {"trace_sample": "150%"}
    with pytest.raises(SpecError, match=r"observability\.trace_sample"):
        validate_spec(data, Scenario, "s.yaml")


def yaml_scenario() -> dict:
    return {
        "name": "s",
        "topology": {
            "name": "t",
            "providers": [{"name": "aws", "regions": [{"name": "r", "zones": [{"name": "a", "racks": [{"name": "k", "nodes": 1, "device": "H100", "devices_per_node": 2}]}]}]}],
        },
        "workload": {"arrival": {"kind": "poisson", "rate": "10/s"}, "prompt_tokens": {"kind": "fixed", "value": 64}, "output_tokens": {"kind": "fixed", "value": 8}},
        "duration": "1min",
    }
