"""Refactors keep records byte-identical: catalog scenarios, shortened and thinned to a tenth of
their load to stay cheap, must write the very ``requests.parquet`` they wrote before.

The hashes were taken after the shared draw, tail and fault state (which left records
unchanged) and the one outcome vocabulary, router exclusion and staggered probes (which changed
them on purpose: a ``client_error`` status category, refusals routed elsewhere, probe times),
then retaken when the records gained the ``cached_tokens`` column (0 with prefix caching off;
every other column's bytes were checked unchanged by hashing the table without it).
``cache-cold-failover`` pins a run with prefix caching, prefix structure and the cache-aware
scorer (taken when it was added); ``agent-adaptation-agent`` (agent sessions) and
``gray-failure+hedging`` (hedges around a hung node; ``region-partition`` has the retries) were pinned before issue #17's
cache and routing indexes were merged, to hold those to the code before them. A change that *means* to change records (a new model, a new draw) regenerates
them on purpose — run this file with ``TESTBED_PRINT_HASHES=1`` and paste — and says so in its
commit; any other change that moves them is a bug.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from testbed.sim import simulate
from testbed.spec import Scenario

FAULTS = Path(__file__).resolve().parent.parent / "faults"
EXPECTED = {  # scenario[+variant]: (duration, sha256 of requests.parquet)
    "agent-adaptation-agent": (180.0, "cda8db7f1ec9bf5d3e27e2dc6baae29d936c127e5e273b11247e2433fea9f987"),
    "gray-failure+hedging": (90.0, "e5ad0affa0e712bf3b93ca8d4a00fa939e021a715a6c2cb35c4795bdacef93bb"),
    "cache-cold-failover+prefix_affinity": (240.0, "da04ab7b60887058ff85c5c41d44c7c787a781eae7960feca94f18d42ea4ea61"),
    "cache-cold-failover": (240.0, "aa6be5bb725a0093133f59c6c8a27de3f16d932fd32e5661c7c8282379a23796"),
    "gray-failure": (90.0, "d935444d976498c21743a7fa9752ea894904b74a7fb53384eba45e9f5ed99956"),
    "region-partition": (150.0, "3a0c5c449305ae5ed5a91c67d10b0194f2b353eee82197f41d67dbc9b8139909"),
    "thermal-throttling": (90.0, "286746e4e868178aba52409d762709a4ba2b10a370d257395eb9833866134180"),
}


# Variants: the scenario's serving with these fields replaced.
SERVING = {
    "hedging": {"hedging": {"enabled": True, "delay": "250ms"}},
    "prefix_affinity": {"routing": {"policy": "prefix_affinity"}},
}


def shrunk(label: str, duration: float) -> Scenario:
    name, _, variant = label.partition("+")
    spec = Scenario.from_yaml(FAULTS / f"{name}.yaml")
    if variant:
        serving = spec.serving.model_dump() | SERVING[variant]
        spec = spec.model_copy(update={"serving": type(spec.serving).model_validate(serving)})
    arrival = spec.workload.arrival.model_copy(update={"rate": spec.workload.arrival.rate / 10})
    return spec.model_copy(update={"duration": duration, "workload": spec.workload.model_copy(update={"arrival": arrival})})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_requests_parquet_is_unchanged(name: str) -> None:
    duration, expected = EXPECTED[name]
    result = simulate(shrunk(name, duration))
    assert result.requests["fault_overlap"].any()  # the fault is inside the shortened run
    buffer = io.BytesIO()
    result.requests.to_parquet(buffer, index=False)  # exactly as the run writes requests.parquet
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    if os.environ.get("TESTBED_PRINT_HASHES"):
        print(f'"{name}": ({duration}, "{digest}"),')
    assert digest == expected
