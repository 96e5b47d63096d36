"""Prefix structure of a workload: every request's block-id chain, columnar and compact.

A request's chain (see :mod:`testbed.policy.prefix_cache`) is stored as *runs* of consecutive
ids: a synthetic request is a system prompt's run followed by its conversation's run, so a
million requests with 4,000-token prompts hold a few million integers rather than 250 million
block ids. Mooncake's ``hash_ids`` compress the same way (a request's new blocks are numbered
consecutively in the trace).

Id spaces never collide: trace ids are below 2**40, system prompts live at 2**40 + ..., and
conversation ``c`` owns ids 2**41 + c * 2**24 onward (2**24 blocks is far beyond any context),
agent session ``s`` ids 2**50 + s * 2**24 onward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.policy.prefix_cache import Prefix
from testbed.spec import ChatSpec, SystemPromptSpec

SYSTEM_BASE = 1 << 40
CONVERSATION_BASE = 1 << 41
CONVERSATION_SPAN = 1 << 24
AGENT_BASE = 1 << 50


@dataclass(eq=False)
class PrefixColumns:
    """Per request: runs ``offsets[i]:offsets[i+1]`` of (``first``, ``count``), and a session."""

    offsets: np.ndarray  # int64, len n + 1
    first: np.ndarray  # int64 per run
    count: np.ndarray  # int64 per run
    session: np.ndarray  # int64 per request, -1 when the request belongs to none
    block_tokens: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def prefix(self, i: int) -> Prefix:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        runs = tuple(zip(self.first[lo:hi].tolist(), self.count[lo:hi].tolist()))
        return Prefix(runs, self.block_tokens, int(self.session[i]))

    def take(self, rows: slice | np.ndarray) -> PrefixColumns:
        """The chains of ``rows`` (a reordering or subset), runs gathered without a Python loop."""
        index = np.arange(len(self))[rows]
        starts, lengths = self.offsets[:-1][index], np.diff(self.offsets)[index]
        gather = _ranges(starts, lengths)
        return PrefixColumns(
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            self.first[gather],
            self.count[gather],
            self.session[index],
            self.block_tokens,
        )

    @classmethod
    def none(cls, n: int, block_tokens: int) -> PrefixColumns:
        """``n`` requests sharing nothing (empty chains)."""
        empty = np.empty(0, dtype=np.int64)
        return cls(np.zeros(n + 1, dtype=np.int64), empty, empty, np.full(n, -1, dtype=np.int64), block_tokens)

    @classmethod
    def concat(cls, parts: list[PrefixColumns]) -> PrefixColumns:
        sizes = [len(p) for p in parts]
        run_counts = [len(p.first) for p in parts]
        shifts = np.repeat(np.concatenate([[0], np.cumsum(run_counts)[:-1]]), sizes)
        offsets = np.concatenate([p.offsets[:-1] for p in parts] + [[sum(run_counts)]])
        offsets[:-1] += shifts
        return cls(
            offsets.astype(np.int64),
            np.concatenate([p.first for p in parts]),
            np.concatenate([p.count for p in parts]),
            np.concatenate([p.session for p in parts]),
            parts[0].block_tokens,
        )

    @classmethod
    def from_id_lists(cls, ids: np.ndarray, lengths: np.ndarray, block_tokens: int) -> PrefixColumns:
        """From flat ids (request after request) and each request's number of ids."""
        ids = ids.astype(np.int64)
        request = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        new_run = np.ones(len(ids), dtype=bool)
        new_run[1:] = (ids[1:] != ids[:-1] + 1) | (request[1:] != request[:-1])
        run_at = np.flatnonzero(new_run)
        count = np.diff(np.concatenate([run_at, [len(ids)]])).astype(np.int64)
        offsets = np.searchsorted(request[run_at], np.arange(len(lengths) + 1), side="left").astype(np.int64)
        return cls(offsets, ids[run_at], count, np.full(len(lengths), -1, dtype=np.int64), block_tokens)

    def shifted(self, by: int) -> PrefixColumns:
        """The same chains with every id moved by ``by`` (a copy of a trace: other users)."""
        return PrefixColumns(self.offsets, self.first + by, self.count, self.session, self.block_tokens)

    def max_id(self) -> int:
        return int((self.first + self.count - 1).max()) if len(self.first) else -1


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    base = np.repeat(starts - (ends - lengths), lengths)
    return base + np.arange(total)


