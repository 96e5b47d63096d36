"""The fleet graph: replica placement, failure domains and network distances."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
from pydantic import ValidationError

from testbed.spec import TopologySpec, load_spec
from testbed.topology import Topology

ROOT = Path(__file__).resolve().parents[1]
CATALOG = sorted((ROOT / "topologies").glob("*.yaml"))


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


def implied(spec: TopologySpec) -> tuple[int, int]:
    """(devices, replicas) counted straight from the spec, independently of the graph."""
    racks = [k for p in spec.providers for r in p.regions for z in r.zones for k in z.racks]
    devices = sum(k.count * k.nodes * k.devices_per_node for k in racks)
    replicas = sum(k.count * k.nodes * k.devices_per_node // k.tensor_parallel for k in racks)
    return devices, replicas


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.stem)
def test_every_catalog_file_validates_and_builds_what_its_spec_implies(path):
    spec = load_spec(path, TopologySpec)
    topology = Topology.from_spec(spec)
    devices, replicas = implied(spec)
    assert topology.device_count == devices
    assert len(topology.replicas) == replicas
    assert [r.index for r in topology.replicas] == list(range(replicas))
    assert topology.regions == spec.region_paths()
    assert set(topology.network.nodes) == set(topology.regions)
    assert nx.is_arborescence(topology.graph)
    assert path.read_text().startswith("#"), "each catalog file opens with a comment saying what it models"


@pytest.mark.parametrize("path", CATALOG, ids=lambda p: p.stem)
def test_domain_replicas_are_exactly_the_replicas_with_a_device_in_the_subtree(path):
    topology = Topology.from_spec(load_spec(path, TopologySpec))
    for level in ("provider", "region", "zone", "rack", "node"):
        for domain in topology.failure_domains(level):
            inside = [r.index for r in topology.replicas if any(d.startswith(domain + "/") for d in r.devices)]
            assert topology.domain_replicas(domain) == inside
    for device in topology.failure_domains("device"):
        assert topology.domain_replicas(device) == [r.index for r in topology.replicas if device in r.devices]
    for region in topology.regions:
        assert topology.replicas_in_region(region) == [r.index for r in topology.replicas if r.region == region]


@pytest.mark.parametrize(
    ("name", "replicas", "regions"),
    [("laptop", 2, 1), ("gpu-region", 128, 1), ("multi-cloud", 104, 4), ("fleet-1k", 1152, 4)],
)
def test_catalog_topologies_have_the_sizes_their_comments_promise(name, replicas, regions):
    topology = catalog(name)
    assert len(topology.replicas) == replicas
    assert len(topology.regions) == regions


def test_the_fleet_has_a_thousand_gpus_in_three_or_more_regions():
    fleet = catalog("fleet-1k")
    assert fleet.device_count >= 1000
    assert len({r.region for r in fleet.replicas}) >= 3
    assert {len(fleet.failure_domains(level)) for level in ("node", "rack")} == {144, 18}
    assert all(fleet.graph.nodes[d]["kind"] in ("H100", "A100") for d in fleet.failure_domains("device"))


def test_multi_cloud_has_two_providers_and_a_cpu_fallback_tier():
    topology = catalog("multi-cloud")
    assert {r.provider for r in topology.replicas} == {"aws", "gcp", "onprem"}
    fallback = [r for r in topology.replicas if r.tier == "fallback"]
    assert fallback and all(r.device_kind == "cpu-int8" for r in fallback)
    assert topology.graph.nodes["onprem/cpu-fallback"]["tier"] == "fallback"
    assert topology.network.edges["aws/us-east-1", "gcp/us-central1"]["bandwidth"] == pytest.approx(1.25e9)


def test_laptop_replicas_are_single_cpu_hosts_named_like_the_spec():
    topology = catalog("laptop")
    assert [r.name for r in topology.replicas] == [f"local/dev/z0/host/node-{n}/replica-0" for n in range(2)]
    assert topology.replicas[1].devices == ("local/dev/z0/host/node-1/cpu-0",)
    assert topology.replicas[1].rack == "local/dev/z0/host"  # count 1 keeps the rack's own name


def test_tensor_parallel_groups_devices_of_one_node():
    topology = build([{"name": "k", "device": "A100", "nodes": 2, "devices_per_node": 8, "tensor_parallel": 4}])
    assert len(topology.replicas) == 4
    first, last = topology.replicas[0], topology.replicas[-1]
    assert first.devices == tuple(f"p/r0/z/k/node-0/gpu-{d}" for d in range(4))
    assert first.name == "p/r0/z/k/node-0/replica-0"
    assert last.devices == tuple(f"p/r0/z/k/node-1/gpu-{d}" for d in range(4, 8))
    assert (last.node, last.tensor_parallel, last.device_kind) == ("p/r0/z/k/node-1", 4, "A100")


def test_failure_domains_at_every_level():
    topology = build(
        [{"name": "k", "count": 2, "device": "H100", "nodes": 2, "devices_per_node": 4, "tensor_parallel": 2}], regions=2
    )
    # 2 regions x 2 racks x 2 nodes x 2 replicas
    assert len(topology.replicas) == 16
    assert topology.domain_replicas("p/r0/z/k-0/node-1/gpu-3") == [3]  # one device kills its TP group
    assert topology.domain_replicas("p/r0/z/k-0/node-1/gpu-2") == [3]
    assert topology.domain_replicas("p/r0/z/k-0/node-1") == [2, 3]
    assert topology.domain_replicas("p/r0/z/k-1") == [4, 5, 6, 7]
    assert topology.domain_replicas("p/r1/z") == list(range(8, 16))
    assert topology.domain_replicas("p/r1") == list(range(8, 16))
    assert topology.replicas_in_region("p/r1") == list(range(8, 16))
    assert topology.domain_replicas("p") == list(range(16))
    assert topology.domain_replicas("fleet") == list(range(16))
    assert topology.failure_domains("rack") == ["p/r0/z/k-0", "p/r0/z/k-1", "p/r1/z/k-0", "p/r1/z/k-1"]
    assert topology.failure_domains("provider") == ["p"]
    assert len(topology.failure_domains("device")) == 32
    assert topology.level("p/r1/z") == "zone"


def test_domain_replicas_hands_out_copies():
    topology = build([{"name": "k", "device": "L4", "devices_per_node": 2}])
    topology.domain_replicas("p").clear()
    assert topology.domain_replicas("p") == [0, 1]


def test_unknown_paths_are_named_with_suggestions():
    topology = catalog("gpu-region")
    assert topology.resolve("aws/us-east-1/use1-az2/rack-1") == "aws/us-east-1/use1-az2/rack-1"
    with pytest.raises(KeyError, match=r"'aws/us-east-2'.*did you mean 'aws/us-east-1'"):
        topology.domain_replicas("aws/us-east-2")
    with pytest.raises(KeyError, match=r"'aws/us-east-1/use1-az1/rack-0/node-0/gpu-9'.*did you mean"):
        topology.resolve("aws/us-east-1/use1-az1/rack-0/node-0/gpu-9")
    with pytest.raises(KeyError, match=r"'aws/us-east-1/use1-az1'.*did you mean 'aws/us-east-1'"):
        topology.replicas_in_region("aws/us-east-1/use1-az1")  # a zone, not a region
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
    with pytest.raises(KeyError, match=r"'p/r9'"):
        topology.rtt("p/r0", "p/r9")  # a typo is an error, not a far-away region


def test_multi_cloud_rtts_are_realistic():
    topology = catalog("multi-cloud")
    assert topology.rtt("aws/us-east-1", "gcp/us-central1") == pytest.approx(0.025)
    assert 0.070 <= topology.rtt("aws/us-east-1", "aws/eu-west-1") <= 0.090
    assert 0.070 <= topology.rtt("gcp/us-central1", "aws/eu-west-1") <= 0.110


def test_duplicate_rack_names_are_a_spec_error():
    with pytest.raises(ValidationError, match="duplicate rack"):
        build([{"name": "k", "device": "L4"}, {"name": "k", "device": "L4"}])


def test_names_with_slashes_cannot_alias_another_path():
    def region(name: str, zone: str) -> dict:
        return {"name": name, "zones": [{"name": zone, "racks": [{"name": "k", "device": "L4"}]}]}

    # zone "a/b" of region "r" and zone "b" of region "r/a" would both be "p/r/a/b"
    spec = {"name": "t", "providers": [{"name": "p", "regions": [region("r", "a/b"), region("r/a", "b")]}]}
    with pytest.raises(ValueError, match="should match pattern"):  # the spec refuses '/' in names
        TopologySpec.model_validate(spec)
