"""The segment-based prefix cache against the per-block model it replaced, step by step.

``BlockPrefixCache`` below is the per-block implementation ``PrefixCache`` had before it kept
segments: a dict of referenced ids and an ``OrderedDict`` of unreferenced ones, every call a walk
over each block id of the chain. A Hypothesis state machine drives both with the same random
acquire / release / match / fit / clear calls over random multi-run chains (shared leading runs,
partial overlaps, runs repeated inside a chain, mixed ``block_tokens``, capacities of a few blocks
that evict all the time) and after every step requires equal return values, counters, ``len``
and ``in`` — and, expanded block by block, the same reference counts, sizes and LRU order of the
free blocks, so an eviction order that differs is caught before it shows in a counter.
"""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from testbed.policy.prefix_cache import Prefix, PrefixCache


class BlockPrefixCache:
    """The per-block model: what ``PrefixCache`` must behave exactly like.

    One line differs from the code it was: re-referencing a free block took the *acquiring*
    chain's ``block_tokens`` off ``free_tokens`` rather than the block's own size, so chains of
    two block sizes in one cache drove ``free_tokens`` negative. A simulated run never mixes
    sizes in a cache (a workload has one ``block_tokens``), so records do not change.
    """

    def __init__(self, capacity_tokens: int, block_size: int) -> None:
        self.block_size = block_size
        self.capacity_tokens = capacity_tokens
        self._refs: dict[int, int] = {}  # referenced id -> count
        self._free: OrderedDict[int, int] = OrderedDict()  # unreferenced id -> tokens, LRU first
        self._sizes: dict[int, int] = {}  # referenced id -> tokens
        self.cached_tokens = 0
        self.free_tokens = 0
        self.lookup_tokens = 0
        self.hit_tokens = 0
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._refs) + len(self._free)

    def __contains__(self, block: int) -> bool:
        return block in self._refs or block in self._free

    def cacheable_blocks(self, prefix: Prefix, prompt_tokens: int) -> int:
        return min(len(prefix), prompt_tokens // prefix.block_tokens)

    def match(self, prefix: Prefix, prompt_tokens: int) -> int:
        matched = 0
        for block in prefix.ids(self.cacheable_blocks(prefix, prompt_tokens)):
            if block not in self._refs and block not in self._free:
                break
            matched += 1
        return min(matched * prefix.block_tokens, prompt_tokens - 1)

    def acquire(self, prefix: Prefix, prompt_tokens: int, at_most: int | None = None) -> tuple[int, int]:
        size = prefix.block_tokens
        held = self.cacheable_blocks(prefix, prompt_tokens)
        refs, free, sizes = self._refs, self._free, self._sizes
        matched, hitting = 0, True
        for block in prefix.ids(held):
            count = refs.get(block)
            if count is not None:
                refs[block] = count + 1
            elif block in free:
                sizes[block] = free.pop(block)
                self.free_tokens -= sizes[block]  # was `size`: wrong when the block was cached at another size
                refs[block] = 1
            else:
                hitting = False
                refs[block], sizes[block] = 1, size
                self.cached_tokens += size
            if hitting:
                matched += 1
        cached = min(matched * size, prompt_tokens - 1) if prompt_tokens > 0 else 0
        if at_most is not None:
            cached = min(cached, at_most)
        self.lookup_tokens += prompt_tokens
        self.hit_tokens += cached
        self._evict_over(self.capacity_tokens)
        return cached, held

    def release(self, prefix: Prefix, held: int) -> None:
        if held <= 0:
            return
        refs, free, sizes = self._refs, self._free, self._sizes
        for block in reversed(list(prefix.ids(held))):
            count = refs.get(block)
            if count is None:
                continue
            if count > 1:
                refs[block] = count - 1
                continue
            del refs[block]
            size = sizes.pop(block)
            free[block] = size
            self.free_tokens += size
        self._evict_over(self.capacity_tokens)

    def fit(self, free_memory_tokens: int) -> None:
        while self.free_tokens > max(0, free_memory_tokens) and self._free:
            self._evict_one()

    def _evict_over(self, limit: int) -> None:
        while self.cached_tokens > limit and self._free:
            self._evict_one()

    def _evict_one(self) -> None:
        _, size = self._free.popitem(last=False)
        self.free_tokens -= size
        self.cached_tokens -= size
        self.evicted_blocks += 1

    def clear(self) -> None:
        self._refs.clear()
        self._free.clear()
        self._sizes.clear()
        self.cached_tokens = self.free_tokens = 0


def expanded(cache: PrefixCache) -> tuple[dict[int, tuple[int, int]], list[tuple[int, int]]]:
    """The segments block by block: referenced id -> (refs, size), and the free (id, size) in LRU order."""
    starts, segments = cache._starts, cache._segments
    assert starts == [s.start for s in segments]
    assert all(s.start < s.end for s in segments), "empty segment"
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:])), "segments overlap or unsorted"
    referenced = {b: (s.refs, s.size) for s in segments if s.refs for b in range(s.start, s.end)}
    assert cache._ranks == sorted(cache._free) == sorted(s.rank for s in segments if not s.refs)
    free: list[tuple[int, int]] = []
    ranks: list[int] = []  # each free block's, in the order the LRU takes them: must rise
    for rank in cache._ranks:
        segment = cache._free[rank]
        assert segment.refs == 0 and segment.rank == rank and segment in segments
        for block in range(segment.end - 1, segment.start - 1, -1):
            free.append((block, segment.size))
            ranks.append(rank - (block - segment.start))
    assert ranks == sorted(set(ranks)), "block ranks out of LRU order"
    return referenced, free


