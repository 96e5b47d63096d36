"""The degradation ladder: under overload or lost capacity, serve worse answers rather than none.

Rules:

* The ladder's steps are ordered from mildest to harshest (say: quantize the pool, then cap
  ``max_tokens``, then send a class to a smaller model). Level ``k`` means the first ``k`` steps
  are in force together.
* The load signal is in-flight requests over the slots of the pool's *serving* replicas, so a
  region lost or a cold start still under way raises it exactly as a burst does.
* Climb one level once the load has stayed above ``enter_load`` for ``hold`` seconds; descend
  one level once it has stayed below ``exit_load`` for ``hold``. ``exit_load < enter_load`` is
  the hysteresis that keeps the ladder from flapping, and one level per ``hold`` keeps it from
  jumping to the harshest step on one bad reading.
* Every request that a step changed is flagged ``degraded`` on its record, so an SLA can bound
  the share of degraded answers (``metric: degraded_share``).
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.spec import DegradationSpec, DegradationStep


@dataclass(frozen=True, slots=True)
class LadderMove:
    at: float
    level: int
    load: float


class DegradationLadder:
    """One pool's ladder (see module docstring)."""

    def __init__(self, steps: list[DegradationStep], enter_load: float, exit_load: float, hold: float) -> None:
        if not exit_load < enter_load:
            raise ValueError("exit_load must be below enter_load")
        self.steps = list(steps)
        self.enter_load = enter_load
        self.exit_load = exit_load
        self.hold = hold
        self.level = 0
        self._over_since: float | None = None
        self._under_since: float | None = None

    @classmethod
    def from_spec(cls, spec: DegradationSpec) -> DegradationLadder:
        return cls(spec.steps, spec.enter_load, spec.exit_load, spec.hold)

    @property
    def active(self) -> list[DegradationStep]:
        """The steps in force now."""
        return self.steps[: self.level]

    def observe(self, now: float, load: float) -> LadderMove | None:
        """A load reading; returns the move when the level changes."""
        if load > self.enter_load and self.level < len(self.steps):
            self._under_since = None
            self._over_since = now if self._over_since is None else self._over_since
            if now - self._over_since >= self.hold:
                return self._move(now, +1, load)
        elif load < self.exit_load and self.level > 0:
            self._over_since = None
            self._under_since = now if self._under_since is None else self._under_since
            if now - self._under_since >= self.hold:
                return self._move(now, -1, load)
        else:
            self._over_since = self._under_since = None
        return None

    def _move(self, now: float, step: int, load: float) -> LadderMove:
        self.level += step
        # The next level needs another full hold, counted from this move.
        self._over_since, self._under_since = (now, None) if step > 0 else (None, now)
        return LadderMove(now, self.level, load)
