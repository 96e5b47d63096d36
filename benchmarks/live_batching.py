"""Micro-batching and int8 on the built-in PyTorch engine, on this machine's CPU.

Closed loop, as Triton's perf_analyzer measures dynamic batching: ``--concurrency`` clients
each send a request, wait for the whole answer, send the next, until ``--requests`` are done.
The same prompts (seeded) and lengths go to every configuration:

* fp32, batch size 1 (no batching) — the baseline;
* fp32, micro-batching up to ``--concurrency`` (the :class:`MicroBatcher` the simulator uses);
* int8 (dynamic quantization, the CPU fallback tier), micro-batching;
* int8, batch size 1.

Throughput counts generated tokens; latency is each request's end to end. The machine is
shared, so only ratios measured in one run are comparable; the table ends with them. Triton
reports 3.3x throughput from dynamic batching at concurrency 16 on a GPU. The last line is
machine-readable.

All four engines are loaded at once and the requests are split into rounds that visit the
configurations in turn, so a change in the machine's load during the run hits them alike.

Run: python benchmarks/live_batching.py [--model small] [--requests 48] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from page import provenance, table, write_block
from testbed.live.replica.engine import Engine
from testbed.live.replica.models import resolve_model


@dataclass
class Outcome:
    """One configuration's totals over all rounds."""

    label: str
    requests: int = 0
    tokens: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall

    @staticmethod
    def p(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_prompts(n: int, seed: int, vocab: int, low: int, high: int) -> list[list[int]]:
    """Prompts of random token ids (BOS first) with lengths uniform in [low, high]."""
    rng = random.Random(seed)
    return [[1] + [rng.randrange(8, vocab) for _ in range(rng.randint(low, high) - 1)] for _ in range(n)]


async def run_round(engine: Engine, out: Outcome, prompts: list[list[int]], max_tokens: int,
                    concurrency: int) -> None:
    """``concurrency`` closed-loop clients work through ``prompts``; totals go to ``out``."""
    todo = iter(prompts)

    async def client() -> None:
        for prompt in todo:
            start = time.monotonic()
            first = None
            async for _ in engine.generate(prompt, max_tokens):
                first = first or time.monotonic()
                out.tokens += 1
            out.latencies.append(time.monotonic() - start)
            out.ttfts.append((first or time.monotonic()) - start)
            out.requests += 1

    started = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    out.wall += time.perf_counter() - started


async def run(args, model_dir, prompts: list[list[int]]) -> list[Outcome]:
    """All engines loaded at once; rounds interleave the configurations, so load drift on a shared
    machine hits them alike."""
    c = args.concurrency
    configs = [("fp32 batch 1", None, 1), (f"fp32 batch {c}", None, c), (f"int8 batch {c}", "int8", c),
               ("int8 batch 1", "int8", 1)]
    engines, outcomes = [], []
    for label, quantize, batch in configs:
        engine = Engine(model_dir, quantize=quantize, max_batch_size=batch, max_delay=args.max_delay,
                        threads=args.threads)
        await engine.start()
        out = Outcome(label)
        engine.batch_listeners.append(lambda size, delay, out=out: out.batches.append(size))
        engines.append(engine)
        outcomes.append(out)
    try:
        per_round = len(prompts) // args.rounds
        for r in range(args.rounds):
            block = prompts[r * per_round:(r + 1) * per_round]
            for engine, out in zip(engines, outcomes):
                await run_round(engine, out, block, args.max_tokens, c)
    finally:
        for engine in engines:
            await engine.stop()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="tiny, small, or a local HF model directory")
    parser.add_argument("--requests", type=int, default=48, help="per configuration, split over the rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(16, 64), metavar=("LOW", "HIGH"))
    parser.add_argument("--max-delay", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine, more threads than free cores stall)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the figures into this docs page (docs/benchmarks.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    model_dir = resolve_model(args.model)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    prompts = make_prompts(args.requests, args.seed, vocab, *args.prompt_tokens)
    c = args.concurrency
    print(f"model={args.model} requests={args.requests} rounds={args.rounds} concurrency={c} "
          f"max_tokens={args.max_tokens} prompt_tokens={args.prompt_tokens[0]}-{args.prompt_tokens[1]} "
          f"threads={args.threads}")
    fp1, fpc, i8c, i81 = outcomes = asyncio.run(run(args, model_dir, prompts))
    print(f"{'config':<16} {'tok/s':>8} {'req/s':>7} {'p50 s':>7} {'p99 s':>7} {'p99 ttft':>9} {'batch':>6}")
    for out in outcomes:
        print(f"{out.label:<16} {out.tokens_per_s:>8.1f} {out.requests / out.wall:>7.2f} "
              f"{out.p(out.latencies, 0.5):>7.2f} {out.p(out.latencies, 0.99):>7.2f} "
              f"{out.p(out.ttfts, 0.99):>9.2f} {statistics.fmean(out.batches):>6.1f}")
    batching_gain = fpc.tokens_per_s / fp1.tokens_per_s
    p99_ratio = fp1.p(fp1.latencies, 0.99) / fpc.p(fpc.latencies, 0.99)
    int8_gain = i8c.tokens_per_s / fpc.tokens_per_s
    int8_gain_b1 = i81.tokens_per_s / fp1.tokens_per_s
    print(f"micro-batching at concurrency {c}: {batching_gain:.2f}x throughput, p99 latency {p99_ratio:.2f}x lower "
          f"(Triton reports 3.3x throughput)")
    print(f"int8 vs fp32: {int8_gain:.2f}x throughput batched, {int8_gain_b1:.2f}x at batch 1")
    if args.markdown:
        rows = [[out.label, f"{out.tokens_per_s:.1f}", f"{out.p(out.latencies, 0.5):.1f} s", f"{out.p(out.latencies, 0.99):.1f} s"]
                for out in outcomes]
        summary = (f"Model `{args.model}`, {c} concurrent clients, {args.requests} requests per configuration, "
                   f"{args.prompt_tokens[0]}–{args.prompt_tokens[1]} prompt tokens, {args.max_tokens} new tokens. "
                   f"Micro-batching: **{batching_gain:.2f}x throughput, {p99_ratio:.2f}x lower p99**; int8 against fp32: "
                   f"**{int8_gain:.2f}x batched, {int8_gain_b1:.2f}x at batch size 1**.")
        write_block(args.markdown, "live_batching", table(["config", "tokens/s", "p50 latency", "p99 latency"], rows)
                    + "\n\n" + summary + "\n\n" + provenance(load_before))
    print(f"batching_gain={batching_gain:.3f} p99_ratio={p99_ratio:.3f} int8_gain={int8_gain:.3f} "
          f"int8_gain_b1={int8_gain_b1:.3f}")


if __name__ == "__main__":
    main()
