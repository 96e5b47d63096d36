"""Step timers for calibration: the built-in engine's runner call by call, or a server over HTTP.

A timer answers the two questions of :class:`testbed.live.calibrate.StepTimer` by running the real
model. Prompts are random token ids from a seeded stream (the text does not change the compute,
and special tokens are avoided so that nothing ends early); they are built before the clock
starts so that only the model's work is timed.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from pathlib import Path

from testbed.live.replica.runner import ModelRunner


class TorchTimer:
    """Times :class:`~testbed.live.replica.runner.ModelRunner` prefill and decode calls."""

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


class HttpTimer:
    """Times an OpenAI-compatible server (vLLM) from outside, as its clients see it.

    A prefill point is ``batch`` concurrent completions of one token, timed until the last one
    answers; a decode point is ``batch`` concurrent streamed completions of ``steps + 1`` tokens,
    timed (the median over streams) from a stream's first token to its last, so only decode
    steps are inside.
    HTTP adds a little to each, which the live replay pays too.
    """

    def __init__(self, url: str, model: str, vocabulary: int = 2048, seed: int = 0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.vocabulary = vocabulary
        self.rng = random.Random(seed)

    def _body(self, length: int, max_tokens: int) -> dict:
        prompt = [self.rng.randrange(16, self.vocabulary) for _ in range(length)]
        return {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True, "temperature": 0.0}

    def prefill(self, batch: int, prompt_tokens: int) -> float:
        started, _, ends = self._run([self._body(prompt_tokens, 1) for _ in range(batch)])
        return max(ends) - started

    def decode(self, batch: int, context_tokens: int, steps: int) -> float:
        _, firsts, ends = self._run([self._body(context_tokens, steps + 1) for _ in range(batch)])
        # Each stream's own first-to-last token span: a stream the client happens to read late
        # shifts both ends of its span, not the span.
        return statistics.median(end - first for first, end in zip(firsts, ends))

    def _run(self, bodies: list[dict]) -> tuple[float, list[float], list[float]]:
        import asyncio

        import httpx

        async def one(client: httpx.AsyncClient, body: dict) -> tuple[float, float]:
            first = math.nan
            async with client.stream("POST", "/v1/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data:") and math.isnan(first):
                        first = time.perf_counter()
            return first, time.perf_counter()

        async def all_of() -> tuple[float, list[float], list[float]]:
            async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
                started = time.perf_counter()
                times = await asyncio.gather(*(one(client, body) for body in bodies))
            return started, [t[0] for t in times], [t[1] for t in times]

        return asyncio.run(all_of())


class VllmTimer(HttpTimer):
    """A vLLM server started for the calibration (from its own venv), timed over HTTP."""

    def __init__(self, model_dir: str | Path) -> None:
        import socket

        from testbed.live.replica.vllm import missing_reason, served_name, vllm_command
        from testbed.live.supervisor import Supervisor

        reason = missing_reason()
        if reason is not None:
            raise RuntimeError(f"--engine vllm: {reason}")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv, env = vllm_command(Path(model_dir), port, "calibrate")
        self.supervisor = Supervisor()
        url = f"http://127.0.0.1:{port}"
        began = time.monotonic()
        self.supervisor.start("calibrate", argv, env, timeout=600, url=url)
        self.startups = [time.monotonic() - began]  # spawn to ready: a repaired replica's start-up
        super().__init__(url, served_name(Path(model_dir)))

    def close(self) -> None:
        self.supervisor.stop_all()


class ServerTimer:
    """The built-in replica server — the process ``testbed live`` runs — timed over HTTP.

    This is what the simulation should be calibrated on: besides the model it pays the engine
    loop, the server and per-token streaming, which the bare runner does not (on the tiny model
    that is a third of a decode step). A micro-batching server waits up to its batching delay for
    a batch to fill, which the simulator models separately, so each batch size gets a server of
    its own whose ``--max-batch-size`` is that size: the batch starts the moment all of its
    requests are in, and no batching delay leaks into the profile.

    Every server it starts is a start-up measurement too: seconds from spawn to its READY line
    (``startups``), and, from its ``/health``, how much of that was the model load and the
    warm-up (``loads``, ``warmups``); the rest is the interpreter and the server starting.
    """

    def __init__(self, model: str, quantize: str | None = None) -> None:
        from testbed.live.replica.models import RECIPES
        from testbed.live.supervisor import Supervisor

        self.model = model
        self.quantize = quantize
        self.served_as = model if model in RECIPES else Path(model).name
        self.supervisor = Supervisor()
        self._timers: dict[int, HttpTimer] = {}
        self.startups: list[float] = []  # seconds from spawn to READY of each server started
        self.loads: list[float] = []  # of which the model load (imports and weights)
        self.warmups: list[float] = []  # of which the engine's warm-up

    def _start(self, name: str, batch: int) -> str:
        """Start a server (its start-up measured) and return its URL."""
        import sys

        import httpx

        argv = [sys.executable, "-m", "testbed.live.replica.server", "--model", self.model, "--port", "0",
                "--name", name, "--threads", "1", "--max-batch-size", str(batch), "--max-delay", "60"]
        if self.quantize:
            argv += ["--quantize", self.quantize]
        began = time.monotonic()
        managed = self.supervisor.start(name, argv, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, timeout=180)
        self.startups.append(time.monotonic() - began)
        assert managed.url is not None
        phases = httpx.get(managed.url + "/health", timeout=30).json().get("startup") or {}
        self.loads.append(float(phases.get("load_seconds", 0.0)))
        self.warmups.append(float(phases.get("warmup_seconds", 0.0)))
        return managed.url

    def _timer(self, batch: int) -> HttpTimer:
        if batch not in self._timers:
            self._timers[batch] = HttpTimer(self._start(f"calibrate-b{batch}", batch), self.served_as)
        return self._timers[batch]

    def time_starts(self, starts: int) -> None:
        """``starts`` more start-ups, one server at a time, each stopped once it serves: a
        repaired or new replica coming up on an otherwise idle machine."""
        for i in range(starts):
            name = f"calibrate-start-{i}"
            self._start(name, 1)
            self.supervisor.stop(name, 10)

    def prefill(self, batch: int, prompt_tokens: int) -> float:
        return self._timer(batch).prefill(batch, prompt_tokens)

    def decode(self, batch: int, context_tokens: int, steps: int) -> float:
        return self._timer(batch).decode(batch, context_tokens, steps)

    def close(self) -> None:
        self.supervisor.stop_all()
