"""What the built-in engine's prefix cache saves: prefill time and TTFT on shared system prompts.

Requests are a system prompt of ``--system`` tokens (one of ``--prompts`` distinct ones) followed
by a question of ``--question`` tokens of their own, sent one at a time (no batching effects), to
two engines on the same model: prefix cache on and off. Rounds alternate the engines, so a change
in the machine's load hits both. Per engine: median prefill time and time to first token, and the
cache's hit rate (tokens served from cache over prompt tokens) — the figures a cache-aware router
trades against load. Outputs are checked to be identical on both engines (greedy decoding).

Run: python benchmarks/prefix_cache_live.py [--model small] [--system 480] [--question 32] [--requests 24]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from testbed.live.replica.engine import Engine, PrefillInfo
from testbed.live.replica.models import resolve_model


async def one(engine: Engine, prompt: list[int], tokens: int) -> tuple[list[int], PrefillInfo, float]:
    info = PrefillInfo()
    started = time.perf_counter()
    ttft = None
    out = []
    async for token in engine.generate(prompt, tokens, info=info):
        if ttft is None:
            ttft = time.perf_counter() - started
        out.append(token)
    return out, info, ttft if ttft is not None else float("nan")


async def run(args) -> None:
    model = resolve_model(args.model)
    cached = Engine(model, threads=args.threads, max_delay=0.0)
    plain = Engine(model, threads=args.threads, max_delay=0.0, prefix_cache_bytes=0)
    await cached.start()
    await plain.start()
    vocab = cached.runner.model.config.vocab_size
    rng = random.Random(args.seed)
    systems = [[1] + [rng.randrange(16, vocab) for _ in range(args.system - 1)] for _ in range(args.prompts)]
    prompts = [rng.choice(systems) + [rng.randrange(16, vocab) for _ in range(args.question)]
               for _ in range(args.requests)]
    seen: dict[str, list[tuple[list[int], PrefillInfo, float]]] = {"cache on": [], "cache off": []}
    try:
        for prompt in prompts:
            for label, engine in (("cache on", cached), ("cache off", plain)):
                seen[label].append(await one(engine, prompt, args.tokens))
    finally:
        await cached.stop()
        await plain.stop()
    identical = [a[0] for a in seen["cache on"]] == [b[0] for b in seen["cache off"]]
    prompt_tokens = sum(len(p) for p in prompts)
    print(f"model {args.model}: {args.requests} requests, {args.prompts} system prompts of {args.system} tokens "
          f"+ {args.question}-token questions, {args.tokens} output tokens, one at a time")
    hit_index = [i for i, r in enumerate(seen["cache on"]) if r[1].cached_tokens > 0]
    cold_index = [i for i, r in enumerate(seen["cache on"]) if r[1].cached_tokens == 0]
    figures = {}
    for label, rows in seen.items():
        warm = [rows[i] for i in hit_index]  # the same requests on both engines
        figures[label] = (statistics.median(r[1].prefill_seconds for r in warm),
                          statistics.median(r[2] for r in warm))
        cold = statistics.median(rows[i][1].prefill_seconds for i in cold_index)
        hit_rate = sum(r[1].cached_tokens for r in rows) / prompt_tokens
        print(f"  {label:>9}: hit rate {hit_rate:.1%}; the {len(hit_index)} requests that hit (with the cache on): "
              f"prefill {figures[label][0] * 1000:.1f} ms, TTFT {figures[label][1] * 1000:.1f} ms (medians); "
              f"the {len(cold_index)} first sights: prefill {cold * 1000:.1f} ms")
    prefill_ratio = figures["cache off"][0] / figures["cache on"][0]
    ttft_ratio = figures["cache off"][1] / figures["cache on"][1]
    print(f"  a hit's prefill is {prefill_ratio:.1f}x faster, its TTFT {ttft_ratio:.1f}x; outputs identical: {identical}")
    print(f"RESULT model={args.model} hit_rate={sum(r[1].cached_tokens for r in seen['cache on']) / prompt_tokens:.4f} "
          f"prefill_speedup={prefill_ratio:.3f} ttft_speedup={ttft_ratio:.3f} identical={identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="tiny, small or a local HF directory")
    parser.add_argument("--system", type=int, default=480, help="tokens of each system prompt")
    parser.add_argument("--question", type=int, default=32, help="tokens of each request's own part")
    parser.add_argument("--prompts", type=int, default=2, help="distinct system prompts")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=8, help="output tokens per request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