# Chains: a leading "system prompt" run from a few shared ones, then a "conversation" run from a
# few bases (so turns overlap partially), and now and then a run starting a little past one of
# those (inside what others cached: splits in the middle of segments); ids live in [0, 64).
SYSTEM = [(0, 4), (4, 4), (40, 6)]
BASES = [10, 20, 30]
STARTS = [first for first, _ in SYSTEM] + BASES


@st.composite
def prefixes(draw: st.DrawFn) -> Prefix:
    runs: list[tuple[int, int]] = []
    if draw(st.booleans()):
        runs.append(draw(st.sampled_from(SYSTEM)))
    if draw(st.booleans()):
        runs.append((draw(st.sampled_from(BASES)), draw(st.integers(1, 12))))
    for _ in range(draw(st.integers(0, 2))):
        runs.append((draw(st.sampled_from(STARTS)) + draw(st.integers(0, 6)), draw(st.integers(1, 8))))
    return Prefix(tuple(runs), draw(st.sampled_from([1, 2, 3])))


# Prompt tokens short of the chain's full length: mostly the whole chain or nearly, sometimes far less.
EXTRA = st.integers(-2, 4) | st.integers(0, 40)


class Agree(RuleBasedStateMachine):
    @initialize(
        capacity_blocks=st.one_of(st.integers(0, 12), st.just(10_000)),
        block_size=st.sampled_from([1, 2, 4]),
    )
    def start(self, capacity_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.new = PrefixCache(capacity_blocks * block_size, block_size)
        self.old = BlockPrefixCache(capacity_blocks * block_size, block_size)
        self.held: list[tuple[Prefix, int]] = []
        self.seen: list[Prefix] = []

    def scaled(self, prefix: Prefix) -> Prefix:
        return Prefix(prefix.runs, prefix.block_tokens * self.block_size)

    def both_acquire(self, prefix: Prefix, extra: int, at_most: int | None) -> None:
        prompt = max(0, len(prefix) * prefix.block_tokens - extra)  # most of the chain, or past it
        got = self.new.acquire(prefix, prompt, at_most)
        assert got == self.old.acquire(prefix, prompt, at_most)
        self.held.append((prefix, got[1]))
        self.seen.append(prefix)

    @rule(prefix=prefixes(), extra=EXTRA, at_most=st.none() | st.integers(0, 40))
    def acquire(self, prefix: Prefix, extra: int, at_most: int | None) -> None:
        self.both_acquire(self.scaled(prefix), extra, at_most)

    @precondition(lambda self: self.seen)
    @rule(pick=st.integers(0, 10_000), skip=st.integers(0, 8), count=st.integers(1, 8), extra=EXTRA)
    def acquire_inside(self, pick: int, skip: int, count: int, extra: int) -> None:
        """A run starting and ending inside one an earlier chain cached: a segment split in its middle."""
        earlier = self.seen[pick % len(self.seen)]
        if not earlier.runs:
            return
        first, length = earlier.runs[pick % len(earlier.runs)]
        skip = min(skip, length - 1)
        self.both_acquire(Prefix(((first + skip, min(count, length - skip)),), earlier.block_tokens), extra, None)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 10_000))
    def release(self, pick: int) -> None:
        prefix, held = self.held.pop(pick % len(self.held))
        self.new.release(prefix, held)
        self.old.release(prefix, held)

    @rule(prefix=prefixes(), held=st.integers(-1, 20))
    def release_unheld(self, prefix: Prefix, held: int) -> None:
        """A release nobody acquired for: it drops references other sequences hold, as the model does."""
        prefix = self.scaled(prefix)
        self.new.release(prefix, held)
        self.old.release(prefix, held)

    @rule(prefix=prefixes(), extra=EXTRA)
    def match(self, prefix: Prefix, extra: int) -> None:
        prefix = self.scaled(prefix)
        prompt = max(0, len(prefix) * prefix.block_tokens - extra)
        assert self.new.match(prefix, prompt) == self.old.match(prefix, prompt)

    @rule(free=st.integers(-4, 60))
    def fit(self, free: int) -> None:
        self.new.fit(free * self.block_size)
        self.old.fit(free * self.block_size)

    @rule(restart=st.integers(0, 3))
    def clear(self, restart: int) -> None:
        if restart == 0:  # a quarter as often as the other calls: a cold cache tests little
            self.new.clear()
            self.old.clear()

    @invariant()
    def same(self) -> None:
        new, old = self.new, self.old
        for name in ("cached_tokens", "free_tokens", "lookup_tokens", "hit_tokens", "evicted_blocks"):
            assert getattr(new, name) == getattr(old, name), name
        assert len(new) == len(old)
        assert [b in new for b in range(-1, 70)] == [b in old for b in range(-1, 70)]
        referenced, free = expanded(new)
        assert referenced == {b: (n, old._sizes[b]) for b, n in old._refs.items()}
        assert free == list(old._free.items())


Agree.TestCase.settings = settings(max_examples=400, stateful_step_count=40, deadline=None)
TestAgree = Agree.TestCase


def test_segments_stay_few_for_chains_released_whole() -> None:
    """A conversation's turns, each extending the last, leave one free segment, not one per block."""
    cache = PrefixCache(1 << 20, block_size=16)
    for turn in range(1, 50):
        prefix = Prefix(((1 << 40, 32), (1 << 41, turn * 8)), 16)
        _, held = cache.acquire(prefix, (32 + turn * 8) * 16)
        cache.release(prefix, held)
    assert len(cache) == 32 + 49 * 8
    assert len(cache._segments) == 2
