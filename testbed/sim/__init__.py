"""The simulation plane: SimPy driving the shared policies over a topology."""

from testbed.sim.engine import ConservationError, simulate

__all__ = ["ConservationError", "simulate"]
