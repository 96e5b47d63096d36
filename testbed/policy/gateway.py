"""The gateway's decisions for one request's life: admit, route, retry, hedge, give up.

:class:`Gateway` composes the other policies (router, retry and its budget, hedging, circuit
breakers, outlier ejection, health checks, admission) into one sans-IO state machine. A driver
feeds it events — a request arrived, an attempt produced its first token or ended, a timer
fired, a health probe answered, the deadline passed — and carries out the actions it returns:

* :class:`Dispatch` — send attempt ``attempt`` of request ``rid`` to replica ``replica``;
* :class:`Cancel` — stop that attempt's work (a hedge lost, or the request is over);
* :class:`Wake` — call :meth:`Gateway.on_timer` for ``rid`` at ``at`` (a retry's backoff, a hedge);
* :class:`Finish` — the request ends with ``status``.

The simulator drives it with SimPy time and the live gateway with asyncio and the wall clock;
neither re-implements any of these decisions. Replica availability as the router sees it is the
gateway's *belief* — healthy by its checks, not ejected, breaker not open, no refused
connection since its last passing probe — never the ground truth, because a real gateway only
learns of a failure through failed requests and probes.

Two rules close the retry black hole (a dead replica has no outstanding work, so load-aware
routers like it best):

* **Exclusion.** Each attempt is routed with an exclusion: the replicas this request already
  tried, plus any whose breaker refuses it. Routers never return an excluded replica while
  another is available; only when every available replica was tried does a retry go back to
  one of them (Envoy's previous-hosts retry predicate).
* **Passive health.** An attempt that could not connect (``unavailable``: refused, or no answer
  within the connect timeout) marks its replica unavailable at once, until a health probe
  passes (with health checks off: for ``circuit_breaker.open_for``), as Envoy's passive health
  checking does. Waiting for the breaker's consecutive failures or the probes' thresholds
  would send every request in between to a replica known to be gone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from testbed.policy.admission import AdmissionController
from testbed.policy.breaker import CLOSED, CircuitBreaker, OutlierDetector
from testbed.policy import cache_routing  # noqa: F401  (registers the cache-aware routers)
from testbed.policy.gateway_queue import GatewayQueue
from testbed.policy.health import HealthChecker
from testbed.policy.hedging import HedgePolicy
from testbed.policy.outcomes import REPLICA_SUCCESS, Outcome, Status
from testbed.policy.prefix_cache import Prefix
from testbed.policy.retry import RetryBudget, RetryPolicy
from testbed.policy.routing import LoadHeap, Router, Watched, make_router
from testbed.spec import ServingSpec

# How an attempt may end; what each means for breakers, retries and the record is stated in
# testbed.policy.outcomes, the one vocabulary both planes use.
OUTCOMES = tuple(Outcome)
NOWHERE: tuple[int, ...] = ()  # the exclusion of a first attempt: no replica tried yet
# The named random stream (testbed.rng) both planes seed the gateway's policies from, so backoff
# jitter and power-of-two picks are the same draws in simulation and live for the same seed.
RNG_STREAM = "policy.gateway"


@dataclass(slots=True)
class ReplicaState:
    """The gateway's view of a replica (what routers read), kept current by the gateway."""

    index: int
    region: str
    tier: str
    capacity: int  # concurrent sequences it can run: the admission controller's load unit
    outstanding: int = 0
    available: bool = True
    pool: str = "default"
    kv_tokens: int = 0  # its KV memory: the bound of what cache-aware routers believe it caches (0: unknown)


