"""The low-level model runner: batched prefill and greedy decode with a KV cache, on CPU.

One object owns a loaded Hugging Face causal LM (float32, or int8 with dynamically quantized
Linear layers for the CPU fallback tier, switchable at run time with :meth:`ModelRunner.set_weights`)
and its tokenizer. It does no scheduling and no I/O:
the engine decides which prompts form a batch; calibration times single steps directly::

    runner = ModelRunner(ensure_model("small"), threads=2)
    t0 = time.perf_counter(); kv, nxt = runner.prefill([[1] * L] * B); t_prefill = time.perf_counter() - t0
    t0 = time.perf_counter(); nxt = runner.decode(kv, nxt); t_token = time.perf_counter() - t0

Ragged batches are left-padded: every row's last prompt token sits in the last column, so one
decode step appends one column for all rows. The attention mask hides the padding and position
ids count only real tokens, so a prompt yields the same tokens alone or in any batch. Rows leave
the batch as their sequences finish (:meth:`KVBatch.keep`); none join a running batch — that is
the micro-batching discipline the engine follows.

A prefill can start from cached keys and values of each prompt's first tokens (a prefix cache
hit, see :mod:`testbed.live.replica.prefix_cache`): those tokens form the model's past and only the
rest of each prompt is computed, so the hit really saves that compute.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from testbed.live.replica.prefix_cache import Hit

QUANTIZE_MODES = ("int8",)
WEIGHTS = ("float32", *QUANTIZE_MODES)


@dataclass
class KVBatch:
    """The state of a running batch: the KV cache, which cache columns are real, next positions.

    ``starts[row]`` says where the row's prompt sits: the column of its first cached token and
    the column its first prompt token would have in the computed part (so prompt token ``t``
    is at ``starts[row][0] + t`` if ``t < reused[row]``, else at ``starts[row][1] + t``).
    """

    cache: object  # a transformers Cache, [rows, heads, columns, head_dim] per layer
    attention_mask: torch.Tensor  # [rows, columns]; 0 marks padding
    positions: torch.Tensor  # [rows]; position id of each row's next token
    starts: list[tuple[int, int]] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)  # prompt tokens taken from the prefix cache

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order): finished sequences stop costing compute."""
        if list(rows) == list(range(self.size)):
            return
        index = torch.tensor(list(rows), dtype=torch.long)
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.positions = self.positions[index]
        self.starts = [self.starts[r] for r in rows]
        self.reused = [self.reused[r] for r in rows]

    def prompt_kv(self, row: int, start: int, stop: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values [heads, tokens, head_dim] of prompt tokens ``start..stop``
        of ``row``, which must all have been computed in this batch (none reused)."""
        if start < self.reused[row]:
            raise ValueError(f"tokens {start}..{stop} of row {row} include reused ones (first {self.reused[row]})")
        first = self.starts[row][1] + start
        return [(layer.keys[row, :, first:first + stop - start], layer.values[row, :, first:first + stop - start])
                for layer in self.cache.layers]


class ModelRunner:
    """A loaded model that runs one batched prefill or one batched decode step per call."""

    def __init__(self, model_dir: str | Path, quantize: str | None = None, threads: int | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if quantize is not None and quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize: expected one of {', '.join(QUANTIZE_MODES)} or None, got {quantize!r}")
        if threads is not None:
            torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()
        self.model_dir = Path(model_dir)
        self.quantize = quantize
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32, attn_implementation="sdpa")
        model.eval()
        self._variants: dict[str, torch.nn.Module] = {"float32": model}
        self.weights = "float32"
        self.model = model
        if quantize == "int8":
            self.set_weights("int8")
        config = model.config
        self.max_context: int = int(getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        self.eos_token_ids: frozenset[int] = _eos_ids(self.tokenizer, model)
        self.eos_token_id: int | None = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else (self.eos_token_id or 0)

    def set_weights(self, weights: str) -> None:
        """Serve from float32 or int8 weights from the next step on.

        The float32 model stays loaded, so switching back is exact; the int8 variant is built on
        first use (a few hundred milliseconds on the small model) and kept. Call it between
        steps: the engine runs it in its step thread.
        """
        if weights not in WEIGHTS:
            raise ValueError(f"weights: expected one of {', '.join(WEIGHTS)}, got {weights!r}")
        if weights not in self._variants:
            self._variants[weights] = _quantize_int8(self._variants["float32"])
        self.model = self._variants[weights]
        self.weights = weights
        self.quantize = None if weights == "float32" else weights

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, with the special tokens the model expects (e.g. BOS) unless told
        not to (a rendered chat template may already start with them)."""
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode_text(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; no clean-up of spaces, so the text of a prefix is a prefix of the text
        (streaming relies on it)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], cached: Sequence[Hit | None] | None = None
                ) -> tuple[KVBatch, list[int]]:
        """Run the prompts as one batch; return its KV state and each row's next token.

        ``cached[i]``, when given, holds the keys and values of row ``i``'s first tokens (from
        the prefix cache): those tokens are not computed again, only the rest of the prompt is.
        Each row is laid out as ``[pad][cached][pad][computed]``: the cached columns come first,
        as the model's past, and every row's last prompt token sits in the last column.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one prompt, and every prompt at least one token")
        hits = list(cached) if cached is not None else [None] * len(prompts)
        if len(hits) != len(prompts):
            raise ValueError(f"prefill got {len(hits)} cache hits for {len(prompts)} prompts")
        reused = [h.tokens if h is not None else 0 for h in hits]
        if any(c >= len(p) for c, p in zip(reused, prompts)):
            raise ValueError("a cache hit must leave at least the prompt's last token to compute")
        past_width = max(reused)
        width = max(len(p) - c for p, c in zip(prompts, reused))
        rows = len(prompts)
        ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((rows, past_width + width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        for row, (prompt, reuse) in enumerate(zip(prompts, reused)):
            todo = len(prompt) - reuse
            ids[row, width - todo:] = torch.tensor(list(prompt[reuse:]), dtype=torch.long)
            mask[row, past_width - reuse:past_width] = 1
            mask[row, past_width + width - todo:] = 1
            positions[row, width - todo:] = torch.arange(reuse, len(prompt))
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if past_width:
            for layer, (keys, values) in enumerate(_past_columns(hits, reused, past_width)):
                cache.update(keys, values, layer)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        starts = [(past_width - c, past_width + width - len(p)) for p, c in zip(prompts, reused)]
        kv = KVBatch(cache=out.cache, attention_mask=mask, positions=torch.tensor([len(p) for p in prompts]),
                     starts=starts, reused=reused)
        return kv, out.logits[:, -1, :].argmax(-1).tolist()

    @torch.inference_mode()
    def decode(self, kv: KVBatch, tokens: Sequence[int]) -> list[int]:
        """Feed each row its last token; advance ``kv`` one column; return the next tokens."""
        if len(tokens) != kv.size:
            raise ValueError(f"decode got {len(tokens)} tokens for a batch of {kv.size} rows")
        ids = torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)
        kv.attention_mask = torch.cat([kv.attention_mask, torch.ones((kv.size, 1), dtype=torch.long)], dim=1)
        out = self.model(input_ids=ids, attention_mask=kv.attention_mask, position_ids=kv.positions.unsqueeze(1),
                         cache=kv.cache, use_cache=True)
        kv.cache = out.cache
        kv.positions = kv.positions + 1
        return out.logits[:, -1, :].argmax(-1).tolist()


def _past_columns(hits: Sequence[Hit | None], reused: Sequence[int], width: int):
    """Per layer, the batch's past keys and values [rows, heads, width, head_dim]: each row's
    cached tokens right-aligned, zeros (masked) before them."""
    sample = next(h for h in hits if h is not None and h.kv is not None).kv
    for layer, (keys, values) in enumerate(sample):
        heads, _, head_dim = keys.shape
        past_k = keys.new_zeros((len(hits), heads, width, head_dim))
        past_v = values.new_zeros((len(hits), heads, width, head_dim))
        for row, (hit, reuse) in enumerate(zip(hits, reused)):
            if reuse:
                past_k[row, :, width - reuse:] = hit.kv[layer][0]
                past_v[row, :, width - reuse:] = hit.kv[layer][1]
        yield past_k, past_v


def _quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every Linear layer: int8 weights, activations quantized per call.

    The API is deprecated in favour of torchao, which is not a dependency; it still works and is
    the standard CPU recipe (about 2.8x faster and 4x smaller on an 80M-parameter model).
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)


def _eos_ids(tokenizer, model) -> frozenset[int]:
    """Every id that ends generation: the tokenizer's EOS and the generation config's (maybe a list)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    configured = getattr(gen, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return frozenset(ids)
