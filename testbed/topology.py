"""The fleet as graphs: what contains what (failure domains), and how regions are linked.

``graph`` is the containment tree — fleet → provider → region → zone → rack → node → device —
whose every subtree is a failure domain: a rack losing power takes down every replica with a
device below it. Graph nodes are slash-joined paths ("aws/us-east-1/a/rack-0/node-3/gpu-5"), so a
fault names its target with one string. Every node has attribute ``level`` (one of :data:`LEVELS`);
regions also carry ``tier`` and devices ``kind`` (the device kind). Replicas are not graph nodes: they are groups of
``tensor_parallel`` devices of one node, numbered densely in spec order so that the simulator can
keep per-replica state in arrays. ``network`` joins region paths by links with attributes ``rtt``
(seconds) and ``bandwidth`` (bytes/s or None); the RTT between two regions is the shortest path
over those links.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import networkx as nx

from testbed.spec.topology import TopologySpec  # not the package: testbed.spec builds this graph to check fault targets

LEVELS = ("fleet", "provider", "region", "zone", "rack", "node", "device")
ROOT = "fleet"


@dataclass(frozen=True, slots=True)
class Replica:
    """One model replica and where it lives."""

    index: int
    name: str
    provider: str
    region: str
    zone: str
    rack: str
    node: str
    devices: tuple[str, ...]
    device_kind: str
    tensor_parallel: int
    tier: str
    pool: str = "default"
    model: str | None = None  # a rack's own model; None serves the topology's


class Topology:
    """Built from a :class:`TopologySpec`; answers "what fails together" and "how far apart"."""

    def __init__(self, spec: TopologySpec, graph: nx.DiGraph, replicas: list[Replica]) -> None:
        self.spec = spec
        self.graph = graph
        self.replicas = replicas
        self.regions = spec.region_paths()
        self.network = nx.Graph()
        self.network.add_nodes_from(self.regions)
        for link in spec.links:
            self.network.add_edge(*link.between, rtt=link.rtt, bandwidth=link.bandwidth)
        self._rtt: dict[tuple[str, str], float] = {}
        self._domains: dict[str, list[str]] = {level: [] for level in LEVELS}
        for path, level in graph.nodes(data="level"):
            self._domains[level].append(path)
        # Every path maps to the replicas below it, so a fault's blast radius is one lookup.
        self._below: dict[str, list[int]] = {}
        for replica in replicas:
            for path in (replica.provider, replica.region, replica.zone, replica.rack, replica.node, *replica.devices):
                self._below.setdefault(path, []).append(replica.index)
        self._below[ROOT] = [r.index for r in replicas]

    @classmethod
    def from_spec(cls, spec: TopologySpec) -> Topology:
        """Walk the spec in order; the walk order is the replica numbering.

        Devices of ``cpu-*`` kinds are named ``cpu-N`` and all others ``gpu-N``, so that paths
        read naturally in fault specs and records.
        """
        graph = nx.DiGraph()
        graph.add_node(ROOT, level="fleet")
        replicas: list[Replica] = []
        for provider in spec.providers:
            p = _child(graph, ROOT, provider.name, "provider")
            for region in provider.regions:
                r = _child(graph, p, region.name, "region", tier=region.tier)
                for zone in region.zones:
                    z = _child(graph, r, zone.name, "zone")
                    for rack_spec in zone.racks:
                        for copy in range(rack_spec.count):
                            name = rack_spec.name if rack_spec.count == 1 else f"{rack_spec.name}-{copy}"
                            rack = _child(graph, z, name, "rack")
                            prefix = "cpu" if rack_spec.device.startswith("cpu") else "gpu"
                            for n in range(rack_spec.nodes):
                                node = _child(graph, rack, f"node-{n}", "node")
                                devices = [
                                    _child(graph, node, f"{prefix}-{d}", "device", kind=rack_spec.device)
                                    for d in range(rack_spec.devices_per_node)
                                ]
                                tp = rack_spec.tensor_parallel
                                for k in range(0, len(devices), tp):
                                    replicas.append(
                                        Replica(
                                            index=len(replicas),
                                            name=f"{node}/replica-{k // tp}",
                                            provider=p,
                                            region=r,
                                            zone=z,
                                            rack=rack,
                                            node=node,
                                            devices=tuple(devices[k : k + tp]),
                                            device_kind=rack_spec.device,
                                            tensor_parallel=tp,
                                            tier=region.tier,
                                            pool=rack_spec.pool,
                                            model=rack_spec.model,
                                        )
                                    )
        return cls(spec, graph, replicas)

    @property
    def device_count(self) -> int:
        return len(self._domains["device"])

    def rtt(self, a: str, b: str) -> float:
        """Round-trip time between two regions: shortest path over links, else the default.

        Called for every request, so answers are cached; unknown regions are a KeyError rather
        than the default, because a misspelt region would otherwise look merely far away.
        """
        key = (a, b) if a <= b else (b, a)
        cached = self._rtt.get(key)
        if cached is None:
            for region in key:
                if region not in self.network:
                    raise self._unknown(region, "region", self.regions)
            if a == b:
                cached = self.spec.intra_region_rtt
            else:
                try:
                    cached = nx.shortest_path_length(self.network, a, b, weight="rtt")
                except nx.NetworkXNoPath:
                    cached = self.spec.default_rtt
            self._rtt[key] = cached
        return cached

    def resolve(self, path: str) -> str:
        """``path`` if it names a part of the fleet; else KeyError suggesting close matches."""
        if path in self.graph:
            return path
        raise self._unknown(path, "part", list(self.graph))

    def _unknown(self, path: str, what: str, known: list[str]) -> KeyError:
        """The error for a misspelt path: names it and suggests the closest known ones."""
        close = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return KeyError(f"no {what} of topology {self.spec.name!r} is named {path!r}{hint}")

    def domain_replicas(self, path: str) -> list[int]:
        """Replicas that fail when the subtree at ``path`` fails (any of their devices inside it)."""
        return list(self._below[self.resolve(path)])

    def failure_domains(self, level: str) -> list[str]:
        """Every path at ``level`` (provider, region, zone, rack, node or device), in spec order."""
        if level not in self._domains:
            raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
        return list(self._domains[level])

    def replicas_in_region(self, region: str) -> list[int]:
        """Replicas serving from ``region`` (a "provider/region" path)."""
        if region not in self.network:
            raise self._unknown(region, "region", self.regions)
        return list(self._below[region])

    def level(self, path: str) -> str:
        """Which level of the containment tree ``path`` is at, e.g. "rack"."""
        return self.graph.nodes[self.resolve(path)]["level"]


def _child(graph: nx.DiGraph, parent: str, name: str, level: str, **attrs: object) -> str:
    """Add ``parent/name`` under ``parent``; names are paths so that they are unique fleet-wide.

    The spec keeps sibling names unique and free of "/", so paths cannot collide.
    """
    path = name if parent == ROOT else f"{parent}/{name}"
    graph.add_node(path, level=level, **attrs)
    graph.add_edge(parent, path)
    return path
