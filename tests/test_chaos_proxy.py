"""The chaos proxy against real TCP and HTTP upstreams on 127.0.0.1: each toxic's effect, measured."""

from __future__ import annotations

import asyncio
import functools
import http.server
import statistics
import threading
import time
import urllib.error
import urllib.request

import pytest

from testbed.live.chaos_proxy import (
    Bandwidth,
    ChaosProxy,
    Down,
    Latency,
    ProxyFleet,
    ResetPeer,
    Timeout,
    parse_toxic,
)


def run(test):
    """Run an async test on a fresh event loop (no plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


async def upstream_server():
    """Echo every line back; a line ``SEND n`` is answered with n bytes; ``DRIP k`` with k lines 20 ms apart."""

    async def handle(reader, writer):
        try:
            while line := await reader.readline():
                if line.startswith(b"SEND "):
                    writer.write(b"x" * int(line.split()[1]))
                elif line.startswith(b"DRIP "):
                    for i in range(int(line.split()[1])):
                        writer.write(b"%d\n" % i)
                        await writer.drain()
                        await asyncio.sleep(0.02)
                else:
                    writer.write(line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def proxied(**toxics):
    server = await upstream_server()
    proxy = ChaosProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    await proxy.start()
    for name, toxic in toxics.items():
        proxy.set_toxic(name, toxic)
    return server, proxy


async def roundtrip(reader, writer, line=b"ping\n") -> float:
    started = time.perf_counter()
    writer.write(line)
    await writer.drain()
    assert await reader.readline() == line
    return time.perf_counter() - started


@run
async def test_passthrough_copies_both_ways_and_counts():
    server, proxy = await proxied()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await roundtrip(reader, writer, b"hello\n")
    writer.write(b"SEND 100000\n")
    assert len(await reader.readexactly(100000)) == 100000
    writer.close()
    assert proxy.connections == 1 and proxy.bytes_up == len(b"hello\nSEND 100000\n")
    assert proxy.bytes_down == 6 + 100000 and proxy.url == f"http://127.0.0.1:{proxy.port}"
    await proxy.stop()
    server.close()


@run
async def test_latency_delays_each_direction_and_named_latencies_add():
    server, proxy = await proxied()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    base = min([await roundtrip(reader, writer) for _ in range(3)])
    proxy.set_toxic("wan", Latency(60))
    slow = await roundtrip(reader, writer)
    assert 0.12 <= slow < 0.12 + base + 0.15  # 60 ms up and 60 ms down
    proxy.set_toxic("more", Latency(40))
    assert await roundtrip(reader, writer) >= 0.2
    proxy.remove_toxic("wan")
    proxy.remove_toxic("more")
    assert await roundtrip(reader, writer) < 0.1
    await proxy.stop()
    server.close()


@run
async def test_jitter_varies_the_delay_within_its_bounds():
    server, proxy = await proxied(j=Latency(50, jitter_ms=40))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    samples = [await roundtrip(reader, writer) for _ in range(12)]
    assert min(samples) >= 0.02 and max(samples) < 0.18 + 0.1
    assert statistics.pstdev(samples) > 0.01
    await proxy.stop()
    server.close()


@run
async def test_latency_shifts_a_stream_without_stretching_it():
    server, proxy = await proxied(wan=Latency(150))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.perf_counter()
    writer.write(b"DRIP 10\n")
    arrivals = []
    for _ in range(10):
        await reader.readline()
        arrivals.append(time.perf_counter() - started)
    # First line after ~300 ms (150 each way); the ten lines still arrive ~20 ms apart, not 150.
    assert arrivals[0] >= 0.3 and arrivals[-1] - arrivals[0] < 0.5
    await proxy.stop()
    server.close()


@run
async def test_bandwidth_paces_the_transfer():
    server, proxy = await proxied()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.perf_counter()
    writer.write(b"SEND 50000\n")
    await reader.readexactly(50000)
    free = time.perf_counter() - started
    proxy.set_toxic("thin", Bandwidth(rate_kbps=800))  # 100 kB/s
    started = time.perf_counter()
    writer.write(b"SEND 50000\n")
    await reader.readexactly(50000)
    paced = time.perf_counter() - started
    assert free < 0.2 and 0.45 <= paced < 1.5
    await proxy.stop()
    server.close()


@run
async def test_reset_peer_resets_open_and_new_connections():
    server, proxy = await proxied()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await roundtrip(reader, writer)
    proxy.set_toxic("rst", ResetPeer())
    with pytest.raises(ConnectionResetError):
        await reader.read(100)
    r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
    with pytest.raises(ConnectionResetError):
        await r2.read(100)
    assert proxy.resets == 2
    proxy.remove_toxic("rst")
    r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)
    await roundtrip(r3, w3)
    await proxy.stop()
    server.close()


@run
async def test_timeout_black_holes_without_closing_until_removed():
    server, proxy = await proxied()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.set_toxic("hole", Timeout())
    writer.write(b"lost\n")
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readline(), 0.4)
    r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)  # accepted, never answered
    w2.write(b"also lost\n")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(r2.read(1), 0.3)
    assert not reader.at_eof() and not r2.at_eof()
    proxy.remove_toxic("hole")
    await roundtrip(reader, writer, b"back\n")
    await proxy.stop()
    server.close()


@run
async def test_down_refuses_new_connections_cuts_open_ones_and_comes_back_on_the_same_port():
    server, proxy = await proxied()
    port = proxy.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await roundtrip(reader, writer)
    proxy.set_toxic("outage", Down())
    with pytest.raises(ConnectionResetError):
        await reader.read(100)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    proxy.clear()
    assert proxy.port == port
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    await roundtrip(r2, w2)
    await proxy.stop()
    server.close()


@run
async def test_a_dead_upstream_resets_the_client():
    server, proxy = await proxied()
    server.close()
    await server.wait_closed()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    with pytest.raises(ConnectionResetError):
        await reader.read(100)
    await proxy.stop()


def test_parse_toxic_builds_each_kind_and_names_the_bad_field():
    assert parse_toxic({"type": "latency", "latency_ms": 200, "jitter_ms": 20}) == Latency(200, 20)
    assert parse_toxic({"type": "bandwidth", "rate_kbps": 64}) == Bandwidth(64)
    assert parse_toxic({"type": "reset_peer"}) == ResetPeer()
    assert parse_toxic({"type": "timeout"}) == Timeout()
    assert parse_toxic({"type": "down"}) == Down()
    for data, message in [
        ({"type": "lag"}, "toxic.type: expected one of latency, bandwidth"),
        ({"latency_ms": 5}, "toxic.type"),
        ({"type": "latency"}, "toxic.latency_ms: required"),
        ({"type": "latency", "latency_ms": "fast"}, "toxic.latency_ms: expected a number"),
        ({"type": "latency", "latency_ms": 5, "jiter_ms": 1}, "toxic.jiter_ms: unknown parameter"),
        ({"type": "bandwidth", "rate_kbps": 0}, "rate_kbps must be > 0"),
        ({"type": "down", "now": 1}, "expected no parameters"),
        ("down", "expected a mapping"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_toxic(data)


class _Named(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = self.server.label.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_upstreams():
    servers = []
    for label in ("first", "second"):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        srv.label = label
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def test_proxy_fleet_from_sync_code(http_upstreams):
    first, second = http_upstreams
    with ProxyFleet() as fleet:
        url = fleet.add("r1", first)
        other = fleet.add("r2", second)
        assert url != other and http_get(url) == "first" and http_get(other) == "second"
        fleet.set_toxic("r1", "wan", Latency(100))
        started = time.perf_counter()
        assert http_get(url) == "first"
        assert time.perf_counter() - started >= 0.2
        started = time.perf_counter()
        assert http_get(other) == "second" and time.perf_counter() - started < 0.15  # r2 untouched
        fleet.remove_toxic("r1", "wan")
        fleet.set_toxic("r1", "outage", Down())
        with pytest.raises(urllib.error.URLError, match="refused"):
            http_get(url)
        fleet.clear("r1")
        fleet.set_upstream("r1", second)  # the replica restarted on another port
        assert http_get(url) == "second"
        assert fleet.counters("r1")["connections"] >= 3
        thread = fleet._thread
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        fleet.set_toxic("r1", "x", Timeout())


def test_proxy_fleet_is_usable_from_many_threads(http_upstreams):
    with ProxyFleet() as fleet:
        url = fleet.add("r1", http_upstreams[0])
        errors = []

        def worker(i):
            try:
                for _ in range(5):
                    fleet.set_toxic("r1", f"t{i}", Latency(1))
                    assert http_get(url) == "first"
                    fleet.remove_toxic("r1", f"t{i}")
            except Exception as err:  # collected, asserted below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and fleet.proxy("r1").toxics == {}
