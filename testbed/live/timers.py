"""Step timers for calibration: the built-in PyTorch engine's runner, timed call by call.

A timer answers the two questions of :class:`testbed.calibrate.StepTimer` by running the real
model. Prompts are random token ids from a seeded stream (the text does not change the compute,
and special tokens are avoided so that nothing ends early); they are built before the clock
starts so that only the model's work is timed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from testbed.live.runner import ModelRunner


class TorchTimer:
    """Times :class:`~testbed.live.runner.ModelRunner` prefill and decode calls."""

    def __init__(self, model_dir: str | Path, quantize: str | None = None, threads: int | None = 1, seed: int = 0) -> None:
        self.runner = ModelRunner(model_dir, quantize=quantize, threads=threads)
        self.rng = random.Random(seed)
        specials = set(self.runner.tokenizer.all_special_ids)
        self.tokens = [t for t in range(len(self.runner.tokenizer)) if t not in specials]

    def _prompts(self, batch: int, length: int) -> list[list[int]]:
        return [[self.rng.choice(self.tokens) for _ in range(length)] for _ in range(batch)]

    def prefill(self, batch: int, prompt_tokens: int) -> float:
        prompts = self._prompts(batch, prompt_tokens)
        started = time.perf_counter()
        self.runner.prefill(prompts)
        return time.perf_counter() - started

    def decode(self, batch: int, context_tokens: int, steps: int) -> float:
        kv, tokens = self.runner.prefill(self._prompts(batch, context_tokens))
        started = time.perf_counter()
        for _ in range(steps):
            tokens = self.runner.decode(kv, tokens)
        return time.perf_counter() - started
