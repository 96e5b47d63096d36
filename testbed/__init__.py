"""testbed: a chaos and resilience testbed for LLM inference serving."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Scenario", "run_campaign", "simulate"]


def __getattr__(name: str) -> Any:
    """``testbed.Scenario`` and ``testbed.simulate`` without importing the simulator eagerly.

    The pytest plugin imports this package in every test session; keeping the import light
    keeps unrelated test runs fast.
    """
    if name == "Scenario":
        from testbed.spec import Scenario

        return Scenario
    if name == "simulate":
        from testbed.sim import simulate

        return simulate
    if name == "run_campaign":
        from testbed.campaign import run_campaign

        return run_campaign
    raise AttributeError(f"module 'testbed' has no attribute {name!r}")
