"""The built-in engine's prefix cache: KV tensors of prompt blocks, kept and reused across requests.

A prompt is cut into blocks of ``block_size`` tokens; each full block is named by a hash chain
(the hash of its parent's name and its own tokens), so a name stands for the whole prefix up to
and including that block — the scheme of vLLM's automatic prefix caching. After a prefill the
engine stores the keys and values of every new full block; before the next prefill it looks up
the longest run of leading blocks it holds and hands their tensors to the runner, which then
computes only the rest of the prompt. That skipped compute is the point: a hit is cheaper
because the work is really not done, not because a model says so.

Rules, as in vLLM:

* only full blocks are cached, and a hit is always a whole number of blocks;
* at least the prompt's last token is computed (its logits give the first output token), so a
  prompt of exactly ``n`` blocks can reuse at most ``n - 1`` of them;
* blocks are evicted least recently used first once the capacity (in blocks) is full; a block
  that is used again moves to the back of the line;
* the cache lives in the replica's memory, so a restarted replica starts cold, and switching
  the weights (float32 <-> int8) empties it: keys and values computed under other weights
  would change the output.

Stored tensors are copies, never views into a running batch, so eviction never has to wait for
a sequence to finish. The bookkeeping (names and LRU order) is :class:`BlockLRU`, kept apart
from the tensors so the simulator's block policy can take its place.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_BLOCK_SIZE = 16  # vLLM's default block size on GPUs
DEFAULT_CAPACITY_BYTES = 256 * 1024**2  # the KV memory the vLLM replicas are given (vllm_replica.py)

BlockKV = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer: keys, values [heads, block, head_dim]


def block_hashes(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """The chained names of the full blocks of ``tokens``: equal names mean equal prefixes."""
    names: list[bytes] = []
    parent = b""
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start:start + block_size]
        digest = hashlib.blake2b(parent, digest_size=16)
        digest.update(b",".join(str(int(t)).encode() for t in block))
        parent = digest.digest()
        names.append(parent)
    return names


class BlockLRU:
    """Which block names are cached, in least-recently-used order, within ``capacity`` blocks."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity: expected a number of blocks >= 0, got {capacity}")
        self.capacity = capacity
        self._order: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: bytes) -> bool:
        return name in self._order

    def match(self, names: Sequence[bytes]) -> int:
        """How many leading ``names`` are cached; those become the most recently used."""
        hits = 0
        for name in names:
            if name not in self._order:
                break
            hits += 1
        for name in names[:hits]:
            self._order.move_to_end(name)
        return hits

    def add(self, names: Sequence[bytes]) -> list[bytes]:
        """Cache ``names`` (most recently used last); return the names evicted to make room."""
        evicted: list[bytes] = []
        for name in names:
            if name in self._order:
                self._order.move_to_end(name)
                continue
            if self.capacity == 0:
                break
            if len(self._order) >= self.capacity:
                evicted.append(self._order.popitem(last=False)[0])
            self._order[name] = None
        return evicted

    def clear(self) -> None:
        self._order.clear()


@dataclass(frozen=True)
class Hit:
    """A lookup's answer for one prompt: how many leading tokens are cached, and their KV."""

    tokens: int
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None  # per layer [heads, tokens, head_dim]


@dataclass
class CacheCounters:
    """vLLM's prefix-cache counters, in tokens: prompt tokens looked up, and of those found."""

    queries: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def block_bytes(config, block_size: int) -> int:
    """Bytes one cached block takes for a model ``config``: keys and values of every layer."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * block_size * 4  # float32


class KVPrefixCache:
    """Block KV tensors by name, under a :class:`BlockLRU` of ``capacity_blocks``."""

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, capacity_blocks: int = 0) -> None:
        if block_size < 1:
            raise ValueError(f"block_size: expected a number of tokens >= 1, got {block_size}")
        self.block_size = block_size
        self.lru = BlockLRU(capacity_blocks)
        self._blocks: dict[bytes, BlockKV] = {}
        self.counters = CacheCounters()

    @property
    def blocks(self) -> int:
        """Blocks held now."""
        return len(self._blocks)

    def lookup(self, prompt: Sequence[int]) -> Hit:
        """The longest cached run of the prompt's leading blocks, leaving its last token to compute."""
        usable = (len(prompt) - 1) // self.block_size
        names = block_hashes(prompt[:usable * self.block_size], self.block_size)
        found = self.lru.match(names)
        self.counters.queries += len(prompt)
        self.counters.hits += found * self.block_size
        if not found:
            return Hit(0, None)
        blocks = [self._blocks[name] for name in names[:found]]
        layers = len(blocks[0])
        kv = tuple(
            (torch.cat([b[layer][0] for b in blocks], dim=1), torch.cat([b[layer][1] for b in blocks], dim=1))
            for layer in range(layers)
        )
        return Hit(found * self.block_size, kv)

    def store(self, prompt: Sequence[int], cached: int, kv_of) -> None:
        """Keep the prompt's full blocks after its first ``cached`` tokens.

        ``kv_of(start, stop)`` gives the per-layer keys and values of prompt tokens
        ``start..stop`` (the runner's batch knows where each row's tokens sit).
        """
        names = block_hashes(prompt, self.block_size)
        first = cached // self.block_size
        new = [(i, name) for i, name in enumerate(names[first:], start=first) if name not in self.lru]
        for index, name in new:
            start = index * self.block_size
            self._blocks[name] = tuple((k.clone(), v.clone()) for k, v in kv_of(start, start + self.block_size))
        for name in self.lru.add(names[first:]):
            self._blocks.pop(name, None)
        for index, name in new:  # a capacity of 0 (or a prompt longer than it) keeps nothing
            if name not in self.lru:
                self._blocks.pop(name, None)

    def clear(self) -> None:
        """Forget every block (the counters keep counting: they are totals, like vLLM's)."""
        self.lru.clear()
        self._blocks.clear()
