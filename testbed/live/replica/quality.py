"""What int8 weights cost in answer quality, measured on a held-out text against float32.

Two figures, both from one forward pass per window of text under each set of weights:

* **next-token agreement**: the share of positions where int8's greedy choice equals
  float32's — the chance a greedy answer's next token is unchanged;
* **perplexity** of each on the text (exp of the mean next-token cross-entropy), and their
  difference.

The held-out text is the project's own: the built-in models' tokenizer is trained on
:func:`testbed.live.replica.models.corpus` with the recipe's seed, and the text here is drawn from
the same generator with another seed, so it is new to the tokenizer and to any model trained
on the training text. The built-in weights are random, so absolute perplexities are near the
vocabulary size; the comparison between the two weight sets is what carries over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from testbed.live.replica.models import corpus
from testbed.live.replica.runner import ModelRunner

HELD_OUT_SEED = 7919  # any seed but the recipes' (0): text the tokenizer was not trained on


@dataclass(frozen=True)
class QualityCost:
    """int8 against float32 on the same tokens."""

    tokens: int  # positions scored
    agreement: float  # share of positions where the greedy next token is the same
    perplexity_float32: float
    perplexity_int8: float

    @property
    def perplexity_increase(self) -> float:
        """Relative increase of perplexity from float32 to int8 (0.01 = 1% worse)."""
        return self.perplexity_int8 / self.perplexity_float32 - 1.0


def held_out_ids(runner: ModelRunner, lines: int = 200, seed: int = HELD_OUT_SEED) -> list[int]:
    """The held-out text, tokenized: ``lines`` generated sentences joined by spaces."""
    return runner.encode(" ".join(corpus(seed, lines)), add_special_tokens=False)


@torch.inference_mode()
def _score(model: torch.nn.Module, windows: list[list[int]]) -> tuple[torch.Tensor, float, int]:
    """Greedy choices at every position, summed next-token negative log-likelihood, positions."""
    choices, nll, count = [], 0.0, 0
    for window in windows:
        ids = torch.tensor([window], dtype=torch.long)
        logits = model(input_ids=ids).logits[0, :-1].float()
        targets = ids[0, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += int(targets.numel())
        choices.append(logits.argmax(-1))
    return torch.cat(choices), nll, count


def quality_cost(runner: ModelRunner, ids: list[int], window: int | None = None) -> QualityCost:
    """Score ``ids`` (cut into context-sized windows) under float32 and int8 weights.

    The runner is left on the weights it had.
    """
    window = window or runner.max_context
    windows = [ids[i:i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) > 1]
    if not windows:
        raise ValueError("quality_cost needs at least two tokens of text")
    before = runner.weights
    try:
        runner.set_weights("float32")
        ref, nll_ref, count = _score(runner.model, windows)
        runner.set_weights("int8")
        got, nll_q, _ = _score(runner.model, windows)
    finally:
        runner.set_weights(before)
    return QualityCost(count, float((ref == got).float().mean()), math.exp(nll_ref / count), math.exp(nll_q / count))
