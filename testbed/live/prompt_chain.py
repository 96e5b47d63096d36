"""A live request's block chain, for the gateway's cache-aware routers.

The simulated gateway hands its routers each request's chain from the workload's draw; the live
gateway has only the request. So it computes the chain from the prompt it forwards: the hash
chain :func:`testbed.policy.prefix_cache.chain_hashes` over the prompt's token ids, in blocks of
the replicas' ``serving.batching.block_size`` — the very names the built-in replicas' prefix
caches give their blocks. Two requests share leading chain ids exactly as far as a replica could
reuse one's keys and values for the other, and the routers (the simulator's own classes) see
the sharing the replicas see.

* A prompt of token ids (what live replay sends; any OpenAI client may) is hashed as it is.
* A text prompt, or chat messages, are first tokenized as the replica does it — the served
  model's tokenizer and chat template (:mod:`testbed.live.replica.server`), loaded once, when
  the gateway opens (:class:`Tokenizer`). A model whose tokenizer cannot be loaded here, or
  messages its template rejects, leave the request without a chain: it is routed cache-blind,
  and the replica answers whatever is wrong with it.
* The session, for ``session_affinity``, is the client's ``x-session-id`` header, else the
  body's ``user`` — the end-user tag OpenAI clients send — as a stable integer; -1 without either.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from testbed.live.openai_schema import ChatCompletionRequest, CompletionRequest
from testbed.policy.prefix_cache import Prefix, chain_hashes


def user_session(user: str) -> int:
    """A stable non-negative int64 for a ``user`` tag (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "little") >> 1


def chain_of(tokens: Sequence[int], block_size: int, session: int = -1) -> Prefix:
    """The chain of ``tokens``' full blocks, one run per block (hash ids are not consecutive)."""
    return Prefix(tuple((name, 1) for name in chain_hashes(tokens, block_size)), block_size, session)


class PromptChains:
    """Computes requests' chains in blocks of ``block_size``; ``load_tokenizer`` gives the served
    model's tokenizer (raising if it cannot), called at most once: by :meth:`warm`, or by the
    first text prompt if that comes sooner."""

    def __init__(self, block_size: int, load_tokenizer: Callable[[], Tokenizer]) -> None:
        self.block_size = block_size
        self._load = load_tokenizer
        self._tokenizer: Tokenizer | None = None
        self._unavailable = False
        self._loading = threading.Lock()  # requests tokenize in worker threads: load once

    def warm(self) -> None:
        """Load the tokenizer now, so that the first text request does not wait for it."""
        self._tokenizer_or_none()

    def needs_tokenizer(self, request: CompletionRequest | ChatCompletionRequest) -> bool:
        """Whether ``request`` must be tokenized first (slow enough to run off the event loop)."""
        return isinstance(request, ChatCompletionRequest) or request.prompt_text is not None

    def prefix(self, request: CompletionRequest | ChatCompletionRequest, session: int) -> Prefix | None:
        """``request``'s chain, or None when its token ids cannot be known here."""
        if isinstance(request, CompletionRequest) and request.prompt_text is None:
            return chain_of(request.prompt, self.block_size, session)  # type: ignore[arg-type]
        tokenizer = self._tokenizer_or_none()
        if tokenizer is None:
            return None
        try:
            if isinstance(request, CompletionRequest):
                ids = tokenizer.encode(request.prompt_text)
            else:
                ids = chat_ids(tokenizer, [{"role": m.role, "content": m.text} for m in request.messages])
        except Exception:  # the replica's own checks answer the client; routing just goes cache-blind
            return None
        return chain_of(list(ids), self.block_size, session)

    def _tokenizer_or_none(self) -> Tokenizer | None:
        with self._loading:
            if self._tokenizer is None and not self._unavailable:
                try:
                    self._tokenizer = self._load()
                except Exception:  # no such local model (a target's own deployment): text routes cache-blind
                    self._unavailable = True
        return self._tokenizer


def chat_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Messages as the replica server renders and encodes them (its chat template, then BOS once)."""
    text = tokenizer.render_chat(messages)
    bos = tokenizer.bos_token
    return tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))


class Tokenizer:
    """A served model's tokenizer as the gateway needs it: light, loaded in milliseconds.

    Encoding is the model's ``tokenizer.json`` through the ``tokenizers`` library, the very object
    a transformers fast tokenizer wraps; the chat template is rendered as transformers renders
    it — a sandboxed jinja2 environment with trimmed blocks, ``raise_exception`` and ``tojson`` —
    with the model's special tokens. (Importing transformers itself takes seconds.)
    """

    def __init__(self, model_dir: Path) -> None:
        import jinja2.ext
        import jinja2.sandbox
        from tokenizers import Tokenizer as Encoder

        self._encoder = Encoder.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        self._special = {
            name: value["content"] if isinstance(value, dict) else value
            for name, value in config.items()
            if name.endswith("_token") and isinstance(value, (str, dict))
        }
        self.bos_token: str | None = self._special.get("bos_token")
        template_file = model_dir / "chat_template.jinja"
        source = template_file.read_text() if template_file.exists() else config.get("chat_template")
        self._template = None
        if isinstance(source, str):
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
            )
            env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
            env.globals["raise_exception"] = _raise_template_error
            self._template = env.from_string(source)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._encoder.encode(text, add_special_tokens=add_special_tokens).ids)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self._template is None:
            raise ValueError("the model has no chat template")
        return self._template.render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                     **self._special)


def _raise_template_error(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def model_tokenizer(model: str) -> Callable[[], Tokenizer]:
    """A loader of the tokenizer of ``model`` (a built-in name or a local HF directory)."""

    def load() -> Tokenizer:
        from testbed.live.replica.models import resolve_model

        return Tokenizer(resolve_model(model))

    return load
