"""The fleet graph: replica placement, failure domains and network distances."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.spec import TopologySpec, load_spec
from testbed.topology import Topology

ROOT = Path(__file__).resolve().parents[1]


def catalog(name: str) -> Topology:
    return Topology.from_spec(load_spec(ROOT / "topologies" / f"{name}.yaml", TopologySpec))


def build(racks: list[dict], links: list[dict] | None = None, regions: int = 1) -> Topology:
    spec = {
        "name": "t",
        "providers": [
            {"name": "p", "regions": [{"name": f"r{i}", "zones": [{"name": "z", "racks": racks}]} for i in range(regions)]}
        ],
        "links": links or [],
        "default_rtt": 0.3,
    }
    return Topology.from_spec(TopologySpec.model_validate(spec))


@pytest.mark.parametrize(
    ("name", "replicas", "regions"),
    [("laptop", 2, 1), ("gpu-region", 128, 1), ("multi-cloud", 104, 4), ("fleet-1k", 1152, 4)],
)
def test_catalog_topologies_build_with_the_replicas_their_specs_imply(name, replicas, regions):
    topology = catalog(name)
    assert len(topology.replicas) == replicas
    assert len(topology.regions) == regions
    assert [r.index for r in topology.replicas] == list(range(replicas))


def test_the_fleet_has_a_thousand_gpus_in_three_or_more_regions():
    fleet = catalog("fleet-1k")
    assert fleet.device_count >= 1000
    assert len({r.region for r in fleet.replicas}) >= 3


def test_multi_cloud_has_two_providers_and_a_cpu_fallback_tier():
    topology = catalog("multi-cloud")
    assert {r.provider for r in topology.replicas} == {"aws", "gcp"}
    fallback = [r for r in topology.replicas if r.tier == "fallback"]
    assert fallback and all(r.device_kind == "cpu-int8" for r in fallback)


def test_tensor_parallel_groups_devices_of_one_node():
    topology = build([{"name": "k", "device": "A100", "nodes": 2, "devices_per_node": 8, "tensor_parallel": 4}])
    assert len(topology.replicas) == 4
    first = topology.replicas[0]
    assert first.devices == tuple(f"p/r0/z/k/node-0/gpu-{d}" for d in range(4))
    assert first.name == "p/r0/z/k/node-0/replica-0"


def test_failure_domains_at_every_level():
    topology = build([{"name": "k", "count": 2, "device": "H100", "nodes": 2, "devices_per_node": 4, "tensor_parallel": 2}], regions=2)
    # 2 regions x 2 racks x 2 nodes x 2 replicas
    assert len(topology.replicas) == 16
    assert topology.domain_replicas("p/r0/z/k-0/node-1/gpu-3") == [3]  # one device kills its TP group
    assert topology.domain_replicas("p/r0/z/k-0/node-1") == [2, 3]
    assert topology.domain_replicas("p/r0/z/k-1") == [4, 5, 6, 7]
    assert topology.domain_replicas("p/r1") == list(range(8, 16))
    assert topology.domain_replicas("p") == list(range(16))
    assert topology.failure_domains("rack") == ["p/r0/z/k-0", "p/r0/z/k-1", "p/r1/z/k-0", "p/r1/z/k-1"]
    assert len(topology.failure_domains("device")) == 32
    assert topology.level("p/r1/z") == "zone"


def test_unknown_paths_are_named_with_suggestions():
    topology = catalog("gpu-region")
    with pytest.raises(KeyError, match=r"'aws/us-east-2'.*did you mean 'aws/us-east-1'"):
        topology.domain_replicas("aws/us-east-2")
    with pytest.raises(ValueError, match="unknown level"):
        topology.failure_domains("galaxy")


def test_rtt_is_symmetric_shortest_path_or_default():
    rack = [{"name": "k", "device": "L4", "devices_per_node": 1}]
    links = [
        {"between": ["p/r0", "p/r1"], "rtt": "10ms"},
        {"between": ["p/r1", "p/r2"], "rtt": "15ms"},
        {"between": ["p/r0", "p/r2"], "rtt": "90ms"},
    ]
    topology = build(rack, links, regions=4)
    assert topology.rtt("p/r0", "p/r0") == pytest.approx(0.001)
    assert topology.rtt("p/r0", "p/r2") == pytest.approx(0.025)  # two hops beat the direct 90 ms link
    assert topology.rtt("p/r2", "p/r0") == topology.rtt("p/r0", "p/r2")
    assert topology.rtt("p/r0", "p/r3") == pytest.approx(0.3)  # unlinked: the default


def test_duplicate_rack_names_are_a_spec_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="duplicate rack"):
        build([{"name": "k", "device": "L4"}, {"name": "k", "device": "L4"}])
