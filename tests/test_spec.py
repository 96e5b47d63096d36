"""Specs: units, YAML loading, and one clear message per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from testbed.spec import Scenario, SpecError, TopologySpec, load_spec
from testbed.units import format_duration, parse_bandwidth, parse_duration, parse_rate

ROOT = Path(__file__).resolve().parents[1]

TOPOLOGY = {
    "name": "tiny",
    "providers": [
        {"name": "aws", "regions": [{"name": "us-east-1", "zones": [{"name": "a", "racks": [
            {"name": "r", "nodes": 1, "device": "A100", "devices_per_node": 2}]}]}]},
    ],
}


def scenario_dict(**overrides) -> dict:
    data = {
        "name": "s",
        "topology": TOPOLOGY,
        "workload": {"arrival": {"kind": "poisson", "rate": "5/s"}},
        "sla": [{"metric": "ttft", "percentile": 99, "max": "2s"}],
        "duration": "1min",
    }
    data.update(overrides)
    return data


def write(tmp_path: Path, data: dict, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30min", 1800), ("2h", 7200), ("250ms", 0.25), ("1d", 86400), (5, 5.0), ("1.5 min", 90)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "per_second"), [("250/s", 250), ("60/min", 1), ("3600/h", 1), (2.5, 2.5)])
def test_rates(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


def test_bandwidth_and_formatting():
    assert parse_bandwidth("8Gbps") == pytest.approx(1e9)
    assert format_duration(1800) == "30min" and format_duration(0.25) == "250ms"


@pytest.mark.parametrize("bad", ["fast", "-3s", "10 parsecs", True])
def test_bad_durations_say_what_is_expected(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_scenario_loads_with_topology_by_relative_path(tmp_path):
    (tmp_path / "topo").mkdir()
    write(tmp_path / "topo", TOPOLOGY, "t.yaml")
    path = write(tmp_path, scenario_dict(topology="topo/t.yaml"))
    scenario = Scenario.from_yaml(path)
    assert scenario.topology.name == "tiny"
    assert scenario.duration == 60 and scenario.workload.arrival.rate == 5


def test_to_yaml_round_trips(tmp_path):
    scenario = Scenario.from_yaml(write(tmp_path, scenario_dict()))
    again = Scenario.model_validate(yaml.safe_load(scenario.to_yaml()))
    assert again == scenario


def expect_error(tmp_path: Path, data: dict, *fragments: str) -> str:
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        Scenario.from_yaml(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message
    return message


def test_unknown_key_is_named_as_a_typo(tmp_path):
    expect_error(tmp_path, scenario_dict(durration="1min"), "durration", "unknown field")


def test_bad_value_names_field_value_and_expectation(tmp_path):
    data = scenario_dict()
    data["workload"]["arrival"]["rate"] = "lots"
    expect_error(tmp_path, data, "workload.arrival.rate", "'lots'", "expected a rate")


def test_missing_field(tmp_path):
    data = scenario_dict()
    del data["duration"]
    expect_error(tmp_path, data, "duration", "required field is missing")


def test_unknown_device_and_model(tmp_path):
    topo = json.loads(json.dumps(TOPOLOGY))
    topo["providers"][0]["regions"][0]["zones"][0]["racks"][0]["device"] = "TPU9"
    expect_error(tmp_path, scenario_dict(topology=topo), "unknown device 'TPU9'", "H100")
    topo = json.loads(json.dumps(TOPOLOGY))
    topo["model"] = "gpt-17"
    expect_error(tmp_path, scenario_dict(topology=topo), "topology.model", "unknown model")


def test_tensor_parallel_must_divide_node(tmp_path):
    topo = json.loads(json.dumps(TOPOLOGY))
    topo["providers"][0]["regions"][0]["zones"][0]["racks"][0]["tensor_parallel"] = 3
    expect_error(tmp_path, scenario_dict(topology=topo), "tensor_parallel (3) must divide")


def test_sla_objectives_are_checked(tmp_path):
    expect_error(tmp_path, scenario_dict(sla=[{"metric": "ttft", "max": "2s"}]), "needs a percentile")
    expect_error(tmp_path, scenario_dict(sla=[{"metric": "availability", "min": 1.5}]), "between 0 and 1")
    expect_error(tmp_path, scenario_dict(sla=[{"metric": "e2e", "percentile": 99, "max": "soon"}]), "expected a duration")
    expect_error(
        tmp_path, scenario_dict(sla=[{"metric": "ttft", "percentile": 99, "max": "1s", "class": "vip"}]), "unknown class 'vip'"
    )


def test_percent_strings_are_shares(tmp_path):
    scenario = Scenario.from_yaml(write(tmp_path, scenario_dict(sla=[{"metric": "availability", "min": "99.9%"}])))
    assert scenario.sla[0].min == pytest.approx(0.999)


def test_client_regions_must_exist(tmp_path):
    data = scenario_dict()
    data["workload"]["client_regions"] = {"aws/mars-1": 1.0}
    expect_error(tmp_path, data, "unknown region 'aws/mars-1'")


def test_broken_yaml_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nworkload: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML at line \d+, column \d+"):
        Scenario.from_yaml(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        Scenario.from_yaml(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        Scenario.from_yaml(path)


def test_error_in_referenced_topology_names_that_file(tmp_path):
    topo = json.loads(json.dumps(TOPOLOGY))
    topo["providers"][0]["regions"][0]["zones"][0]["racks"][0]["nodes"] = 0
    topo_path = write(tmp_path, topo, "t.yaml")
    with pytest.raises(SpecError) as info:
        Scenario.from_yaml(write(tmp_path, scenario_dict(topology="t.yaml")))
    assert str(topo_path) in str(info.value) and "nodes" in str(info.value)


def test_every_catalog_file_validates():
    for path in sorted((ROOT / "topologies").glob("*.yaml")):
        load_spec(path, TopologySpec)
    scenarios = sorted((ROOT / "faults").glob("*.yaml"))
    assert scenarios
    for path in scenarios:
        Scenario.from_yaml(path)


def test_json_schema_exports():
    schema = Scenario.model_json_schema(by_alias=True)
    assert "workload" in schema["properties"] and "sla" in schema["properties"]