# --------------------------------------------------------------------------- synthetic structure


def system_prompts(
    spec: SystemPromptSpec, request_class: np.ndarray, block_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each request's system prompt: (first id of its run, run length), drawn within its class."""
    blocks = spec.tokens // block_tokens
    choice = rng.integers(0, spec.count, size=len(request_class))
    prompt = request_class.astype(np.int64) * spec.count + choice
    return SYSTEM_BASE + prompt * blocks, np.full(len(request_class), blocks, dtype=np.int64)


def chat_conversations(
    spec: ChatSpec,
    user_tokens: np.ndarray,
    output_tokens: np.ndarray,
    turns: np.ndarray,
    rng: np.random.Generator,
    reserved: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign arrivals to conversations; returns (conversation per arrival, conversation context).

    Open loop, as in the Mooncake synthetic trace: arrival i starts a new conversation with
    probability 1 / mean turns (or when none is open), else continues an open one chosen
    uniformly. ``turns`` is a drawn turn count per potential conversation; a conversation closes
    after its turns, or when its next prompt would pass ``max_context`` (then the arrival starts
    a new one). The context returned is the conversation's tokens before this arrival's user
    message (previous prompts' user parts and answers); ``reserved`` tokens (a system prompt)
    count against ``max_context`` too.
    """
    n = len(user_tokens)
    mean_turns = max(1.0, float(turns.mean())) if len(turns) else 1.0
    new_draw = rng.random(n) < 1.0 / mean_turns
    pick_draw = rng.random(n)
    conversation = np.empty(n, dtype=np.int64)
    context = np.empty(n, dtype=np.int64)
    open_ids: list[int] = []  # open conversations (swap-remove keeps this O(1))
    position: dict[int, int] = {}
    left: list[int] = []  # turns left per conversation
    size: list[int] = []  # tokens so far per conversation
    users, outputs = user_tokens.tolist(), output_tokens.tolist()
    for i in range(n):
        conv = -1
        if open_ids and not new_draw[i]:
            conv = open_ids[int(pick_draw[i] * len(open_ids))]
            if size[conv] + users[i] + reserved > spec.max_context:
                _close(conv, open_ids, position)
                conv = -1
        if conv < 0:
            conv = len(left)
            left.append(int(turns[conv % len(turns)]))
            size.append(0)
            position[conv] = len(open_ids)
            open_ids.append(conv)
        conversation[i] = conv
        context[i] = size[conv]
        size[conv] += users[i] + outputs[i]
        left[conv] -= 1
        if left[conv] <= 0:
            _close(conv, open_ids, position)
    return conversation, context


def _close(conv: int, open_ids: list[int], position: dict[int, int]) -> None:
    at = position.pop(conv)
    last = open_ids.pop()
    if last != conv:
        open_ids[at] = last
        position[last] = at


def per_conversation(run: tuple[np.ndarray, np.ndarray], conversation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each request's ``run`` replaced by the one its conversation's first turn has.

    A chat turn's prompt is the previous turn's plus more, system prompt included; a turn that
    drew another system prompt would share its conversation's ids after a different start,
    which no real cache could reuse (a chain id stands for everything before it).
    """
    if not len(conversation):
        return run
    _, first, inverse = np.unique(conversation, return_index=True, return_inverse=True)
    at = first[inverse]
    return run[0][at], run[1][at]


def conversation_runs(conversation: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each request's conversation run: the conversation's own id space, ``blocks`` long."""
    return CONVERSATION_BASE + conversation * CONVERSATION_SPAN, blocks.astype(np.int64)


def agent_runs(session: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each agent call's run in its session's own id space, ``blocks`` long."""
    return AGENT_BASE + session.astype(np.int64) * CONVERSATION_SPAN, blocks.astype(np.int64)


def from_runs(runs: list[tuple[np.ndarray, np.ndarray]], session: np.ndarray, block_tokens: int) -> PrefixColumns:
    """Per request, the given runs in order (each a (first, count) column pair); empty runs dropped."""
    n = len(session)
    firsts = np.stack([first for first, _ in runs], axis=1) if runs else np.empty((n, 0), dtype=np.int64)
    counts = np.stack([count for _, count in runs], axis=1) if runs else np.empty((n, 0), dtype=np.int64)
    keep = counts > 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    return PrefixColumns(offsets, firsts[keep].astype(np.int64), counts[keep].astype(np.int64), session, block_tokens)
