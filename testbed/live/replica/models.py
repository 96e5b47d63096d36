"""Local models: Llama-architecture decoders the testbed builds itself, in Hugging Face format.

No model hub is reachable, so the live plane creates its own models: a byte-level BPE tokenizer
trained on generated text and a ``LlamaForCausalLM`` with seeded random weights, saved as a
normal Hugging Face directory (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with a chat template). Anything that loads a local HF model — our
engine, transformers, vLLM — loads these the same way, and any other local HF directory works
in their place.

Weights are random, so the text is gibberish; what matters for a resilience testbed is that the
compute is real (same shapes, same kernels) and that it is reproducible: a recipe and a seed
determine every byte, and the cache directory is named by a hash of the recipe.

Builds are safe under concurrency (several test processes may ask at once): one process builds
under a file lock into a temporary directory, then renames it into place atomically; the others
wait on the lock and find it done.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Each message is "<|role|>\n{content}<|end|>\n"; the prompt ends with the assistant header.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a built model: change a field and the cache key changes."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    seed: int = 0
    corpus_lines: int = 4000
    format_version: int = 1

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# "tiny" (~4M parameters) builds in seconds and is for tests; "small" (~80M) is big enough that
# batching and int8 quantization have clearly measurable effects on a CPU.
RECIPES: dict[str, Recipe] = {
    "tiny": Recipe(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                   intermediate_size=688, vocab_size=2048, max_context=512),
    "small": Recipe(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12,
                    intermediate_size=1792, vocab_size=2048, max_context=1024),
}


def cache_root() -> Path:
    """``$TESTBED_CACHE`` or ``~/.cache/testbed``."""
    env = os.environ.get("TESTBED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "testbed"


def ensure_model(name: str = "tiny", cache_dir: Path | None = None) -> Path:
    """The HF directory of built-in model ``name``, building it once if it is not cached."""
    if name not in RECIPES:
        raise ValueError(f"unknown built-in model {name!r}: expected one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    models = Path(cache_dir) if cache_dir is not None else cache_root() / "models"
    target = models / f"{name}-{recipe.key()}"
    if (target / "config.json").exists():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with open(models / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "config.json").exists():  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models))
        try:
            build_model(recipe, staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name_or_path: str) -> Path:
    """A built-in model name ("tiny", "small") or an existing local HF model directory."""
    if name_or_path in RECIPES:
        return ensure_model(name_or_path)
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    raise ValueError(
        f"model {name_or_path!r}: expected a built-in name ({', '.join(RECIPES)}) "
        "or a local Hugging Face model directory containing config.json"
    )


def build_model(recipe: Recipe, out: Path) -> None:
    """Write tokenizer and seeded random-weight Llama model for ``recipe`` into ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = _build_tokenizer(recipe)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_class(out / "tokenizer_config.json")
    config = LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)


def _portable_tokenizer_class(path: Path) -> None:
    """Name the class every transformers release (4.x, 5.x) and vLLM map to ``tokenizer.json``.

    transformers 5 writes its own new class name, which older releases cannot resolve.
    """
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _build_tokenizer(recipe: Recipe):
    """A byte-level BPE trained on generated text: any input encodes, common words are one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(recipe.seed, recipe.corpus_lines), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[3:], model_max_length=recipe.max_context,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


_WORDS = (
    "the a of to and in is it you that he was for on are with as I his they be at one have this "
    "from or had by hot word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound no "
    "most people my over know water than call first who may down side been now find any new work "
    "part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line "
    "server request token model latency replica region failure retry timeout batch queue GPU CPU "
    "hello world please answer question explain summarize translate code Python error status"
).split()


def corpus(seed: int, lines: int) -> list[str]:
    """Deterministic training text: common words, made-up words, digits and punctuation."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "qu", "ash", "ing", "er", "on"]
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 16)):
            roll = rng.random()
            if roll < 0.7:
                words.append(rng.choice(_WORDS))
            elif roll < 0.9:
                words.append("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))))
            else:
                words.append(str(rng.randint(0, 9999)))
        out.append(" ".join(words) + rng.choice([".", "?", "!", ",", ":"]))
    return out
