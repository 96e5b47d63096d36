"""Switching a loaded model between float32 and int8 weights at run time, on the tiny model.

The switch must really change the weights (int8 tensors in every Linear layer, not a flag),
keep the answers sane (valid tokens, deterministic, close to float32 by the quality measures)
and be reversible exactly: back on float32, the answers are the float32 answers again.
"""

from __future__ import annotations

import math
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from testbed.live.replica.models import ensure_model  # noqa: E402
from testbed.live.replica.quality import held_out_ids, quality_cost  # noqa: E402
from testbed.live.replica.runner import ModelRunner  # noqa: E402

PROMPTS = ["the server request timed out and the replica", "hello world", "GPU CPU batch queue retry"]


@pytest.fixture(scope="module")
def runner():
    return ModelRunner(ensure_model("tiny"), threads=1)


def greedy(runner: ModelRunner, steps: int = 12) -> list[list[int]]:
    kv, nxt = runner.prefill([runner.encode(p) for p in PROMPTS])
    out = [[t] for t in nxt]
    for _ in range(steps - 1):
        nxt = runner.decode(kv, nxt)
        for row, token in zip(out, nxt):
            row.append(token)
    return out


def linear_weight_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    dtypes = set()
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            dtypes.add(module.weight.dtype)
        elif isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            dtypes.add(module.weight().dtype)
    return dtypes


def test_the_switch_changes_the_weights_dtype_and_back(runner):
    assert runner.weights == "float32" and linear_weight_dtypes(runner.model) == {torch.float32}
    float32_model = runner.model
    runner.set_weights("int8")
    try:
        assert runner.weights == "int8" and runner.quantize == "int8"
        assert linear_weight_dtypes(runner.model) == {torch.qint8}
        assert linear_weight_dtypes(float32_model) == {torch.float32}  # the float32 copy is untouched
    finally:
        runner.set_weights("float32")
    assert runner.model is float32_model and runner.quantize is None
    with pytest.raises(ValueError, match="weights: expected one of float32, int8, got 'int4'"):
        runner.set_weights("int4")


def test_int8_answers_stay_sane_and_float32_comes_back_exactly(runner):
    reference = greedy(runner)
    runner.set_weights("int8")
    try:
        quantized = greedy(runner)
        assert greedy(runner) == quantized  # deterministic
    finally:
        runner.set_weights("float32")
    vocab = runner.model.config.vocab_size
    assert all(len(row) == 12 and all(0 <= t < vocab for t in row) for row in quantized)
    assert all(isinstance(runner.decode_text(row), str) for row in quantized)
    assert greedy(runner) == reference


def test_quality_cost_is_measured_against_float32(runner):
    ids = held_out_ids(runner, lines=40)
    cost = quality_cost(runner, ids, window=256)
    assert cost.tokens == len(ids) - math.ceil(len(ids) / 256)  # every position but each window's first
    assert 0.5 < cost.agreement < 1.0  # int8 really differs, and mostly agrees
    assert math.isfinite(cost.perplexity_float32) and math.isfinite(cost.perplexity_int8)
    assert abs(cost.perplexity_increase) < 0.05
    assert runner.weights == "float32"  # left as it was
    with pytest.raises(ValueError, match="at least two tokens"):
        quality_cost(runner, ids[:1])
