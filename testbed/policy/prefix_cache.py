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

Sans-IO and O(blocks of the request) per call: a dict of referenced ids and an ``OrderedDict``
of unreferenced ones.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
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

    def leading(self, blocks: int) -> tuple[int, ...]:
        """The first ``blocks`` ids (fewer if the chain is shorter)."""
        out: list[int] = []
        for block in self.ids():
            if len(out) == blocks:
                break
            out.append(block)
        return tuple(out)


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
        self._refs: dict[int, int] = {}  # referenced id -> count
        self._free: OrderedDict[int, int] = OrderedDict()  # unreferenced id -> tokens, LRU first
        self._sizes: dict[int, int] = {}  # referenced id -> tokens
        self.cached_tokens = 0  # tokens held by all cached blocks
        self.free_tokens = 0  # of which unreferenced
        # Cumulative counters for hit rates: prompt tokens looked up and tokens found cached.
        self.lookup_tokens = 0
        self.hit_tokens = 0
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._refs) + len(self._free)

    def __contains__(self, block: int) -> bool:
        return block in self._refs or block in self._free

    def cacheable_blocks(self, prefix: Prefix, prompt_tokens: int) -> int:
        """How many leading ids of the chain are full blocks of this prompt."""
        size = prefix.block_tokens
        if size % self.block_size:
            raise ValueError(f"chain blocks of {size} tokens are not a multiple of the cache block size {self.block_size}")
        return min(len(prefix), prompt_tokens // size)

    def match(self, prefix: Prefix, prompt_tokens: int) -> int:
        """Tokens of this prompt found cached, without touching anything (for inspection)."""
        matched = 0
        refs, free = self._refs, self._free
        for block in prefix.ids(self.cacheable_blocks(prefix, prompt_tokens)):
            if block not in refs and block not in free:
                break
            matched += 1
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
        refs, free, sizes = self._refs, self._free, self._sizes
        matched, hitting = 0, True
        for block in prefix.ids(held):
            count = refs.get(block)
            if count is not None:
                refs[block] = count + 1
            elif block in free:
                sizes[block] = free.pop(block)
                self.free_tokens -= size
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
        """The sequence stopped (finished, preempted or cancelled): its blocks become evictable."""
        if held <= 0:
            return
        refs, free, sizes = self._refs, self._free, self._sizes
        for block in reversed(list(prefix.ids(held))):  # tail first, so the tail is evicted first
            count = refs.get(block)
            if count is None:
                continue  # cleared by a restart while the sequence ran
            if count > 1:
                refs[block] = count - 1
                continue
            del refs[block]
            size = sizes.pop(block)
            free[block] = size
            self.free_tokens += size
        self._evict_over(self.capacity_tokens)

    def fit(self, free_memory_tokens: int) -> None:
        """Evict unreferenced blocks until they fit in ``free_memory_tokens`` of KV memory."""
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
        """The replica restarted or was replaced: its KV memory is gone, the cache is cold."""
        self._refs.clear()
        self._free.clear()
        self._sizes.clear()
        self.cached_tokens = self.free_tokens = 0
