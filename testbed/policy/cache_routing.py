"""Cache-aware routers: send a request where its prompt prefix is (believed to be) cached.

Three policies, each a small class over the driver's replica views (see
:mod:`testbed.policy.routing` for the view protocol and the **tier rule**, which all of them
apply: available primary replicas first, fallback ones only when no primary is available):

* :class:`PrefixAffinity` — consistent hashing of the request's leading block ids onto a ring of
  replicas, with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018): a replica takes the
  request only while its outstanding requests are below ``load_factor`` times the tier's mean,
  otherwise the ring is walked on. Stateless: the same prefix maps to the same replica as long
  as it is up and not overloaded, so its KV blocks are reused.
* :class:`CacheAware` — the weighted scorer of llm-d's inference scheduler and SGLang's router:
  ``cache_weight * (share of the chain believed cached) - load_weight * outstanding / slots``,
  the best score wins (ties: fewer outstanding, then lower index).
* :class:`SessionAffinity` — a session (conversation, agent session) stays on the replica it
  was first sent to until that replica is unavailable or holds ``spill_threshold`` requests; it
  then spills to a power-of-two pick and is re-pinned there.

A router's view of the caches is the **gateway's belief**, learned only from what it routed
(:meth:`CacheAware.routed`: the replica now holds that chain), kept as an LRU as large as the
replica's KV memory — never the replicas' ground truth. After a replica restarts cold the belief
is stale: the scorer keeps sending that prefix there, and those requests miss until the cache
refills. That is the failure mode real cache-aware routers have when KV events are lost.

Requests without a prefix (``prefix`` None or empty) are routed by power-of-two choices. The
gateway passes the prefix through ``choose_for``; ``choose`` (no prefix) keeps the plain router
protocol, exclusions included. All three register in :data:`testbed.policy.routing.ROUTERS`
under their ``routing.policy`` names when this module is imported (the gateway imports it).
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic

from testbed.policy.prefix_cache import Prefix
from testbed.policy.routing import NONE_EXCLUDED, Exclude, R, _tier_pools, _two_choices, register

_MASK = (1 << 64) - 1
RING_POINTS = 64  # virtual nodes per replica: spreads keys evenly over a small fleet
# A block held by more replicas than this gets its holders kept in load order the first time the
# cache-aware scorer asks about it; fewer are scored one by one.
_FEW_HOLDERS = 8
# The cache-aware scorer scores every replica of a fleet this small even when watched: keeping
# its indexes costs more than scoring a handful.
_SCAN_UP_TO = 16


def _mix(value: int) -> int:
    """splitmix64: a stable 64-bit mix (Python's ``hash`` is not stable for this purpose)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def prefix_key(blocks: Sequence[int]) -> int:
    key = 0
    for block in blocks:
        key = _mix(key ^ block)
    return key


def _first_available(pools: tuple[list[R], list[R]], rng: random.Random, exclude: Exclude) -> R | None:
    for pool in pools:
        pick = _two_choices(pool, rng, exclude)
        if pick is not None:
            return pick
    return None


def _all(pools: tuple[list[R], list[R]]) -> list[R]:
    return [r for pool in pools for r in pool]


class _Census(Generic[R]):
    """Per tier, the replicas available and their outstanding requests in all, kept from the
    driver's change reports (``moved``) so a request does not count them over the pool."""

    def __init__(self, pools: tuple[list[R], list[R]]) -> None:
        self.tier = {r.index: tier for tier, pool in enumerate(pools) for r in pool}
        self.view = {r.index: r for pool in pools for r in pool}
        self._last = {r.index: (r.available, r.outstanding) for pool in pools for r in pool}
        self.available = [sum(1 for r in pool if r.available) for pool in pools]
        self.load = [sum(r.outstanding for r in pool if r.available) for pool in pools]

    def moved(self, replica: R) -> None:
        tier = self.tier[replica.index]
        was_available, was_load = self._last[replica.index]
        if was_available:
            self.available[tier] -= 1
            self.load[tier] -= was_load
        if replica.available:
            self.available[tier] += 1
            self.load[tier] += replica.outstanding
        self._last[replica.index] = (replica.available, replica.outstanding)

    def live(self, tier: int, exclude: Exclude) -> tuple[int, int]:
        """(available replicas of ``tier`` outside ``exclude``, their outstanding requests)."""
        count, load = self.available[tier], self.load[tier]
        for index in set(exclude):
            replica = self.view.get(index)
            if replica is not None and replica.available and self.tier[index] == tier:
                count -= 1
                load -= replica.outstanding
        return count, load


class _CensusWatched(Generic[R]):
    """What the gateway calls on a router that keeps a census of its tiers (see :class:`_Census`)."""

    _pools: tuple[list[R], list[R]]
    _census: _Census[R] | None

    def watch(self) -> list[R]:
        """Keep a census from now on; the replicas whose changes must be reported to :meth:`moved`."""
        self._census = _Census(self._pools)
        return _all(self._pools)

    def moved(self, replica: R) -> None:
        """``replica``'s ``outstanding`` or ``available`` just changed."""
        assert self._census is not None
        self._census.moved(replica)


class PrefixAffinity(_CensusWatched[R]):
    """Consistent hashing with bounded loads on the leading ``prefix_blocks`` block ids.

    The bound needs the mean load of the tier's available replicas. Unwatched, a call counts them
    over the pool, O(n); once a driver calls :meth:`watch` and reports every change to
    :meth:`moved` (the gateway does), a census keeps the count and the sum, and a call costs
    O(blocks + exclusions + ring points walked): with a load factor above 1, fewer than
    ``1 / load_factor`` of the replicas can be at the bound, so the walk stops after a few.
    """

    def __init__(self, replicas: Sequence[R], rng: random.Random, prefix_blocks: int, load_factor: float) -> None:
        self._pools = _tier_pools(replicas)
        self._rng = rng
        self._blocks = prefix_blocks
        self._factor = load_factor
        self._census: _Census[R] | None = None
        self._rings: list[tuple[list[int], list[R]]] = []
        for pool in self._pools:
            points = sorted((_mix((r.index << 16) | v), r.index, r) for r in pool for v in range(RING_POINTS))
            self._rings.append(([p for p, _, _ in points], [r for _, _, r in points]))

    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        return _first_available(self._pools, self._rng, exclude)

    def _live(self, tier: int, pool: list[R], exclude: Exclude) -> tuple[int, int]:
        """(available replicas of the tier outside ``exclude``, their outstanding requests)."""
        if self._census is not None:
            return self._census.live(tier, exclude)
        live = [r for r in pool if r.available and r.index not in exclude]
        return len(live), sum(r.outstanding for r in live)

    def choose_for(
        self, client_region: str, prefix: Prefix | None, now: float, exclude: Exclude = NONE_EXCLUDED
    ) -> R | None:
        if prefix is None or not len(prefix):
            return self.choose(client_region, now, exclude)
        key = prefix_key(prefix.leading(self._blocks))
        for tier, (pool, (points, owners)) in enumerate(zip(self._pools, self._rings)):
            live, load = self._live(tier, pool, exclude)
            if not live:
                continue
            bound = math.ceil(self._factor * (load + 1) / live)
            start = bisect.bisect_left(points, key)
            below = _first_below(owners, start, bound, exclude)
            return below if below is not None else _least_loaded(owners, start, live, exclude)
        return None


_CHUNK = 32  # ring points read per slice of the walk: a short copy, then a plain loop over it


def _first_below(owners: list[R], start: int, bound: int, exclude: Exclude) -> R | None:
    """The first replica clockwise from ``start`` that is usable and has fewer than ``bound``
    outstanding requests, or None.

    A prefix shared by much of the traffic (a system prompt) fills the replicas after its point
    one by one, so its walk passes every replica already at the bound — a hundred on a
    thousand-GPU fleet. Nothing changes during a walk, so a replica met again on a later point
    of its own is still at the bound: the walk needs no set of replicas seen, only the test.
    """
    n = len(owners)
    for offset in range(0, n, _CHUNK):
        at = (start + offset) % n
        chunk = owners[at : at + _CHUNK] if at + _CHUNK <= n else owners[at:] + owners[: at + _CHUNK - n]
        for replica in chunk:  # the last slice may wrap onto points already tested: harmless
            if replica.outstanding < bound and replica.available and replica.index not in exclude:
                return replica
    return None


def _least_loaded(owners: list[R], start: int, live: int, exclude: Exclude) -> R | None:
    """With every usable replica at the bound: the least loaded, the first met clockwise on ties."""
    best: R | None = None
    seen: set[int] = set()
    for step in range(len(owners)):
        replica = owners[(start + step) % len(owners)]
        if replica.index in seen or not replica.available or replica.index in exclude:
            continue
        seen.add(replica.index)
        if best is None or replica.outstanding < best.outstanding:
            best = replica
        if len(seen) == live:
            break
    return best


class CacheBelief:
    """What the gateway believes one replica caches: an LRU of block ids it routed there."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens  # 0: unbounded
        self._blocks: OrderedDict[int, int] = OrderedDict()
        self._tokens = 0

    def matched(self, prefix: Prefix) -> int:
        """Leading ids of the chain believed cached."""
        return self.matched_ids(list(prefix.ids()))

    def matched_ids(self, ids: list[int]) -> int:
        """Leading ids of the chain ``ids`` believed cached."""
        count = 0
        for block in ids:
            if block not in self._blocks:
                break
            count += 1
        return count

    def holds(self, block: int) -> bool:
        """Whether block ``block`` is believed cached."""
        return block in self._blocks

    def add(self, prefix: Prefix) -> list[int]:
        """Believe the chain cached, root most recent; returns the ids the LRU dropped to make room
        (so an owner can keep a reverse index of who holds what, as :class:`CacheAware` does)."""
        blocks = self._blocks
        dropped: list[int] = []
        for block in reversed(list(prefix.ids())):  # the root most recent, as the replica's LRU keeps it
            if block in blocks:
                blocks.move_to_end(block)
            else:
                blocks[block] = prefix.block_tokens
                self._tokens += prefix.block_tokens
        while self.capacity_tokens and self._tokens > self.capacity_tokens and blocks:
            block, size = blocks.popitem(last=False)
            self._tokens -= size
            dropped.append(block)
        return dropped


class _Ranking(Generic[R]):
    """Some replicas in ``(outstanding, index)`` order, walked from the least loaded.

    A heap of ``(outstanding, index)`` entries kept lazily: every member has an entry no higher
    than its load. The owner pushes one when a member's load falls or it becomes available; a
    rise needs nothing, because a walk that meets an entry below its replica's load pushes it
    again at the load it has. Entries above the load, of replicas now unavailable or no longer
    members, are dropped when met. A walk pops what it passes and pushes the live entries back
    when closed: walking k replicas costs O(k log n) plus the stale entries it clears.
    """

    def __init__(self, view: dict[int, R], members: Callable[[], Iterable[int]], holds: Callable[[int], bool] | None) -> None:
        self._view = view
        self._members = members  # the member indices, for a rebuild
        self._holds = holds  # membership, for a ranking of a block's holders (None: all of view)
        self._heap: list[tuple[int, int]] = []
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(self._view[i].outstanding, i) for i in self._members() if self._view[i].available]
        heapq.heapify(self._heap)
        self._built = len(self._heap)

    def push(self, replica: R) -> None:
        """``replica`` (a member) became available or less loaded."""
        if len(self._heap) > 2 * self._built + 64:  # mostly stale entries: rebuild, O(1) amortised
            self._rebuild()
        else:
            heapq.heappush(self._heap, (replica.outstanding, replica.index))

    def walk(self) -> Iterator[R]:
        """The available members, least ``(outstanding, index)`` first; close it when done."""
        heap, view, holds = self._heap, self._view, self._holds
        passed: list[tuple[int, int]] = []
        try:
            while heap:
                entry = heapq.heappop(heap)
                load, index = entry
                replica = view[index]
                if not replica.available or (holds is not None and not holds(index)):
                    continue  # out until it is pushed again
                if replica.outstanding > load:
                    heapq.heappush(heap, (replica.outstanding, index))  # its load rose: rank it where it is now
                    continue
                if replica.outstanding < load or (passed and passed[-1] == entry):
                    continue  # superseded by the entry pushed when its load fell, or a duplicate
                passed.append(entry)
                yield replica
        finally:
            for entry in passed:
                heapq.heappush(heap, entry)


class _SlotGroup(Generic[R]):
    """The replicas of one tier with one slot count: their load order, and for each block whose
    holders are too many to score one by one, those holders' load order (made on demand)."""

    def __init__(self, members: list[R]) -> None:
        self.view = {r.index: r for r in members}
        self.order: _Ranking[R] = _Ranking(self.view, lambda: list(self.view), None)
        self.ranked: dict[int, _Ranking[R]] = {}  # block -> its holders in this group, by load


class CacheAware(Generic[R]):
    """Weighted score of believed-cached share against load (see module docstring).

    Unwatched, every available replica of a tier is scored (:meth:`_scan`): O(n) per request.
    Watched (see :meth:`watch`; the gateway does), it finds the same replica from indexes kept
    as it routes, as the beliefs evict and as the driver reports loads: who is believed to hold
    each block, and per tier and slot count the replicas by load and, for blocks held widely, the
    holders by load (see :meth:`_candidates`). A request then costs O(chain length) plus a few
    heap operations per distinct depth the chain is matched to, whatever the fleet's size.
    """

    def __init__(
        self,
        replicas: Sequence[R],
        rng: random.Random,
        cache_weight: float,
        load_weight: float,
        belief_tokens: dict[int, int] | None = None,
    ) -> None:
        self._pools = _tier_pools(replicas)
        self._rng = rng
        self._cache_weight = cache_weight
        self._load_weight = load_weight
        tokens = belief_tokens or {}
        # Block id -> replicas believed to hold it: a replica is added before its belief takes a
        # chain and removed when the belief evicts the block, so it is never missing a holder.
        self._holders: dict[int, set[int]] = {}
        self.beliefs = {r.index: CacheBelief(tokens.get(r.index, 0)) for r in replicas}
        self._slots = {r.index: getattr(r, "capacity", 1) or 1 for r in replicas}
        # The index's argument needs scores that rise with the share and fall with the load.
        self._indexable = 0 <= cache_weight < math.inf and 0 <= load_weight < math.inf and len(replicas) > _SCAN_UP_TO
        # Once watched: per tier, one group per slot count (see _candidates for why).
        self._groups: list[list[_SlotGroup[R]]] | None = None
        self._group_of: dict[int, _SlotGroup[R]] = {}
        self._last: dict[int, tuple[bool, int]] = {}  # replica -> (available, outstanding) last reported
        self._ranked: set[int] = set()  # blocks whose holders are kept by load
        self._ranked_of: dict[int, set[int]] = {r.index: set() for r in replicas}  # replica -> ranked blocks it holds
        self._last_ids: tuple[Prefix | None, list[int]] = (None, [])  # the last prefix chosen for, and its ids

    def _evicted(self, replica: int, block: int) -> None:
        """``replica``'s belief dropped ``block``."""
        held = self._holders.get(block)
        if held is None:
            return
        held.discard(replica)
        self._ranked_of[replica].discard(block)
        if not held:
            del self._holders[block]
            if block in self._ranked:
                self._ranked.discard(block)
                for groups in self._groups or ():
                    for group in groups:
                        group.ranked.pop(block, None)

    def watch(self) -> list[R]:
        """Index from now on; the replicas whose changes must be reported to :meth:`moved` (none
        if this router keeps scanning: a small fleet, or weights the index cannot rank by)."""
        if not self._indexable:
            return []
        self._groups = []
        for pool in self._pools:
            by_slots: dict[int, list[R]] = {}
            for replica in pool:
                by_slots.setdefault(self._slots[replica.index], []).append(replica)
            groups = [_SlotGroup(members) for members in by_slots.values()]
            self._groups.append(groups)
            for group in groups:
                self._group_of.update({i: group for i in group.view})
        self._last = {r.index: (r.available, r.outstanding) for r in _all(self._pools)}
        return _all(self._pools)

    def moved(self, replica: R) -> None:
        """``replica``'s ``outstanding`` or ``available`` just changed."""
        index = replica.index
        was_available, was_load = self._last[index]
        self._last[index] = (replica.available, replica.outstanding)
        if replica.available and (not was_available or replica.outstanding < was_load):
            group = self._group_of[index]
            group.order.push(replica)
            for block in self._ranked_of[index]:
                self._ranking(group, block).push(replica)

    def _ranking(self, group: _SlotGroup[R], block: int) -> _Ranking[R]:
        """The load order of ``block``'s holders in ``group``, made from the holder set if new."""
        ranking = group.ranked.get(block)
        if ranking is None:
            def members() -> list[int]:
                return [i for i in self._holders.get(block, ()) if i in group.view]

            ranking = group.ranked[block] = _Ranking(group.view, members, self._holds_fn(block))
            for index in members():
                self._ranked_of[index].add(block)
        return ranking

    def _holds_fn(self, block: int) -> Callable[[int], bool]:
        """Whether replica ``index`` is believed to hold ``block``, as a function of the index."""
        beliefs = self.beliefs
        return lambda index: beliefs[index].holds(block)

    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        return _first_available(self._pools, self._rng, exclude)

    def score(self, replica: R, prefix: Prefix) -> float:
        return self._score(replica, list(prefix.ids()))

    def _score(self, replica: R, ids: list[int]) -> float:
        return self._scored(replica, self.beliefs[replica.index].matched_ids(ids), len(ids))

    def _scored(self, replica: R, matched: int, blocks: int) -> float:
        share = matched / blocks
        slots = getattr(replica, "capacity", 1) or 1
        return self._cache_weight * share - self._load_weight * replica.outstanding / slots

    def choose_for(
        self, client_region: str, prefix: Prefix | None, now: float, exclude: Exclude = NONE_EXCLUDED
    ) -> R | None:
        if prefix is None or not len(prefix):
            return self.choose(client_region, now, exclude)
        ids = list(prefix.ids())  # once per request, not once per replica
        self._last_ids = (prefix, ids)  # routed() usually follows for the same prefix
        if self._groups is None:
            return self._scan(ids, exclude)
        for groups in self._groups:
            best: R | None = None
            best_key: tuple[float, int, int] | None = None
            for group in groups:
                for replica, matched in self._candidates(group, ids, exclude):
                    key = (-self._scored(replica, matched, len(ids)), replica.outstanding, replica.index)
                    if best_key is None or key < best_key:
                        best, best_key = replica, key
            if best is not None:
                return best
        return None

    def _candidates(self, group: _SlotGroup[R], ids: list[int], exclude: Exclude) -> Iterator[tuple[R, int]]:
        """Replicas of one slot group among which the scan's pick of that group lies, each with
        the leading ids of the chain it is believed to hold.

        Within a group every replica has the same slot count, so the load term grows with
        ``outstanding`` and the score cannot rise along the load order unless the matched share
        does: a replica matched no deeper than one before it scores no better, and on an equal
        score loses the tie (more outstanding, or as many and a higher index). So the candidates
        are the least loaded eligible replica, then the least loaded matched deeper than that,
        and so on. Whoever matches deeper than ``depth`` holds block ``ids[depth]``: a few such
        holders (a conversation's) are all scored; many (a shared system prompt's) are walked in
        their own load order, kept from the first time that block is asked about. Across slot
        counts a score tie can rest on loads the order does not rank, hence one group per slot
        count, each searched on its own.
        """
        depth = -1  # every candidate still to come matches deeper than this
        ranking = group.order
        while True:
            found: R | None = None
            walk = ranking.walk()
            try:
                for replica in walk:
                    if replica.index not in exclude:
                        matched = self.beliefs[replica.index].matched_ids(ids)
                        if matched > depth:
                            found = replica
                            break
            finally:
                walk.close()
            if found is None:
                return
            yield found, matched
            depth = matched
            if depth == len(ids):
                return
            block = ids[depth]
            holders = self._holders.get(block)
            if not holders:
                return
            if block not in self._ranked and len(holders) <= _FEW_HOLDERS:
                for index in list(holders):
                    replica = group.view.get(index)
                    if replica is not None and replica.available and index not in exclude:
                        deeper = self.beliefs[index].matched_ids(ids)
                        if deeper > depth:
                            yield replica, deeper
                return
            self._ranked.add(block)
            ranking = self._ranking(group, block)

    def _scan(self, ids: list[int], exclude: Exclude) -> R | None:
        """Score every available replica of a tier: the definition :meth:`_candidates` keeps to."""
        for pool in self._pools:
            best: R | None = None
            best_key: tuple[float, int, int] | None = None
            for replica in pool:
                if not replica.available or replica.index in exclude:
                    continue
                key = (-self._score(replica, ids), replica.outstanding, replica.index)
                if best_key is None or key < best_key:
                    best, best_key = replica, key
            if best is not None:
                return best
        return None

    def routed(self, replica: int, prefix: Prefix) -> None:
        """A request with ``prefix`` was sent to ``replica``: believe it caches that chain now."""
        if not len(prefix):
            return
        if not self._indexable:
            self.beliefs[replica].add(prefix)
            return
        holders, ranked = self._holders, self._ranked
        group = self._group_of.get(replica)
        last, ids = self._last_ids
        for block in ids if last is prefix else prefix.ids():  # before the belief takes them, so its evictions undo this
            held = holders.get(block)
            if held is None:
                holders[block] = {replica}
            elif replica not in held:
                held.add(replica)
            else:
                continue
            if block in ranked and group is not None:
                self._ranked_of[replica].add(block)
                ranking = group.ranked.get(block)
                if ranking is not None:
                    ranking.push(group.view[replica])
        for block in self.beliefs[replica].add(prefix):
            self._evicted(replica, block)


class SessionAffinity(_CensusWatched[R]):
    """Pin each session to a replica; spill over (and re-pin) when it is down or loaded.

    The tier rule asks whether any primary replica is available again; watched (see
    :meth:`watch`), a census answers that in O(1) instead of a pass over the primaries.
    """

    def __init__(self, replicas: Sequence[R], rng: random.Random, spill_threshold: int) -> None:
        self._pools = _tier_pools(replicas)
        self._rng = rng
        self._threshold = spill_threshold
        self._census: _Census[R] | None = None
        self.pins: dict[int, R] = {}  # one entry per session seen

    def choose(self, client_region: str, now: float, exclude: Exclude = NONE_EXCLUDED) -> R | None:
        return _first_available(self._pools, self._rng, exclude)

    def _primary_available(self) -> bool:
        if self._census is not None:
            return self._census.available[0] > 0
        return any(r.available for r in self._pools[0])

    def choose_for(
        self, client_region: str, prefix: Prefix | None, now: float, exclude: Exclude = NONE_EXCLUDED
    ) -> R | None:
        if prefix is None or prefix.session < 0:
            return self.choose(client_region, now, exclude)
        pinned = self.pins.get(prefix.session)
        usable = pinned is not None and pinned.available and pinned.index not in exclude
        if pinned is not None and usable and pinned.outstanding < self._threshold:
            primary_back = pinned.tier != "primary" and self._primary_available()
            if not primary_back:  # the tier rule: leave the fallback tier once a primary serves again
                return pinned
        pick = self.choose(client_region, now, exclude)
        if pick is not None:
            self.pins[prefix.session] = pick
        return pick


def _belief_tokens(replicas: Sequence[R]) -> dict[int, int]:
    """Each replica's KV memory, where its view says (the gateway's ``kv_tokens``): the belief's bound."""
    return {r.index: getattr(r, "kv_tokens", 0) for r in replicas}


register("prefix_affinity", lambda spec, replicas, rtt, rng: PrefixAffinity(replicas, rng, spec.prefix_blocks, spec.load_factor))
register(
    "cache_aware",
    lambda spec, replicas, rtt, rng: CacheAware(replicas, rng, spec.cache_weight, spec.load_weight, _belief_tokens(replicas)),
)
register("session_affinity", lambda spec, replicas, rtt, rng: SessionAffinity(replicas, rng, spec.spill_threshold))