class _FreeSlots:
    """The gateway queue's index of replicas with a free slot, so a dispatch need not pass over
    the fleet.

    Replicas are grouped by (pool, region, tier, slots): within a group every replica has the
    same number of slots, so the least loaded available one, ``(outstanding, index)`` first,
    is free exactly when any of the group is. Each group keeps a :class:`LoadHeap`, told of
    every change the gateway reports (:meth:`moved`). A request's groups are those of its pool
    (and region, with failover off; primary tier, with the fallback tier off): a handful,
    whatever the fleet's size, so a look-up costs O(groups + log n) amortised.
    """

    def __init__(self, replicas: Sequence[ReplicaState], slots_of: Callable[[ReplicaState], int]) -> None:
        members: dict[tuple[str, str, str, int], list[ReplicaState]] = {}
        for replica in sorted(replicas, key=lambda r: r.index):  # by index: the heaps' ties are the scan's
            members.setdefault((replica.pool, replica.region, replica.tier, slots_of(replica)), []).append(replica)
        self._groups = {key: LoadHeap(group) for key, group in members.items()}
        self._where = {r.index: (key, pos) for key, group in members.items() for pos, r in enumerate(group)}
        self._searches: dict[tuple[str, str | None, bool], list[tuple[str, str, str, int]]] = {}

    def moved(self, replica: ReplicaState) -> None:
        """``replica``'s ``outstanding`` or ``available`` just changed."""
        key, pos = self._where[replica.index]
        self._groups[key].moved(pos)

    def best(self, pool: str, region: str | None, primary_only: bool) -> ReplicaState | None:
        """The available replica of ``pool`` (and of ``region``, unless None) with a free slot:
        primary tier first, then the fewest outstanding, then the lowest index."""
        best: ReplicaState | None = None
        best_key: tuple[bool, int, int] | None = None
        for key in self._search(pool, region, primary_only):
            least = self._groups[key].least()
            if least is None or least.outstanding >= key[3]:
                continue  # nobody available, or the least loaded has no free slot: none has
            rank = (key[2] != "primary", least.outstanding, least.index)
            if best_key is None or rank < best_key:
                best, best_key = least, rank
        return best

    def _search(self, pool: str, region: str | None, primary_only: bool) -> list[tuple[str, str, str, int]]:
        """The groups a request of ``pool`` from ``region`` may use (worked out once per such request)."""
        search = self._searches.get((pool, region, primary_only))
        if search is None:
            search = [
                key for key in self._groups
                if key[0] == pool and (region is None or key[1] == region) and not (primary_only and key[2] != "primary")
            ]
            self._searches[(pool, region, primary_only)] = search
        return search


@dataclass(slots=True)
class Dispatch:
    rid: int
    attempt: int
    replica: int
    hedge: bool


@dataclass(slots=True)
class Cancel:
    rid: int
    attempt: int
    replica: int


@dataclass(slots=True)
class Wake:
    rid: int
    at: float
    tag: str  # "retry" | "hedge"


@dataclass(slots=True)
class Finish:
    """The request is over; what the record needs to say about its path travels with it."""

    rid: int
    status: Status
    attempt: int | None  # the attempt that answered, for an ok request
    retries: int
    hedged: bool
    failed_over: bool  # sent outside its home region because that region had failed it


Action = Dispatch | Cancel | Wake | Finish


@dataclass(slots=True, eq=False)
class RequestState:
    rid: int
    priority: int
    client_region: str
    arrival: float
    pool: str = "default"
    attempts: int = 0
    retries: int = 0
    hedged: bool = False
    first_token: bool = False
    done: bool = False
    live: dict[int, int] = field(default_factory=dict)  # attempt -> replica
    tried: list[int] = field(default_factory=list)  # replicas tried so far
    failed_over: bool = False
    home_refused: bool = False  # a home-region replica's breaker refused this request
    prefix: Prefix | None = None  # its block chain, for cache-aware routers
    request_class: int = 0  # for the gateway queue's per-class turns
    placing: bool = False  # the gateway queue is dispatching it now


