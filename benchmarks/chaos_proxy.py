"""What the chaos proxy costs with no toxic set: round-trip latency and bulk throughput, direct vs proxied.

Both are measured in one run, interleaved, against the same asyncio upstream on 127.0.0.1, so
background load on this shared machine hits both sides alike; only the ratios are comparable
across machines. A ProxyFleet (the proxy on its own thread, as the live stack runs it) sits in
the proxied path. The last line is machine-readable:

    rtt_direct_us=<float> rtt_proxied_us=<float> rtt_ratio=<float> mb_s_direct=<float> mb_s_proxied=<float> throughput_ratio=<float>

Run: python benchmarks/chaos_proxy.py [--pings N] [--megabytes M]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from pathlib import Path

from page import provenance, table, write_block
from testbed.live.chaos_proxy import ProxyFleet


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    block = b"x" * 65536
    while line := await reader.readline():
        if line.startswith(b"SEND "):
            left = int(line.split()[1])
            while left > 0:
                writer.write(block[: min(left, len(block))])
                left -= len(block)
                await writer.drain()
        else:
            writer.write(line)
            await writer.drain()
    writer.close()


def _upstream() -> int:
    """An echo/bulk server on its own thread; returns its port."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(_handle, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        started.set()
        await server.serve_forever()

    threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True).start()
    started.wait()
    return ready[0]


async def _pings(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        writer.write(b"ping\n")
        await writer.drain()
        await reader.readline()
        out.append(time.perf_counter() - started)
    writer.close()
    return out


async def _bulk(port: int, size: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(b"SEND %d\n" % size)
    await reader.readexactly(size)
    elapsed = time.perf_counter() - started
    writer.close()
    return size / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path, metavar="PAGE", help="write the figures into this docs page (docs/benchmarks.md)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    port = _upstream()
    with ProxyFleet() as fleet:
        proxied = int(fleet.add("p", f"http://127.0.0.1:{port}").rsplit(":", 1)[1])
        rtt = {"direct": [], "proxied": []}
        mbs = {"direct": [], "proxied": []}
        for _ in range(args.rounds):  # interleaved: both sides see the same background load
            for label, target in (("direct", port), ("proxied", proxied)):
                rtt[label] += asyncio.run(_pings(target, args.pings // args.rounds))
                mbs[label].append(asyncio.run(_bulk(target, args.megabytes * 1_000_000 // args.rounds)))
    rtt_us = {k: statistics.median(v) * 1e6 for k, v in rtt.items()}
    mb_s = {k: statistics.median(v) for k, v in mbs.items()}
    print(f"round trip (median of {args.pings}): direct {rtt_us['direct']:.0f} us, proxied {rtt_us['proxied']:.0f} us")
    print(f"bulk {args.megabytes} MB downstream: direct {mb_s['direct']:.0f} MB/s, proxied {mb_s['proxied']:.0f} MB/s")
    print(
        f"rtt_direct_us={rtt_us['direct']:.1f} rtt_proxied_us={rtt_us['proxied']:.1f} "
        f"rtt_ratio={rtt_us['proxied'] / rtt_us['direct']:.2f} mb_s_direct={mb_s['direct']:.1f} "
        f"mb_s_proxied={mb_s['proxied']:.1f} throughput_ratio={mb_s['proxied'] / mb_s['direct']:.2f}"
    )
    if args.markdown:
        rows = [[f"round trip (median of {args.pings})", f"{rtt_us['direct']:.0f} µs", f"{rtt_us['proxied']:.0f} µs",
                 f"{rtt_us['proxied'] / rtt_us['direct']:.2f}x"],
                [f"bulk {args.megabytes} MB downstream", f"{mb_s['direct']:.0f} MB/s", f"{mb_s['proxied']:.0f} MB/s",
                 f"{mb_s['proxied'] / mb_s['direct']:.2f}x"]]
        write_block(args.markdown, "chaos_proxy", table(["measure", "direct", "proxied", "ratio"], rows)
                    + "\n\n" + provenance(load_before))


if __name__ == "__main__":
    main()
