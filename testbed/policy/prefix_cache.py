"""A replica's prefix cache: content-addressed KV blocks, shared by running sequences, LRU-evicted.

This is the model of vLLM's automatic prefix caching (and SGLang's radix cache) that the
simulated replicas run:

* **Content-addressed blocks.** A prompt is a chain of blocks; a block's id stands for its
  content *and everything before it* (vLLM hashes each block with its parent's hash; Mooncake's
  ``hash_ids`` are built the same way). Two requests share KV exactly as far as their chains
  share leading ids. :func:`chain_hashes` computes such a chain from real token ids; the
  workload generators and trace readers produce ids with the same property.
* **Granularity.** A chain id covers ``block_tokens`` tokens of the workload (Mooncake: 512; the
  synthetic workloads: the cache's block size unless told otherwise), a multiple of the cache's
  ``block_size`` (vLLM's 16 by default). Only *full* blocks are cached, as in vLLM, and at least
  one prompt token is always computed (the last position's logits are needed), so a prompt whose
  every block is cached still costs one token of prefill.
* **Shared, reference-counted.** Running sequences hold (reference) the blocks of their prompt;
  a block nobody references stays cached until memory is needed. Unreferenced blocks live only
  in KV memory the running sequences do not use, so the batcher calls :meth:`PrefixCache.fit`
  with its free memory and the least recently used unreferenced blocks are evicted; a memory
  pressure fault shrinks the free memory and so evicts.
* **LRU, leaves first.** A released chain is queued most-recent-last in reverse order, so its
  tail blocks are evicted before the prefix they hang from (vLLM's free-block queue does the
  same): a cached block's parent is always cached too.
* **Cold after a restart.** :meth:`PrefixCache.clear` forgets everything (the process's GPU
  memory is gone).

Sans-IO, and every call costs O(runs of the request + segments it touches), not O(blocks): the
cache is held as **segments**, ranges of consecutive ids in the same state, never per block:

* A segment ``[start, end)`` has one ``size`` (tokens per block, fixed when its blocks were
  cached) and one ``refs`` count: ``refs > 0`` referenced, ``refs == 0`` free (evictable).
* Segments are disjoint; a sorted list of their starts maps an id to its segment by bisection
  (a split or merge inserts into or deletes from that list: a memmove, not Python work, per
  segment). A call on part of a segment first splits it at the part's ends.
* A released block gets the next **rank** of a counter that only grows: LRU order is rank
  order, oldest first. A release queues a run tail first, so a free segment's blocks are in
  rank order from its top down (``end - 1`` is its least recently used block), and the segment
  keeps one number, ``rank``, its lowest block's; block ``b`` has ``rank - (b - start)``.
  Splitting a free segment keeps every block's rank. Free segments are kept by rank in a sorted
  list (and a dict from rank to segment): eviction takes blocks off the top of the lowest-ranked
  segment, one by one in effect (in bulk in fact).
* Neighbours merge when that changes nothing observable: referenced ones with the same ``refs``
  and ``size``; free ones with the same ``size`` whose ranks run on from the upper one's lowest
  block to the lower one's top block. A chain's run released in one piece is one segment again.
* Segments refer to no other segment: no reference cycles, so nothing waits for the cyclic
  collector (the simulator's event loop pauses it).

Everything observable — return values, counters, ``len``, ``in``, which block is evicted when —
is what the same model kept per block would give (``tests/test_prefix_cache_runs.py`` holds the
per-block model and checks the two against each other).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

DEFAULT_BLOCK_SIZE = 16


@dataclass(slots=True, frozen=True)
class Prefix:
    """A request's block chain, compact: ``runs`` of consecutive ids ``(first, count)``.

    A synthetic request's chain is a system prompt's ids followed by its conversation's ids, two
    runs whatever its length, so a million requests hold a few million integers, not a billion.
    ``session`` is the conversation or agent session the request belongs to (-1: none), for
    session-affinity routing.
    """

    runs: tuple[tuple[int, int], ...]
    block_tokens: int
    session: int = -1

    def ids(self, limit: int | None = None) -> Iterator[int]:
        """The chain's ids in order (the first ``limit`` of them)."""
        left = len(self) if limit is None else limit
        for first, count in self.runs:
            if left <= 0:
                return
            take = min(count, left)
            yield from range(first, first + take)
            left -= take

    def __len__(self) -> int:
        return sum(count for _, count in self.runs)

    def leading_runs(self, blocks: int) -> tuple[tuple[int, int], ...]:
        """The runs of the first ``blocks`` ids (the last one cut short where the limit falls)."""
        out: list[tuple[int, int]] = []
        left = blocks
        for first, count in self.runs:
            if left <= 0:
                break
            take = min(count, left)
            out.append((first, take))
            left -= take
        return tuple(out)

    def leading(self, blocks: int) -> tuple[int, ...]:
        """The first ``blocks`` ids (fewer if the chain is shorter)."""
        return tuple(block for first, count in self.leading_runs(blocks) for block in range(first, first + count))