class Gateway:
    """One gateway's policies over a fleet of replicas (see module docstring)."""

    def __init__(
        self,
        spec: ServingSpec,
        replicas: Sequence[ReplicaState],
        client_regions: Sequence[str],
        rtt: Callable[[str, str], float],
        rng: random.Random,
    ) -> None:
        self.replicas = list(replicas)
        self.rng = rng
        self.retry = RetryPolicy.from_spec(spec.retries)
        self.budget = RetryBudget.from_spec(spec.retries)
        self.hedging = HedgePolicy.from_spec(spec.hedging)
        self.breakers = [CircuitBreaker.from_spec(spec.circuit_breaker) for _ in self.replicas]
        self.breakers_on = spec.circuit_breaker.enabled
        self.outliers = OutlierDetector.from_spec(spec.outlier_ejection, len(self.replicas))
        self.outliers_on = spec.outlier_ejection.enabled
        self.health = HealthChecker.from_spec(spec.health_check, len(self.replicas))
        self.admission = AdmissionController.from_spec(spec.admission)
        self.routers = self._routers(spec, client_regions, rtt)
        self._watchers = self._watch(self.routers.values())
        self.capacity = sum(r.capacity for r in self.replicas) or 1
        self._available_in: dict[str, int] = {}  # region -> replicas believed available
        for replica in self.replicas:
            self._available_in[replica.region] = self._available_in.get(replica.region, 0) + replica.available
        self.refused_for = spec.circuit_breaker.open_for if not spec.health_check.enabled else float("inf")
        self._refused_until: dict[int, float] = {}  # replica -> until when a refused connection keeps it out
        # Replicas whose availability can change with time alone (a refusal's hold or an ejection
        # expiring, a breaker not closed): the only ones a tick needs to look at.
        self._timed: set[int] = set()
        # Late binding (policy/gateway_queue.py): requests wait here for a free replica slot.
        self.queue = GatewayQueue.from_spec(spec.queue) if spec.queue.enabled else None
        self.slots = spec.queue.slots_per_replica
        self._free = _FreeSlots(self.replicas, self._slots_of) if self.queue is not None else None
        self.failover_on, self.fallback_on = spec.failover.enabled, spec.failover.fallback_tier
        self.outstanding = 0
        # Replicas the control plane has taken out of rotation (not started yet, draining, gone):
        # an elastic fleet tells the gateway directly, as Kubernetes endpoints do, not via probes.
        self.out_of_service: set[int] = set()
        self.requests: dict[int, RequestState] = {}
        self._next_attempt = 0
        self._attempt_rid: dict[int, int] = {}

    def _watch(self, routers: Iterable[Router]) -> list[list[Callable[[ReplicaState], None]]]:
        """Per replica, the routers to tell when its ``outstanding`` or ``available`` changes:
        those that keep an index over their views (see ``LeastOutstanding.watch``)."""
        watchers: list[list[Callable[[ReplicaState], None]]] = [[] for _ in self.replicas]
        for router in {id(r): r for r in routers}.values():
            if hasattr(router, "watch"):  # a Watched router (a protocol checked by its methods)
                indexed = cast(Watched[ReplicaState], router)
                for replica in indexed.watch():
                    watchers[replica.index].append(indexed.moved)
        return watchers

    def _moved(self, replica: ReplicaState) -> None:
        for moved in self._watchers[replica.index]:
            moved(replica)
        if self._free is not None:
            self._free.moved(replica)

    def _routers(
        self, spec: ServingSpec, client_regions: Sequence[str], rtt: Callable[[str, str], float]
    ) -> dict[tuple[str, str], Router]:
        """One router per (client region, pool): with failover off it sees only the home region's replicas."""
        usable = [r for r in self.replicas if spec.failover.fallback_tier or r.tier == "primary"]
        routers: dict[tuple[str, str], Router] = {}
        for pool in dict.fromkeys(r.pool for r in self.replicas):
            in_pool = [r for r in usable if r.pool == pool]
            if spec.failover.enabled:
                shared = make_router(spec.routing, in_pool, rtt, self.rng)
                routers.update({(region, pool): shared for region in client_regions})
            else:
                for region in client_regions:
                    routers[(region, pool)] = make_router(
                        spec.routing, [r for r in in_pool if r.region == region], rtt, self.rng
                    )
        return routers


    # ------------------------------------------------------------------ events

    def on_arrival(
        self,
        rid: int,
        priority: int,
        client_region: str,
        now: float,
        pool: str = "default",
        prefix: Prefix | None = None,
        request_class: int = 0,
    ) -> list[Action]:
        """A request for ``pool`` (the replica pool its model lives in) from ``client_region``.

        ``prefix`` is its block chain, for cache-aware routers; ``request_class`` its class, for
        the gateway queue's turns.
        """
        state = RequestState(rid, priority, client_region, now, pool, prefix=prefix, request_class=request_class)
        self.requests[rid] = state
        self.budget.on_request(now)
        actions: list[Action] = []
        self._attempt(state, now, actions, hedge=False)
        if not state.done and self.hedging.max_hedges > 0:
            delay = self.hedging.hedge_delay()
            if delay is not None:
                actions.append(Wake(rid, now + delay, "hedge"))
        return actions

    def on_first_token(self, attempt: int, now: float) -> list[Action]:
        """The first token of ``attempt``: its request has won any hedge race."""
        state = self._state_of(attempt)
        if state is None or state.first_token:
            return []
        state.first_token = True
        self.hedging.observe(now - state.arrival)
        return self._drained([self._cancel(state, other, now) for other in list(state.live) if other != attempt], now)

    def on_attempt_end(self, attempt: int, outcome: str, now: float, retryable: bool = True) -> list[Action]:
        """``attempt`` ended with ``outcome`` (one of OUTCOMES); see :meth:`_attempt_ended`."""
        return self._drained(self._attempt_ended(attempt, outcome, now, retryable), now)

    def _attempt_ended(self, attempt: int, outcome: str, now: float, retryable: bool) -> list[Action]:
        """``attempt`` ended with ``outcome`` (an :class:`Outcome`).

        ``retryable=False`` ends the request instead of retrying: a live stream that broke after
        tokens reached the client cannot be replayed without sending them twice.
        """
        assert outcome in OUTCOMES, outcome
        rid = self._attempt_rid.pop(attempt, None)
        if rid is None:
            return []  # cancelled earlier: already accounted for
        state = self.requests[rid]
        replica = state.live.pop(attempt)
        self._release(replica)
        if outcome == Outcome.UNAVAILABLE:
            self._refused_until[replica] = now + self.refused_for
        self._observe(replica, outcome in REPLICA_SUCCESS, now)
        if outcome == Outcome.OK:
            actions: list[Action] = [self._cancel(state, other, now) for other in list(state.live)]
            actions.append(self._finish(state, Status.OK, attempt))
            return actions
        if outcome == Outcome.CLIENT_ERROR:  # the request's own fault: nowhere would serve it
            actions = [self._cancel(state, other, now) for other in list(state.live)]
            actions.append(self._finish(state, Status.CLIENT_ERROR))
            return actions
        if state.live:
            return []  # a hedge is still running
        if not retryable:
            return [self._finish(state, Status.FAILED)]
        return self._retry_or_fail(state, outcome, now)

    def on_timer(self, rid: int, tag: str, now: float) -> list[Action]:
        state = self.requests.get(rid)
        if state is None or state.done:
            return []
        actions: list[Action] = []
        if tag == "retry":
            self._attempt(state, now, actions, hedge=False)
        elif tag == "hedge" and not state.first_token and state.attempts <= self.hedging.max_hedges:
            state.hedged = True
            self._attempt(state, now, actions, hedge=True)
        elif tag == "queue" and self.queue is not None and self.queue.remove(rid):
            actions.append(self._finish(state, Status.SHED))  # waited max_wait in the gateway queue
        return actions

    def on_deadline(self, rid: int, now: float) -> list[Action]:
        """The client's deadline passed: cancel what is running and time the request out."""
        state = self.requests.get(rid)
        if state is None or state.done:
            return []
        if self.queue is not None:
            self.queue.remove(rid)
        actions: list[Action] = [self._cancel(state, attempt, now) for attempt in list(state.live)]
        actions.append(self._finish(state, Status.TIMEOUT))
        return self._drained(actions, now)

    def on_probe(self, replica: int, ok: bool, now: float) -> str | None:
        """A health probe's answer; returns "unhealthy"/"healthy" when the belief changes."""
        change = self.health.on_probe(replica, ok, now)
        if ok:
            self._refused_until.pop(replica, None)
        self._refresh(replica, now)
        return change

    def on_migrate(self, attempt: int, now: float) -> list[Action]:
        """``attempt``'s stream broke after tokens reached the client, and the request resumes elsewhere.

        The attempt counts as a failure of its replica; a new attempt is routed at once — no
        backoff and no retry budget, since nothing is re-done: the driver sends it the prompt plus
        the tokens delivered so far (:mod:`testbed.policy.migration`). A hedge still running
        carries the request instead.
        """
        rid = self._attempt_rid.pop(attempt, None)
        if rid is None:
            return []
        state = self.requests[rid]
        replica = state.live.pop(attempt)
        self._release(replica)
        self._observe(replica, False, now)
        actions: list[Action] = []
        if not state.live:
            self._attempt(state, now, actions, hedge=False)
        return actions

    def set_in_service(self, replica: int, serving: bool, now: float) -> None:
        """The control plane put a replica in rotation (serving) or took it out (starting, draining, gone)."""
        if serving:
            self.out_of_service.discard(replica)
        else:
            self.out_of_service.add(replica)
        self._refresh(replica, now)

    def on_tick(self, now: float) -> None:
        """Periodic upkeep: ejections, refusals and open breakers expire with time.

        Every other input of a replica's availability changes only with an event that refreshes
        it at once, so only the replicas in ``_timed`` can change here — in index order, as a
        pass over the whole fleet would find them, at O(those replicas) instead of O(fleet).
        """
        for replica in sorted(self._timed):
            self._refresh(replica, now)

    # ------------------------------------------------------------------ internals

    def _attempt(self, state: RequestState, now: float, actions: list[Action], hedge: bool) -> None:
        """Route one attempt; an attempt that finds no replica counts, so retries stay bounded."""
        if self.queue is not None and not hedge and not state.placing:
            self._hold(state, now, actions)
            return
        state.attempts += 1
        replica = self._choose(state, now)
        if replica is None:
            if not state.live:
                actions.extend(self._retry_or_fail(state, Outcome.UNAVAILABLE, now))
            return
        if state.attempts == 1:
            reason = self.admission.admit(state.priority, self.outstanding / self.capacity, replica.outstanding)
            if reason is not None:
                actions.append(self._finish(state, Status.SHED))
                return
        if replica.region != state.client_region and (
            state.tried or state.home_refused or not self._region_available(state.client_region)
        ):
            state.failed_over = True
        attempt = self._next_attempt
        self._next_attempt += 1
        state.live[attempt] = replica.index
        state.tried.append(replica.index)
        self._attempt_rid[attempt] = state.rid
        replica.outstanding += 1
        self._moved(replica)
        self.outstanding += 1
        actions.append(Dispatch(state.rid, attempt, replica.index, hedge))
        if state.prefix is not None:
            routed = getattr(self.routers[(state.client_region, state.pool)], "routed", None)
            if routed is not None:
                routed(replica.index, state.prefix)  # what cache-aware routers learn their belief from

    def _choose(self, state: RequestState, now: float) -> ReplicaState | None:
        """The router's pick, excluding the replicas this request tried and refusing breakers.

        When every available replica has been tried, a retry may go back to one of them (better
        than failing a request a replica might now serve); a half-open breaker with no trial
        request left joins the exclusion and the router is asked again, so the loop ends after
        at most one pass over the fleet.
        """
        router = self.routers[(state.client_region, state.pool)]
        tried: list[int] | tuple[int, ...] = state.tried or NOWHERE
        refused: list[int] = []
        while True:
            replica = self._route(router, state, now, [*tried, *refused] if refused else tried)
            if replica is None and tried:
                tried = NOWHERE
                continue
            if replica is None or self._breaker_allows(replica.index, now):
                break
            refused.append(replica.index)
            if replica.region == state.client_region:
                # A home replica whose breaker refuses has failed this region's traffic: going
                # elsewhere now is failover, though the region still counts as available.
                state.home_refused = True
        if state.placing and replica is not None and replica.outstanding >= self._slots_of(replica):
            replica = self._free_replica(state)  # the gateway queue binds only to a free slot
        return replica

    @staticmethod
    def _route(router: Router, state: RequestState, now: float, exclude: Sequence[int]) -> ReplicaState | None:
        """The router's pick; cache-aware routers (``choose_for``) also see the request's prefix."""
        if state.prefix is not None:
            choose_for = getattr(router, "choose_for", None)
            if choose_for is not None:
                return choose_for(state.client_region, state.prefix, now, exclude)
        return router.choose(state.client_region, now, exclude)

    def _breaker_allows(self, replica: int, now: float) -> bool:
        """A half-open breaker lets only its trial requests through; this takes one of them."""
        return not self.breakers_on or self.breakers[replica].allow(now)

    def _region_available(self, region: str) -> bool:
        """Whether the gateway believes any replica of ``region`` can serve."""
        return self._available_in.get(region, 0) > 0

    def _retry_or_fail(self, state: RequestState, outcome: str, now: float) -> list[Action]:
        if self.retry.should_retry(state.attempts, outcome) and self.budget.try_spend(now):
            state.retries += 1
            return [Wake(state.rid, now + self.retry.backoff(state.attempts, self.rng), "retry")]
        return [self._finish(state, Status.TIMEOUT if outcome == Outcome.TIMEOUT else Status.FAILED)]

    def _cancel(self, state: RequestState, attempt: int, now: float) -> Cancel:
        replica = state.live.pop(attempt)
        del self._attempt_rid[attempt]
        self._release(replica)
        return Cancel(state.rid, attempt, replica)

    def _finish(self, state: RequestState, status: Status, attempt: int | None = None) -> Finish:
        state.done = True
        del self.requests[state.rid]
        return Finish(state.rid, status, attempt, state.retries, state.hedged, state.failed_over)

    def _release(self, replica: int) -> None:
        view = self.replicas[replica]
        view.outstanding -= 1
        self._moved(view)
        self.outstanding -= 1

    def _observe(self, replica: int, ok: bool, now: float) -> None:
        breaker = self.breakers[replica]
        if ok:
            breaker.on_success(now)
        else:
            breaker.on_failure(now)
        self.outliers.on_result(replica, ok, now)
        if ok and replica not in self._timed:
            return  # a success leaves a closed breaker closed and nothing ejected or refused: no change
        self._refresh(replica, now)

    def _refresh(self, replica: int, now: float) -> None:
        """Recompute whether the gateway believes ``replica`` can serve, and note whether that
        belief can change with time alone (see ``_timed``)."""
        available = self.health.healthy(replica) and replica not in self.out_of_service
        timed = False
        refused_until = self._refused_until.get(replica)
        if refused_until is not None:
            if now < refused_until:
                available, timed = False, True
            else:
                del self._refused_until[replica]
        if self.outliers_on and self.outliers.is_ejected(replica, now):
            available, timed = False, True
        if self.breakers_on:
            breaker = self.breakers[replica]
            if not breaker.allow_peek(now):
                available = False
            timed = timed or breaker.state != CLOSED
        if timed:
            self._timed.add(replica)
        else:
            self._timed.discard(replica)
        view = self.replicas[replica]
        if view.available != available:
            view.available = available
            self._moved(view)
            self._available_in[view.region] += 1 if available else -1

    # ------------------------------------------------------------------ gateway queue (late binding)

    def drain(self, now: float) -> list[Action]:
        """Dispatch waiting requests to free slots; drivers call it after probes and ticks, which
        may bring replicas back (attempt ends and deadlines drain on their own)."""
        return self._drained([], now)

    def _drained(self, actions: list[Action], now: float) -> list[Action]:
        queue = self.queue
        while queue is not None and len(queue):
            rid = queue.pop()
            assert rid is not None
            state = self.requests[rid]
            if self._free_replica(state) is None:
                queue.push_front(rid, state.priority, state.request_class)
                break
            self._place(state, now, actions)
        return actions

    def _hold(self, state: RequestState, now: float, actions: list[Action]) -> None:
        """Dispatch at once if a slot is free and nobody waits; else queue, or shed if full."""
        assert self.queue is not None
        if not len(self.queue) and self._free_replica(state) is not None:
            self._place(state, now, actions)
            return
        if not self.queue.push(state.rid, state.priority, state.request_class):
            actions.append(self._finish(state, Status.SHED))
            return
        if self.queue.max_wait is not None:
            actions.append(Wake(state.rid, now + self.queue.max_wait, "queue"))

    def _place(self, state: RequestState, now: float, actions: list[Action]) -> None:
        state.placing = True
        try:
            self._attempt(state, now, actions, hedge=False)
        finally:
            state.placing = False

    def _slots_of(self, replica: ReplicaState) -> int:
        return self.slots or replica.capacity

    def _free_replica(self, state: RequestState) -> ReplicaState | None:
        """An available replica the request may use with a free slot: primary tier first, then
        the least loaded, then the lowest index (in its home region only with failover off, in
        the primary tier only with the fallback tier off). Answered by :class:`_FreeSlots`, not
        a pass over the fleet, since it is asked on every dispatch."""
        assert self._free is not None
        region = None if self.failover_on else state.client_region
        return self._free.best(state.pool, region, primary_only=not self.fallback_on)

    def _state_of(self, attempt: int) -> RequestState | None:
        rid = self._attempt_rid.get(attempt)
        return None if rid is None else self.requests.get(rid)
