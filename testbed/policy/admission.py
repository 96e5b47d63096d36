"""Admission control: refuse work early rather than let every request miss its deadline.

Two rules, checked when a request arrives and a replica has been chosen for it:

* **Load shedding by priority** — ``shed_thresholds`` maps a priority level to a fleet load
  share; above it, requests of that priority *and every less important one* (larger numbers)
  are shed. With ``{1: 0.9, 2: 0.8}``, priority 2 is shed above 80% load, priority 1 above 90%,
  and priority 0 never: under overload the least important traffic goes first, which keeps the
  important traffic inside its SLA (Google SRE book, "Handling Overload").
* **Bounded queues** — a replica that already holds ``max_queue_per_replica`` requests takes no
  more; a request that would only wait past its deadline is better refused at once.
"""

from __future__ import annotations

from testbed.spec import AdmissionSpec


class AdmissionController:
    def __init__(
        self, max_queue_per_replica: int | None = None, shed_thresholds: dict[int, float] | None = None
    ) -> None:
        self.max_queue = max_queue_per_replica
        self.thresholds = dict(shed_thresholds or {})
        self._limit: dict[int, float] = {}  # priority -> lowest threshold that applies to it

    @classmethod
    def from_spec(cls, spec: AdmissionSpec) -> AdmissionController:
        return cls(spec.max_queue_per_replica, spec.shed_thresholds)

    def shed_limit(self, priority: int) -> float:
        """Fleet load above which ``priority`` is shed: the lowest threshold of any level <= it."""
        limit = self._limit.get(priority)
        if limit is None:
            limit = min((t for level, t in self.thresholds.items() if level <= priority), default=float("inf"))
            self._limit[priority] = limit
        return limit

    def admit(self, priority: int, fleet_load: float, replica_queue: int) -> str | None:
        """None to admit, else the reason for refusing: "shed_priority" or "queue_full"."""
        if fleet_load > self.shed_limit(priority):
            return "shed_priority"
        if self.max_queue is not None and replica_queue >= self.max_queue:
            return "queue_full"
        return None
