"""Live replay's prompts: token ids that share prefixes exactly as the simulated requests do.

The simulator knows each request's chain of block ids (:mod:`testbed.prefixes`: system prompts,
chat conversations; a Mooncake trace's ``hash_ids``) and its caches share KV as far as two
chains share leading ids. The live replicas know only tokens. So replay writes every chain block
as ``block_tokens`` token ids that depend on the block's id alone — the same id gives the same
tokens in every request of the run — and fills the rest of the prompt (past the chain, or all of
it without one) with tokens of the request's own. Two live prompts then share leading tokens
exactly as far as their chains share leading ids, and the replicas' caches, which hash their own
blocks over those tokens, find what the simulated caches find. (One granularity differs: a chain
block partly inside a prompt — a Mooncake prompt's last, partial 512-token block — is written
partly, and a live cache of 16-token blocks may reuse the shared part, where the simulated one
caches whole chain blocks only.)

Requests of a session (a chat conversation) carry it as the body's ``user``, the field OpenAI
clients tag end users with, which the live gateway's ``session_affinity`` router keys on.
"""

from __future__ import annotations

import functools
import random

import numpy as np

from testbed.prefixes import PrefixColumns

FIRST_TOKEN = 16  # token ids above the special tokens (the built-in tokenizers put them first)


def independent_prompts(lengths: list[int], rng: random.Random, vocabulary: int) -> list[list[int]]:
    """Prompts of the given lengths that share nothing (a workload without prefix structure)."""
    return [[rng.randrange(FIRST_TOKEN, vocabulary) for _ in range(n)] for n in lengths]


def structured_prompts(
    lengths: list[int], chains: PrefixColumns, rng: random.Random, vocabulary: int
) -> list[list[int]]:
    """Each prompt: its chain's blocks (tokens fixed by block id), then tokens of its own."""
    key = rng.getrandbits(63)  # the run's block alphabet: which tokens stand for block id k
    blocks = _BlockTokens(key, chains.block_tokens, vocabulary)
    prompts = []
    for i, length in enumerate(lengths):
        prompt: list[int] = []
        for block in chains.prefix(i).ids():
            if len(prompt) >= length:
                break
            prompt.extend(blocks.tokens(block))
        del prompt[length:]
        prompt.extend(rng.randrange(FIRST_TOKEN, vocabulary) for _ in range(length - len(prompt)))
        prompts.append(prompt)
    return prompts


def session_users(chains: PrefixColumns | None, n: int) -> list[str | None]:
    """The ``user`` each request is sent with: its session's, or None outside sessions."""
    if chains is None:
        return [None] * n
    return [f"session-{s}" if s >= 0 else None for s in chains.session.tolist()]


class _BlockTokens:
    """Token ids of chain blocks, drawn from a generator seeded by (run, block id); the recent
    blocks are kept, since shared ones (system prompts, a conversation's start) recur."""

    def __init__(self, key: int, block_tokens: int, vocabulary: int) -> None:
        self.key, self.size, self.vocabulary = key, block_tokens, vocabulary
        self.tokens = functools.lru_cache(maxsize=1 << 14)(self._draw)

    def _draw(self, block: int) -> tuple[int, ...]:
        rng = np.random.default_rng([self.key, block])
        return tuple(rng.integers(FIRST_TOKEN, self.vocabulary, self.size).tolist())
