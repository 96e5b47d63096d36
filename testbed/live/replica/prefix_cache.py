"""The built-in engine's prefix cache: KV tensors of prompt blocks, kept and reused across requests.

A prompt is cut into blocks of ``block_size`` tokens, each named by a hash chain (a name
stands for its block and everything before it), the scheme of vLLM's automatic prefix caching.
Which names are cached — reference counts while sequences run, least-recently-used eviction of
the unreferenced ones beyond the capacity, leaves before the prefix they hang from, the rule
that the last prompt token is always computed — is decided by
:class:`testbed.policy.prefix_cache.PrefixCache`, the very class the simulated replicas run.
This module only keeps real keys and values for the names that policy holds: before a prefill
it hands the runner the tensors of each prompt's cached start, which then computes only the
rest of the prompt; after it, it stores the new full blocks. The skipped compute is the point:
a hit is cheaper because the work is really not done, not because a model says so.

The cache lives in the replica's memory, so a restarted replica starts cold, and a weights
switch (float32 <-> int8) empties it: keys and values computed under other weights would
change the output. Stored tensors are copies, never views into a running batch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from testbed.policy.prefix_cache import DEFAULT_BLOCK_SIZE, Prefix, PrefixCache, chain_hashes

if TYPE_CHECKING:  # torch is imported where tensors are handled: the constants here are read without it
    import torch

DEFAULT_CAPACITY_BYTES = 256 * 1024**2  # the KV memory the vLLM replicas are given (vllm.py)


@dataclass(frozen=True)
class Hit:
    """A lookup's answer for one prompt: how many leading tokens are reused, and their KV."""

    tokens: int
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None  # per layer [heads, tokens, head_dim]
    held: int = 0  # blocks the sequence references until :meth:`KVPrefixCache.release`
    prefix: Prefix | None = None


@dataclass
class CacheCounters:
    """vLLM's prefix-cache counters, in tokens: prompt tokens looked up, and of those reused."""

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
    """Block KV tensors, kept for exactly the blocks the policy's :class:`PrefixCache` holds.

    Thread-safe: the engine looks up and stores from its step thread and releases from its
    event loop, and a weights switch clears from the step thread.
    """

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, capacity_blocks: int = 0) -> None:
        if block_size < 1:
            raise ValueError(f"block_size: expected a number of tokens >= 1, got {block_size}")
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks: expected a number of blocks >= 0, got {capacity_blocks}")
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        self.policy = PrefixCache(capacity_blocks * block_size, block_size)
        self._blocks: dict[int, tuple[tuple[torch.Tensor, torch.Tensor], ...]] = {}  # per layer: keys, values
        self._lock = threading.Lock()
        self.counters = CacheCounters()

    @property
    def blocks(self) -> int:
        """Blocks whose keys and values are held now."""
        return len(self._blocks)

    def acquire(self, prompt: Sequence[int]) -> Hit:
        """Reference the prompt's blocks and hand back the keys and values of its cached start.

        The policy decides how many tokens are cached (whole blocks, never the last prompt
        token). A block the policy counts as cached but whose tensors do not exist yet — another
        prompt of the same batch is computing it right now — ends the reusable run there: those
        tokens are computed again, and not reported as cached.
        """
        names = chain_hashes(prompt, self.block_size)
        prefix = Prefix(tuple((name, 1) for name in names), self.block_size)
        with self._lock:
            cached, held = self.policy.acquire(prefix, len(prompt))
            present = 0
            while present < len(names) and names[present] in self._blocks:
                present += 1
            reuse = min(cached, present * self.block_size)
            blocks = [self._blocks[name] for name in names[:-(-reuse // self.block_size)]] if reuse else []
            self._prune()
            self.counters.queries += len(prompt)
            self.counters.hits += reuse
        if not reuse:
            return Hit(0, None, held, prefix)
        import torch

        kv = tuple(
            (torch.cat([b[layer][0] for b in blocks], dim=1)[:, :reuse],
             torch.cat([b[layer][1] for b in blocks], dim=1)[:, :reuse])
            for layer in range(len(blocks[0]))
        )
        return Hit(reuse, kv, held, prefix)

    def store(self, prompt: Sequence[int], hit: Hit, kv_of) -> None:
        """Keep the keys and values of the prompt's full blocks the policy holds and we lack.

        ``kv_of(start, stop)`` gives the per-layer keys and values of prompt tokens
        ``start..stop`` computed in this prefill (the runner's batch knows where they sit).
        """
        if hit.prefix is None:
            return
        with self._lock:
            for index, name in enumerate(hit.prefix.ids()):
                start = index * self.block_size
                if name in self._blocks or name not in self.policy or start < hit.tokens:
                    continue
                self._blocks[name] = tuple((k.clone(), v.clone()) for k, v in kv_of(start, start + self.block_size))

    def release(self, hit: Hit) -> None:
        """The sequence left the batch: its blocks become evictable (least recently used first)."""
        if hit.prefix is None:
            return
        with self._lock:
            self.policy.release(hit.prefix, hit.held)
            self._prune()

    def clear(self) -> None:
        """Forget every block (the counters keep counting: they are totals, like vLLM's)."""
        with self._lock:
            self.policy.clear()
            self._blocks.clear()

    def _prune(self) -> None:
        """Drop the tensors of blocks the policy evicted."""
        if len(self._blocks) > len(self.policy):
            for name in [n for n in self._blocks if n not in self.policy]:
                del self._blocks[name]
