"""The metrics every campaign row reports, and their units: a leaf both the campaign spec (to check
``compare``) and the runner (to fill rows) read."""

from __future__ import annotations

from testbed.sla import UNITS
from testbed.spec import Scenario

STANDARD_METRICS = ("availability", "error_rate", "shed_rate", "ttft_p50", "ttft_p99", "tpot_p99", "e2e_p99")


def metric_names(scenario: Scenario) -> list[str]:
    """The metrics a row reports: the standard ones and each SLA objective's observed value."""
    return list(metric_units(scenario))


def metric_units(scenario: Scenario) -> dict[str, str]:
    """Each reported metric and its unit (as :data:`testbed.sla.UNITS` names them)."""
    units = {name: "share" if name.endswith("rate") or name == "availability" else "s" for name in STANDARD_METRICS}
    units.update({f"sla: {o.label}": UNITS[o.metric] for o in scenario.sla})
    return units
