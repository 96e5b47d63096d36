"""Refactors keep records byte-identical: catalog scenarios, shortened and thinned to a tenth of
their load to stay cheap, must write the very ``requests.parquet`` they wrote before.

The hashes were taken from the code before the shared draw, tail and fault state
(commit b7ffac1). A change that *means* to change records (a new model, a new draw) regenerates
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
EXPECTED = {  # scenario: (duration, sha256 of requests.parquet)
    "gray-failure": (90.0, "2e015740107fa51b42fc2ad2f760c8e488d08d32463179f155b39ce3063f2659"),
    "region-partition": (150.0, "4010115ea46296ad3712c4ae147078bb3c4ed03081795e3f29057cbbd8a70fd7"),
    "thermal-throttling": (90.0, "2fccbd69596d2f38b32478726e5ff8218daf710ca00d210770208019cf9e3a79"),
}


def shrunk(name: str, duration: float) -> Scenario:
    spec = Scenario.from_yaml(FAULTS / f"{name}.yaml")
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
