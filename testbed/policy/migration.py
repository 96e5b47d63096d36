"""Resuming a generation cut mid-stream on another replica, and checking no token was lost or doubled.

Rules (NVIDIA Dynamo's request migration, ``--migration-limit``):

* A stream that broke after ``delivered`` tokens reached the client — its replica died, or
  drained past its timeout — is re-sent elsewhere as prompt + the tokens delivered so far,
  asking only for the tokens still missing. The new replica pays the longer prefill (the
  *re-prefill*: ``delivered`` more tokens than the original prompt) but the client's stream
  simply continues.
* A request migrates at most ``limit`` times; after that a broken stream fails as before.
* A break before the first token is not a migration: nothing reached the client, so the
  gateway's ordinary retry applies.

:class:`StreamChecker` is the check, in the spirit of Jepsen's checkers: it records what each
attempt delivered to the client and verifies afterwards, for every migrated request, that the
client got every position exactly once. In simulation the records are positions. The live
gateway also records the token ids, and each resumed attempt's *seam*: the prompt its replica
reports it continued from, which must be the original prompt followed by exactly the tokens the
client had — a continuation from anything else would lose or repeat tokens even when every
position is covered once. :func:`check_stream` compares a client's token ids with an unbroken
run's (the live tests' check, with greedy decoding).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from testbed.spec import MigrationSpec


@dataclass(frozen=True, slots=True)
class Resume:
    """What the next attempt of a migrated request asks for."""

    prompt_tokens: int  # original prompt + tokens already delivered
    output_tokens: int  # tokens still missing
    offset: int  # position of the first token it will deliver
    reprefill_tokens: int  # extra prefill the migration costs


class MigrationPolicy:
    """Counts migrations per request against the limit (see module docstring)."""

    def __init__(self, limit: int, enabled: bool = True) -> None:
        self.limit = limit if enabled else 0
        self.migrations: dict[int, int] = {}

    @classmethod
    def from_spec(cls, spec: MigrationSpec) -> MigrationPolicy:
        return cls(spec.limit, spec.enabled)

    def resume(self, rid: int, prompt_tokens: int, output_tokens: int, delivered: int) -> Resume | None:
        """The resumed attempt for a stream broken after ``delivered`` tokens, or None (not migrated)."""
        if delivered <= 0 or delivered >= output_tokens:
            return None
        done = self.migrations.get(rid, 0)
        if done >= self.limit:
            return None
        self.migrations[rid] = done + 1
        return Resume(prompt_tokens + delivered, output_tokens - delivered, delivered, delivered)

    @property
    def migrated(self) -> int:
        return len(self.migrations)

    @property
    def total(self) -> int:
        return sum(self.migrations.values())


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    checked: int  # migrated requests checked
    lost: int  # token positions the client never got (or a seam left out)
    duplicated: int  # token positions the client got more than once (or a seam repeated)
    bad: tuple[int, ...] = ()  # request ids with a problem


@dataclass(slots=True)
class StreamChecker:
    """What each attempt delivered, per request; the check runs on completed requests."""

    segments: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # rid -> [(start, end)]
    tokens: dict[int, list[int]] = field(default_factory=dict)  # rid -> token ids the client got, in order (live)
    prompts: dict[int, tuple[int, ...]] = field(default_factory=dict)  # rid -> its prompt's token ids (live)
    seams: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)  # (rid, offset, prompt resumed from)

    def delivered(self, rid: int, start: int, count: int, ids: Sequence[int] | None = None) -> None:
        """Attempt of ``rid`` delivered positions ``start .. start + count - 1`` to the client
        (their token ids too, when the driver knows them)."""
        if count > 0:
            self.segments.setdefault(rid, []).append((start, start + count))
        if ids is not None:
            self.tokens.setdefault(rid, []).extend(ids)

    def began(self, rid: int, prompt: Sequence[int]) -> None:
        """``rid``'s prompt, as token ids: what every resumed attempt must continue from."""
        self.prompts.setdefault(rid, tuple(prompt))

    def resumed(self, rid: int, offset: int, prompt: Sequence[int]) -> None:
        """A resumed attempt of ``rid``, delivering from position ``offset``, was run on ``prompt``
        (as its replica reports it)."""
        self.seams.append((rid, offset, tuple(prompt)))

    def check(self, expected: dict[int, int]) -> Verdict:
        """Every request in ``expected`` (rid -> tokens it should have) got each position once,
        and each of its seams continued from its prompt plus exactly the tokens delivered before."""
        lost = duplicated = 0
        bad = set()
        for rid, length in sorted(expected.items()):
            count = [0] * length
            for start, end in self.segments.get(rid, []):
                for position in range(start, end):
                    if position < length:
                        count[position] += 1
                    else:
                        duplicated += 1
            missing = sum(1 for c in count if c == 0)
            extra = sum(c - 1 for c in count if c > 1)
            if missing or extra:
                bad.add(rid)
            lost += missing
            duplicated += extra
        for rid, offset, prompt in self.seams:
            if rid not in expected:
                continue
            should = self.prompts.get(rid, ()) + tuple(self.tokens.get(rid, [])[:offset])
            seam = check_stream(prompt, should)
            if not seam.ok:
                bad.add(rid)
            lost += seam.lost
            duplicated += seam.duplicated
        return Verdict(not bad, len(expected), lost, duplicated, tuple(sorted(bad)))


def check_stream(received: Sequence[int], reference: Sequence[int]) -> Verdict:
    """A client's token ids against an unbroken run's: lost and duplicated tokens by alignment."""
    lost = duplicated = 0
    matcher = difflib.SequenceMatcher(a=list(reference), b=list(received), autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            lost += a1 - a0
        if tag in ("insert", "replace"):
            duplicated += b1 - b0
    return Verdict(lost == 0 and duplicated == 0, 1, lost, duplicated, () if lost == duplicated == 0 else (0,))