def chain_hashes(tokens: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE) -> list[int]:
    """The hash chain of a token sequence's full blocks: each id covers its block and all before.

    For engines holding real token ids (the live plane); 64-bit BLAKE2b so ids are stable across
    processes and Python versions (``hash()`` is salted per process).
    """
    ids: list[int] = []
    parent = b""
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = ",".join(map(str, tokens[start : start + block_size])).encode()
        parent = hashlib.blake2b(parent + b"|" + block, digest_size=8).digest()
        ids.append(int.from_bytes(parent, "little") >> 1)
    return ids


class _Segment:
    """Blocks ``start .. end - 1``, all of ``size`` tokens and ``refs`` references; a free one's
    ``rank`` is its lowest block's place in LRU order."""

    __slots__ = ("start", "end", "size", "refs", "rank")

    def __init__(self, start: int, end: int, size: int, refs: int, rank: int = 0) -> None:
        self.start, self.end, self.size, self.refs, self.rank = start, end, size, refs, rank


class PrefixCache:
    """One replica's cached KV blocks (see module docstring).

    Sizes are in tokens. ``capacity_tokens`` is a hard cap on everything cached (the replica's
    KV memory); :meth:`fit` applies the tighter, moving bound of memory the running sequences
    leave free.
    """

    def __init__(self, capacity_tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self.capacity_tokens = capacity_tokens
        self._starts: list[int] = []  # segment starts, ascending
        self._segments: list[_Segment] = []  # the segment at each start
        self._ranks: list[int] = []  # free segments' ranks, ascending: least recently used first
        self._free: dict[int, _Segment] = {}  # the free segment of each rank
        self._next_rank = 0
        self._blocks = 0
        self.cached_tokens = 0  # tokens held by all cached blocks
        self.free_tokens = 0  # of which unreferenced
        # Cumulative counters for hit rates: prompt tokens looked up and tokens found cached.
        self.lookup_tokens = 0
        self.hit_tokens = 0
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return self._blocks

    def __contains__(self, block: int) -> bool:
        at = bisect_right(self._starts, block) - 1
        return at >= 0 and self._segments[at].end > block

    def cacheable_blocks(self, prefix: Prefix, prompt_tokens: int) -> int:
        """How many leading ids of the chain are full blocks of this prompt."""
        size = prefix.block_tokens
        if size % self.block_size:
            raise ValueError(f"chain blocks of {size} tokens are not a multiple of the cache block size {self.block_size}")
        return min(len(prefix), prompt_tokens // size)

    def match(self, prefix: Prefix, prompt_tokens: int) -> int:
        """Tokens of this prompt found cached, without touching anything (for inspection)."""
        matched = 0
        for first, count in prefix.leading_runs(self.cacheable_blocks(prefix, prompt_tokens)):
            found = self._cached_from(first, first + count)
            matched += found
            if found < count:
                break
        return min(matched * prefix.block_tokens, prompt_tokens - 1)

    def acquire(self, prefix: Prefix, prompt_tokens: int, at_most: int | None = None) -> tuple[int, int]:
        """A sequence starts prefill: reference its chain, caching the blocks it will compute.

        Returns (cached tokens the prefill may skip, blocks now held, to hand to :meth:`release`).
        ``at_most`` caps the cached tokens: a batch prefilled in one step cannot reuse blocks
        another of its prompts is computing in that very step (the caller's :meth:`match` from
        before the batch).
        """
        size = prefix.block_tokens
        held = self.cacheable_blocks(prefix, prompt_tokens)
        matched, hitting = 0, True
        for first, count in prefix.leading_runs(held):
            found = self._acquire_run(first, first + count, size)
            if hitting:
                matched += found
                hitting = found == count
        cached = min(matched * size, prompt_tokens - 1) if prompt_tokens > 0 else 0
        if at_most is not None:
            cached = min(cached, at_most)
        self.lookup_tokens += prompt_tokens
        self.hit_tokens += cached
        self._evict_over(self.capacity_tokens)
        return cached, held

    def release(self, prefix: Prefix, held: int) -> None:
        """The sequence stopped (finished, preempted or cancelled): its blocks become evictable."""
        if held <= 0:
            return
        for first, count in reversed(prefix.leading_runs(held)):  # tail first: the tail is evicted first
            self._release_run(first, first + count)
        self._evict_over(self.capacity_tokens)

    def fit(self, free_memory_tokens: int) -> None:
        """Evict unreferenced blocks until they fit in ``free_memory_tokens`` of KV memory."""
        limit = max(0, free_memory_tokens)
        while self.free_tokens > limit and self._ranks:
            self._evict_top(self.free_tokens - limit)

    def clear(self) -> None:
        """The replica restarted or was replaced: its KV memory is gone, the cache is cold."""
        self._starts.clear()
        self._segments.clear()
        self._ranks.clear()
        self._free.clear()
        self._blocks = self.cached_tokens = self.free_tokens = 0

    # ------------------------------------------------------------------ runs of ids

    def _cached_from(self, first: int, end: int) -> int:
        """How many leading ids of ``first .. end - 1`` are cached."""
        segments = self._segments
        at, pos = self._index(first), first
        while pos < end and at < len(segments) and segments[at].start <= pos:
            pos = segments[at].end
            at += 1
        return min(pos, end) - first

    def _acquire_run(self, first: int, end: int, size: int) -> int:
        """Reference ``first .. end - 1``, caching what is not; returns how many leading ids were cached."""
        if first >= end:
            return 0
        segments = self._segments
        at = self._index(first)
        if at < len(segments) and segments[at].start < first:
            self._split(at, first)
            at += 1
        low, pos, found = at, first, end - first
        while pos < end:
            segment = segments[at] if at < len(segments) else None
            if segment is None or segment.start > pos:  # a gap: cache it
                stop = end if segment is None else min(end, segment.start)
                self._insert(at, _Segment(pos, stop, size, 1))
                self._blocks += stop - pos
                self.cached_tokens += (stop - pos) * size
                found = min(found, pos - first)
            else:
                if segment.end > end:
                    self._split(at, end)
                if segment.refs:
                    segment.refs += 1
                else:
                    self._unlink(segment)
                    segment.refs = 1
                    self.free_tokens -= (segment.end - segment.start) * segment.size
            pos = segments[at].end
            at += 1
        self._merge_around(low, at - 1)
        return found

    def _release_run(self, first: int, end: int) -> None:
        """Drop a reference to the referenced blocks of ``first .. end - 1``, from the top down."""
        segments = self._segments
        at = bisect_left(self._starts, end) - 1
        top = at
        while at >= 0 and segments[at].end > first:
            segment = segments[at]
            if segment.refs:
                if segment.end > end:
                    self._split(at, end)
                if segment.start < first:
                    self._split(at, first)
                    segment = segments[at + 1]
                    top += 1
                if segment.refs > 1:
                    segment.refs -= 1
                else:
                    segment.refs = 0
                    self._queue(segment)
                    self.free_tokens += (segment.end - segment.start) * segment.size
            at -= 1
        self._merge_around(at + 1, top)

    # ------------------------------------------------------------------ eviction

    def _evict_over(self, limit: int) -> None:
        while self.cached_tokens > limit and self._ranks:
            self._evict_top(self.cached_tokens - limit)

    def _evict_top(self, excess: int) -> None:
        """Evict the fewest blocks off the top of the least recently used free segment that cover
        ``excess`` tokens (all its blocks, at most)."""
        segment = self._free[self._ranks[0]]
        count = min(segment.end - segment.start, -(-excess // segment.size))
        segment.end -= count
        self._blocks -= count
        self.free_tokens -= count * segment.size
        self.cached_tokens -= count * segment.size
        self.evicted_blocks += count
        if segment.end == segment.start:
            del self._free[self._ranks.pop(0)]
            self._remove(bisect_left(self._starts, segment.start))

    # ------------------------------------------------------------------ segments

    def _index(self, block: int) -> int:
        """The index of the first segment ending after ``block`` (the one holding it, if any)."""
        at = bisect_right(self._starts, block) - 1
        return at if at >= 0 and self._segments[at].end > block else at + 1

    def _insert(self, at: int, segment: _Segment) -> None:
        self._starts.insert(at, segment.start)
        self._segments.insert(at, segment)

    def _remove(self, at: int) -> None:
        del self._starts[at]
        del self._segments[at]

    def _split(self, at: int, block: int) -> None:
        """Cut segment ``at`` at ``block``: the upper part becomes segment ``at + 1``."""
        lower = self._segments[at]
        upper = _Segment(block, lower.end, lower.size, lower.refs, lower.rank - (block - lower.start))
        lower.end = block
        self._insert(at + 1, upper)
        if not upper.refs:
            insort(self._ranks, upper.rank)
            self._free[upper.rank] = upper

    def _merge_around(self, low: int, high: int) -> None:
        """Merge what can be merged among segments ``low - 1 .. high + 1``."""
        for at in range(min(high, len(self._segments) - 2), max(low - 1, 0) - 1, -1):
            lower, upper = self._segments[at], self._segments[at + 1]
            if lower.end != upper.start or lower.size != upper.size or lower.refs != upper.refs:
                continue
            if not lower.refs:
                if lower.rank - upper.rank != lower.end - lower.start:  # not next in LRU order
                    continue
                self._unlink(upper)
            lower.end = upper.end
            self._remove(at + 1)

    def _queue(self, segment: _Segment) -> None:
        """Make ``segment`` the most recently used free one, its top block first."""
        self._next_rank += segment.end - segment.start
        segment.rank = self._next_rank - 1
        self._ranks.append(segment.rank)
        self._free[segment.rank] = segment

    def _unlink(self, segment: _Segment) -> None:
        """Take ``segment`` out of the LRU order (it is referenced again, or merged)."""
        del self._ranks[bisect_left(self._ranks, segment.rank)]
        del self._free[segment.rank]
