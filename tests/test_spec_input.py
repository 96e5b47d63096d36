"""Bad spec input, as found by fuzzing the loader and by new users: one clear message each.

Every case here was a traceback, unbounded memory, a silent misreading or raw library wording;
each must now be a :class:`SpecError` that names the file and the field in the spec's own terms
and says what to write instead. Bounds are checked before anything is expanded, so the
oversized cases finish at once (and a fleet of a million devices stays valid).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from testbed.spec import MAX_DEPTH, MAX_DEVICES, Scenario, SpecError, TopologySpec, load_spec, validate_spec
from testbed.units import parse_duration, parse_rate

TOPOLOGY = {
    "name": "two",
    "providers": [
        {"name": "aws", "regions": [
            {"name": "us-east-1", "zones": [{"name": "a", "racks": [{"name": "r", "device": "A100", "devices_per_node": 2}]}]},
            {"name": "us-west-2", "zones": [{"name": "a", "racks": [{"name": "r", "device": "A100", "devices_per_node": 2}]}]},
        ]},
    ],
}


def scenario(**overrides) -> dict:
    data = {
        "name": "s",
        "topology": copy.deepcopy(TOPOLOGY),
        "workload": {"arrival": {"kind": "poisson", "rate": "5/s"}},
        "duration": "1min",
    }
    data.update(overrides)
    return data


def error(data: dict, tmp_path: Path, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError) as info:
        Scenario.from_yaml(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


def rack(data: dict) -> dict:
    return data["topology"]["providers"][0]["regions"][0]["zones"][0]["racks"][0]


# --------------------------------------------------------------------------- files


def test_a_file_that_is_not_utf8_is_one_message_naming_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("utf-8") + "description: na\u00efve\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1\.yaml: not UTF-8 text: byte 0xef on line 2 .*save the file as UTF-8"):
        Scenario.from_yaml(path)


@pytest.mark.parametrize("opening", ["[", "{a: "])
def test_deep_nesting_is_refused_before_the_parser_recurses(tmp_path, opening):
    closing = "]" if opening == "[" else "}"
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nworkload: " + opening * 3000 + "1" * (opening != "[") + closing * 3000 + "\n")
    with pytest.raises(SpecError, match=rf"deep\.yaml: nested deeper than {MAX_DEPTH} levels at line 2"):
        Scenario.from_yaml(path)


def test_deep_data_from_elsewhere_is_refused_too():
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    with pytest.raises(SpecError, match="explorer: nested deeper than"):
        validate_spec(scenario(workload=deep), Scenario, source="explorer")


def test_yaml_syntax_errors_are_plain_words_with_line_column_and_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nworkload:\n  arrival: {kind: poisson\n  rate: 5\n")
    with pytest.raises(SpecError) as info:
        Scenario.from_yaml(path)
    message = str(info.value)
    assert "not valid YAML at line" in message and "'{' mapping that is not closed with '}'" in message
    assert "expected ',' or '}'" not in message  # PyYAML's own words
    path.write_text("name: x\nduration: 1min\n  seed: 3\n")
    with pytest.raises(SpecError, match=r"line 3, column 7: a ':' where a value was expected") as info:
        Scenario.from_yaml(path)
    assert "  3 |   seed: 3" in str(info.value)


def test_a_missing_topology_file_names_the_scenario_and_the_resolved_path(tmp_path):
    (tmp_path / "faults").mkdir()
    message = error(scenario(topology="../topologies/nope.yaml"), tmp_path / "faults")
    assert "topology: file '../topologies/nope.yaml' does not exist" in message
    assert f"resolved to {(tmp_path / 'topologies' / 'nope.yaml').resolve()}" in message


# --------------------------------------------------------------------------- sizes


def test_a_huge_rack_count_is_refused_without_expanding_it(tmp_path):
    data = scenario()
    rack(data)["count"] = 100_000_000
    assert "racks.r.count: expected less than or equal to 1000000" in error(data, tmp_path)


def test_devices_per_node_is_bounded_at_validation(tmp_path):
    data = scenario()
    rack(data)["devices_per_node"] = 1_000_000_000
    assert "racks.r.devices_per_node: expected less than or equal to 1024" in error(data, tmp_path)


def test_the_expanded_fleet_is_bounded_and_the_biggest_rack_named(tmp_path):
    data = scenario()
    rack(data).update(count=1000, nodes=1000, devices_per_node=8)
    message = error(data, tmp_path)
    assert f"expands to 8,000,002 devices, more than the {MAX_DEVICES:,}" in message
    assert "rack aws/us-east-1/a/r: count 1,000 x nodes 1,000 x devices_per_node 8" in message


def test_a_fleet_of_a_million_devices_is_valid():
    topology = copy.deepcopy(TOPOLOGY)
    topology["providers"][0]["regions"][0]["zones"][0]["racks"][0].update(count=499_999, nodes=1, devices_per_node=2)
    spec = TopologySpec.model_validate(topology)
    assert spec.device_count() == MAX_DEVICES  # the other region adds two


# --------------------------------------------------------------------------- latencies and units


@pytest.mark.parametrize("rtt", [140, "140", 2.5])
def test_an_rtt_as_a_bare_number_over_a_second_asks_for_a_unit(tmp_path, rtt):
    data = scenario()
    data["topology"]["links"] = [{"between": ["aws/us-east-1", "aws/us-west-2"], "rtt": rtt}]
    message = error(data, tmp_path)
    assert f"topology.links.0.rtt: a bare number is seconds, and {float(rtt):g} s is implausible" in message
    assert f"write '{float(rtt):g}ms' for milliseconds" in message


@pytest.mark.parametrize(("rtt", "seconds"), [(0.14, 0.14), ("0.14", 0.14), ("140ms", 0.14), ("2s", 2.0)])
def test_plausible_or_explicit_rtts_are_accepted(rtt, seconds):
    topology = copy.deepcopy(TOPOLOGY)
    topology["links"] = [{"between": ["aws/us-east-1", "aws/us-west-2"], "rtt": rtt}]
    assert TopologySpec.model_validate(topology).links[0].rtt == pytest.approx(seconds)


def test_a_latency_fault_without_units_is_checked_like_an_rtt(tmp_path):
    fault = {"kind": "latency", "between": ["aws/us-east-1", "aws/us-west-2"], "at": "10s", "delay": 300}
    assert "faults.0.delay: a bare number is seconds, and 300 s is implausible" in error(scenario(faults=[fault]), tmp_path)


def test_a_delay_beyond_the_request_deadline_is_a_warning():
    fault = {"kind": "latency", "between": ["aws/us-east-1", "aws/us-west-2"], "at": "10s", "delay": "90s"}
    spec = validate_spec(scenario(faults=[fault], serving={"timeouts": {"request": "30s"}}), Scenario, source="s.yaml")
    (warning,) = spec.warnings()
    assert warning.startswith("faults.0 (latency): delay 90s is at or beyond the request deadline")
    assert validate_spec(scenario(), Scenario, source="s.yaml").warnings() == []


def test_a_number_written_as_a_string_means_the_same_as_the_number():
    assert parse_duration("140") == parse_duration(140) == 140.0
    assert parse_rate("2.5") == parse_rate(2.5)


# --------------------------------------------------------------------------- field errors in people's words


def test_a_misspelt_key_gets_did_you_mean_and_comes_before_its_knock_on(tmp_path):
    data = scenario(serving={"batching": {"policy": "continuous", "max_num_seq": 64}})
    data["workload"] = {"arival": {"kind": "poisson", "rate": "5/s"}}
    lines = error(data, tmp_path).splitlines()
    assert lines[0].endswith("workload.arival: unknown field (did you mean 'arrival'?)")
    assert any("serving.batching.max_num_seq: unknown field (did you mean 'max_num_seqs'?)" in line for line in lines)
    assert not any("workload.arrival: required field is missing" in line for line in lines)  # the knock-on of the typo


def test_a_key_at_the_wrong_level_says_where_it_belongs(tmp_path):
    message = error(scenario(routing={"policy": "least_outstanding"}), tmp_path)
    assert "s.yaml: routing: unknown field here: 'routing' belongs under 'serving:'" in message
    data = scenario()
    data["workload"]["seed"] = 3
    assert "workload.seed: unknown field here: 'seed' belongs at the top level" in error(data, tmp_path)


def test_an_unknown_union_tag_is_explained_with_a_suggestion(tmp_path):
    message = error(scenario(faults=[{"kind": "region_outage", "target": "aws/us-east-1", "at": "10s"}]), tmp_path)
    assert "faults.0: unknown kind 'region_outage' (did you mean 'outage'?); expected one of accelerator_failure" in message
    assert "Input tag" not in message and "found using" not in message


def test_list_items_with_names_are_named_in_the_path(tmp_path):
    data = scenario()
    rack(data)["nodes"] = 0
    message = error(data, tmp_path)
    assert "topology.providers.aws.regions.us-east-1.zones.a.racks.r.nodes: expected greater than 0" in message
    assert "providers.0" not in message


def test_union_member_tags_are_left_out_of_the_path(tmp_path):
    data = scenario()
    data["workload"]["arrival"]["rate"] = "lots"
    message = error(data, tmp_path)
    assert "workload.arrival.rate: expected a rate" in message and ".poisson." not in message


def test_literals_and_types_are_in_plain_words(tmp_path):
    message = error(scenario(serving={"routing": {"policy": "least_outstandng"}}), tmp_path)
    assert "serving.routing.policy: expected one of" in message and "(did you mean 'least_outstanding'?)" in message
    assert "Input should be" not in message
    message = error(scenario(workload=[1, 2]), tmp_path)
    assert "workload: expected a mapping of fields ('key: value' lines), got a list" in message


def test_every_catalog_file_still_validates():
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "topologies").glob("*.yaml")):
        load_spec(path, TopologySpec)
    for path in sorted((root / "faults").glob("*.yaml")) + sorted((root / "examples").glob("*.yaml")):
        Scenario.from_yaml(path)
