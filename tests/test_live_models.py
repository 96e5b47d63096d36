"""Built-in local models: deterministic, cached, safe to build concurrently, loadable by transformers."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from testbed.live.replica.models import RECIPES, ensure_model, resolve_model  # noqa: E402


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_recipe_builds_byte_identical_directories(tmp_path):
    first = ensure_model("tiny", tmp_path / "a")
    second = ensure_model("tiny", tmp_path / "b")
    assert first.name == second.name
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(_digests(first))
    assert _digests(first) == _digests(second)


def test_concurrent_builds_yield_one_complete_directory(tmp_path):
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_model("tiny", tmp_path))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    # no staging directories left behind, exactly one model directory
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [results[0].name]
    assert (results[0] / "model.safetensors").exists()


def test_built_model_loads_in_transformers_with_tokenizer_and_chat_template(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_model("tiny", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("the replica timed out: retry 3 times")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the replica timed out: retry 3 times"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.max_position_embeddings == RECIPES["tiny"].max_context
    assert 3e6 < sum(p.numel() for p in model.parameters()) < 6e6


def test_small_recipe_is_about_80m_parameters():
    """Checked on the meta device: the shape of "small" without building 300 MB of weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    r = RECIPES["small"]
    config = LlamaConfig(vocab_size=r.vocab_size, hidden_size=r.hidden_size, intermediate_size=r.intermediate_size,
                         num_hidden_layers=r.num_layers, num_attention_heads=r.num_heads,
                         num_key_value_heads=r.num_kv_heads, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert 70e6 < sum(p.numel() for p in model.parameters()) < 95e6


def test_resolve_model_accepts_names_and_directories_and_names_what_it_expected(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    built = resolve_model("tiny")
    assert built.parent == tmp_path / "models"
    assert resolve_model(str(built)) == built
    with pytest.raises(ValueError, match=r"'huge'.*built-in name \(tiny, small\).*config.json"):
        resolve_model("huge")
    with pytest.raises(ValueError, match="expected one of tiny, small"):
        ensure_model("huge")
