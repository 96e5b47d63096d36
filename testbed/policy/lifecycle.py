"""A replica's life from request to gone, and how long each step of bringing it up takes.

Phases, in order (a replica may only move forward, or fail to ``gone`` from any phase):

    requested -> provisioning -> loading -> warming -> serving -> draining -> gone

* **requested** — wanted, but no device granted yet (quota exhausted, or a stockout).
* **provisioning** — the provider hands over a node and the serving image is pulled.
* **loading** — the weights stream from storage: model bytes over storage bandwidth.
* **warming** — CUDA context, graph capture, first batches.
* **serving** — routable.
* **draining** — takes no new requests; running ones finish (or migrate at the drain timeout).
* **gone** — its devices are released and no longer billed.

A *new* replica pays the whole chain (:meth:`LifecycleTimings.cold_start`). A *repaired* one
whose node came back keeps its node and its cached image but reloads the weights and warms up
again (:meth:`LifecycleTimings.restart`). The default constants and their sources live in
:mod:`testbed.cloud`. A calibrated profile that measured the replica's start
(``testbed calibrate``: process start, model load, warm-up) replaces the modelled *loading* and
*warming* phases with the measurement; a scenario's ``elastic.lifecycle`` overrides either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from testbed import cloud
from testbed.spec import LifecycleSpec

PHASES = ("requested", "provisioning", "loading", "warming", "serving", "draining", "gone")
STARTING = ("provisioning", "loading", "warming")


@dataclass(frozen=True, slots=True)
class LifecycleTimings:
    """Seconds each start-up phase takes for one replica."""

    provisioning: float  # node acquisition plus image pull
    loading: float
    warmup: float
    drain_timeout: float = cloud.DRAIN_TIMEOUT_SECONDS

    @classmethod
    def for_replica(
        cls,
        provider: str,
        weight_bytes: float,
        cpu_host: bool,
        overrides: LifecycleSpec | None = None,
        measured: tuple[float, float] | None = None,
    ) -> LifecycleTimings:
        """The chain for a replica of ``weight_bytes`` on ``provider``.

        ``measured`` is a calibrated start, (seconds from process start to serving, of which the
        warm-up): it gives *loading* (all but the warm-up: process, libraries, weights) and
        *warming* in place of the modelled weights-over-bandwidth and warm-up constants. The
        scenario's overrides win over both.
        """
        spec = overrides or LifecycleSpec()
        node = cloud.provisioning_seconds(provider) if spec.provisioning is None else spec.provisioning
        pull = cloud.IMAGE_PULL_SECONDS if spec.image_pull is None else spec.image_pull
        if spec.storage_bandwidth is not None:
            loading = weight_bytes / spec.storage_bandwidth
        elif measured is not None:
            loading = max(0.0, measured[0] - measured[1])
        else:
            loading = weight_bytes / cloud.STORAGE_BANDWIDTH
        if spec.warmup is not None:
            warmup = spec.warmup
        elif measured is not None:
            warmup = measured[1]
        else:
            warmup = cloud.warmup_seconds(cpu_host)
        drain = cloud.DRAIN_TIMEOUT_SECONDS if spec.drain_timeout is None else spec.drain_timeout
        return cls(node + pull, loading, warmup, drain)

    def cold_start(self) -> float:
        """A new replica: node, image, weights, warm-up."""
        return self.provisioning + self.loading + self.warmup

    def restart(self) -> float:
        """A replica whose node was repaired: weights and warm-up again, node and image kept."""
        return self.loading + self.warmup

    def duration(self, phase: str) -> float:
        return {"provisioning": self.provisioning, "loading": self.loading, "warming": self.warmup}[phase]


@dataclass(slots=True)
class ReplicaLifecycle:
    """One replica's phase and the times it entered each phase (for records and billing)."""

    timings: LifecycleTimings
    requested_at: float = 0.0
    phase: str = "requested"
    history: list[tuple[float, str]] = field(default_factory=list)
    due: float | None = None  # when the current start-up phase ends

    def __post_init__(self) -> None:
        if not self.history:
            self.history.append((self.requested_at, "requested"))

    def granted(self, now: float) -> float:
        """Capacity granted: provisioning starts; returns when it ends."""
        self._move("requested", "provisioning", now)
        return self._schedule(now)

    def on_timer(self, now: float) -> float | None:
        """The current start-up phase ended: the next begins. Returns its end, or None once serving."""
        if self.phase not in STARTING:
            raise ValueError(f"no start-up phase is running (phase {self.phase})")
        following = PHASES[PHASES.index(self.phase) + 1]
        self._move(self.phase, following, now)
        return None if following == "serving" else self._schedule(now)

    def drain(self, now: float) -> float:
        """Stop taking requests; returns the drain deadline."""
        self._move("serving", "draining", now)
        return now + self.timings.drain_timeout

    def gone(self, now: float) -> None:
        """Released: from draining, or a failure in any phase."""
        if self.phase == "gone":
            raise ValueError("the replica is already gone")
        self.phase = "gone"
        self.due = None
        self.history.append((now, "gone"))

    @property
    def billed_since(self) -> float | None:
        """When its devices were granted (billing starts with the node), None if never."""
        return next((t for t, phase in self.history if phase == "provisioning"), None)

    def _move(self, expected: str, to: str, now: float) -> None:
        if self.phase != expected:
            raise ValueError(f"cannot go to {to} from {self.phase} (expected {expected})")
        self.phase = to
        self.history.append((now, to))

    def _schedule(self, now: float) -> float:
        self.due = now + self.timings.duration(self.phase)
        return self.due
