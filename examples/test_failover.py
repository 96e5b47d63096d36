"""A small resilience suite to copy: does a region ride out node crashes?

Run it with ``pytest examples/`` (add ``--testbed-seed N`` to try another seed). The testbed
pytest plugin is installed with testbed and gives the fixtures ``run_scenario`` and
``scenario_loader``, the ``chaos`` marker, ``assert_sla`` and ``assert_sla_fails``; when an SLA
fails, the message lists each violated objective and the ``testbed run`` command that
reproduces the run, and the run's report.html is kept under ``.testbed/`` (``--testbed-artifacts``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from testbed.pytest_plugin import assert_sla, assert_sla_fails, fault_schedules
from testbed.spec import Scenario

HERE = Path(__file__).parent
TWO = Scenario.from_yaml(HERE / "two-replica-region.yaml")
NODE_0 = "acme/eu-1/a/rack-1/node-0"


def test_steady_state_meets_every_sla(run_scenario):
    assert_sla(run_scenario("two-replica-region.yaml"))


@pytest.mark.chaos(faults=[{"kind": "node_crash", "target": NODE_0, "at": "20s", "duration": "30s"}])
def test_one_node_crash_is_ridden_out(run_scenario):
    result = run_scenario("two-replica-region.yaml")
    assert_sla(result)
    assert (result.requests["retries"] > 0).any()  # the crash was felt, and retries absorbed it


@pytest.mark.chaos(file="faults/both-nodes-down.yaml")
def test_losing_both_nodes_breaks_availability_but_not_the_bigger_region(run_scenario):
    assert_sla_fails(run_scenario("two-replica-region.yaml"), objective="availability")
    # The same two crashes leave two of four nodes in the bigger region: every SLA holds.
    assert_sla(run_scenario("four-replica-region.yaml"))


# Property: whichever single node or accelerator fails, whenever and for however long (within the
# run), availability holds. Hypothesis draws the schedules; a failure is shrunk to the smallest.
# run_scenario is a function-scoped fixture, safe to share between examples: it keeps no state.
@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=fault_schedules(TWO, max_faults=1, kinds=["node_crash", "accelerator_failure"]))
def test_any_single_replica_failure_keeps_availability(run_scenario, schedule):
    assert_sla(run_scenario(TWO, faults=schedule), only=["availability"])
