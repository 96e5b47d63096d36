"""The first-scenario guide's suite (docs/guides/first-scenario.md): what must hold in my region,
and what is known to break. Run it with ``pytest examples/first-scenario``."""

from __future__ import annotations

from testbed.pytest_plugin import assert_sla, assert_sla_fails


def test_steady_state_meets_every_sla(run_scenario):
    assert_sla(run_scenario("steady.yaml"))


def test_losing_a_zone_saturates_the_other_but_loses_no_request(run_scenario):
    result = run_scenario("zone-outage.yaml")
    assert_sla_fails(result, objective="e2e")  # the known limit: two replicas cannot carry 10 req/s
    assert_sla(result, only=["availability", "ttft"])  # ... but retries and health checks save every request
