"""A Toxiproxy-style TCP proxy in front of each replica: network faults switchable at run time.

The gateway talks to a replica through its proxy, so a network fault is a change of the proxy's
*toxics*, made while traffic flows:

* :class:`Latency` — every chunk is held ``latency_ms`` (± uniform ``jitter_ms``) after it
  arrived, in each direction, as the simulator's network faults delay each one-way trip. Chunks
  keep their order and are timed from their arrival, so a token stream is shifted, not stretched.
* :class:`Bandwidth` — each direction is paced to ``rate_kbps`` kilobits per second (the
  project's network convention: bits per second in the string).
* :class:`ResetPeer` — open connections and new ones are reset (TCP RST: "connection reset by
  peer").
* :class:`Timeout` — a black hole: connections are accepted and their data swallowed both ways;
  nothing is ever answered and nothing is closed.
* :class:`Down` — the listener closes, so new connections are refused, and open ones are cut;
  removing it listens again on the same port.

Toxics are named, so two faults of the same kind can overlap and end separately; latencies add
and the lowest bandwidth wins. :class:`ChaosProxy` lives on the caller's event loop;
:class:`ProxyFleet` runs many on one background thread with sync, thread-safe methods, so the
proxies' copying never stalls the gateway's own loop.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from concurrent.futures import Future
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Union
from urllib.parse import urlsplit

CHUNK = 65536
QUEUE_CHUNKS = 256  # per direction: read-ahead while chunks wait out their latency
PACE_SLICE = 0.02  # seconds of bandwidth per write when paced, so the rate holds within a chunk


@dataclass(frozen=True, slots=True)
class Latency:
    """Hold each chunk ``latency_ms`` ± uniform ``jitter_ms`` (never below zero), each direction."""

    latency_ms: float
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must be >= 0")


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Pace each direction to ``rate_kbps`` kilobits per second."""

    rate_kbps: float

    def __post_init__(self) -> None:
        if not self.rate_kbps > 0:
            raise ValueError("rate_kbps must be > 0")

    @property
    def bytes_per_second(self) -> float:
        return self.rate_kbps * 1000 / 8


@dataclass(frozen=True, slots=True)
class ResetPeer:
    """Reset open and new connections with a TCP RST."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """Black hole: accept, swallow everything, never answer."""


@dataclass(frozen=True, slots=True)
class Down:
    """Refuse new connections (no listener) and cut the open ones."""


Toxic = Union[Latency, Bandwidth, ResetPeer, Timeout, Down]
TOXIC_TYPES: dict[str, type] = {
    "latency": Latency,
    "bandwidth": Bandwidth,
    "reset_peer": ResetPeer,
    "timeout": Timeout,
    "down": Down,
}


def parse_toxic(data: dict[str, Any]) -> Toxic:
    """A toxic from YAML/JSON, e.g. ``{"type": "latency", "latency_ms": 200, "jitter_ms": 20}``.

    Raises ValueError naming the field and what was expected; callers add the file name.
    """
    if not isinstance(data, dict):
        raise ValueError(f"toxic: expected a mapping with a 'type', got {data!r}")
    kind = data.get("type")
    if kind not in TOXIC_TYPES:
        raise ValueError(f"toxic.type: expected one of {', '.join(TOXIC_TYPES)}, got {kind!r}")
    cls = TOXIC_TYPES[kind]
    allowed = {f.name for f in fields(cls)}
    params = {k: v for k, v in data.items() if k != "type"}
    for key, value in params.items():
        if key not in allowed:
            expected = ", ".join(sorted(allowed)) or "no parameters"
            raise ValueError(f"toxic.{key}: unknown parameter for {kind} (expected {expected})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"toxic.{key}: expected a number, got {value!r}")
    missing = [f.name for f in fields(cls) if f.name not in params and f.default is MISSING]
    if missing:
        raise ValueError(f"toxic.{missing[0]}: required for {kind}")
    try:
        return cls(**params)
    except ValueError as err:
        raise ValueError(f"toxic ({kind}): {err}") from None


def _reset(sock: socket.socket | Any) -> None:
    """Close with RST rather than FIN: SO_LINGER on with a zero timeout."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream twin."""

    client: socket.socket
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    cut: bool = False

    def abort(self, rst: bool) -> None:
        self.cut = True
        if rst:
            _reset(self.client)
        if not self.writers:
            self.client.close()
        for writer in self.writers:
            if rst:
                sock = writer.transport.get_extra_info("socket")
                if sock is not None:
                    _reset(sock)
            writer.transport.abort()

    def close(self) -> None:
        """The ordinary end: both directions finished, buffers already drained."""
        if not self.writers:
            self.client.close()
        for writer in self.writers:
            writer.close()


class ChaosProxy:
    """A TCP proxy from ``listen_host:listen_port`` to an upstream, with run-time toxics.

    ``seed`` drives latency jitter, so a run's delays repeat. Counters: ``connections``
    (accepted), ``bytes_up`` (client to upstream, delivered), ``bytes_down``, ``resets``.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self._port = listen_port
        self._rng = random.Random(seed)
        self._toxics: dict[str, Toxic] = {}
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.resets = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._listen()  # first, so the port is known even when a Down toxic is already set
        self._apply()

    async def stop(self) -> None:
        self._unlisten()
        for link in list(self._links):
            link.abort(rst=False)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self._port}"

    @property
    def active(self) -> int:
        return len(self._links)

    def counters(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "active": self.active,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "resets": self.resets,
        }

    def set_upstream(self, host: str, port: int) -> None:
        """Point new connections at another upstream (a restarted replica's new port)."""
        self.upstream_host, self.upstream_port = host, port

    # -- toxics -------------------------------------------------------------------------------

    @property
    def toxics(self) -> dict[str, Toxic]:
        return dict(self._toxics)

    def set_toxic(self, name: str, toxic: Toxic) -> None:
        """Add or replace toxic ``name``; it acts on open connections at once."""
        if not isinstance(toxic, tuple(TOXIC_TYPES.values())):
            raise TypeError(f"not a toxic: {toxic!r}")
        self._toxics[name] = toxic
        self._apply()

    def remove_toxic(self, name: str) -> None:
        self._toxics.pop(name, None)
        self._apply()

    def clear(self) -> None:
        self._toxics.clear()
        self._apply()

    def _has(self, kind: type) -> bool:
        return any(isinstance(t, kind) for t in self._toxics.values())

    def _apply(self) -> None:
        """Make the listener and the open connections agree with the toxics now set."""
        if self._loop is None:
            return  # not started: start() applies them
        down = self._has(Down)
        if down or self._has(ResetPeer):
            for link in list(self._links):
                self._cut(link)
        if down:
            self._unlisten()
        elif self._sock is None:
            self._listen()

    def _cut(self, link: _Link) -> None:
        if not link.cut:
            self.resets += 1
            link.abort(rst=True)

    def _delay(self) -> float:
        total = 0.0
        for toxic in self._toxics.values():
            if isinstance(toxic, Latency):
                jitter = self._rng.uniform(-toxic.jitter_ms, toxic.jitter_ms) if toxic.jitter_ms else 0.0
                total += toxic.latency_ms + jitter
        return max(0.0, total) / 1000

    def _rate(self) -> float | None:
        rates = [t.bytes_per_second for t in self._toxics.values() if isinstance(t, Bandwidth)]
        return min(rates) if rates else None

    # -- listening ----------------------------------------------------------------------------

    def _listen(self) -> None:
        assert self._loop is not None
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.listen_host, self._port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._accept_task = self._loop.create_task(self._accept(sock))

    def _unlisten(self) -> None:
        if self._sock is None:
            return
        assert self._loop is not None and self._accept_task is not None
        # Drop the pending accept's reader before closing, so a later socket that reuses the
        # descriptor is not unregistered by the cancelled accept's clean-up.
        self._loop.remove_reader(self._sock.fileno())
        self._accept_task.cancel()
        self._sock.close()
        self._sock = None
        self._accept_task = None

    async def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        while True:
            client, _ = await self._loop.sock_accept(sock)
            self.connections += 1
            task = self._loop.create_task(self._serve(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- one connection -----------------------------------------------------------------------

    async def _serve(self, client: socket.socket) -> None:
        link = _Link(client)
        self._links.add(link)
        try:
            if self._has(ResetPeer) or self._has(Down):
                self._cut(link)
                return
            c_reader, c_writer = await asyncio.open_connection(sock=client)
            link.writers.append(c_writer)
            try:
                u_reader, u_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                self._cut(link)  # upstream gone: the client sees a reset, as behind a real proxy
                return
            link.writers.append(u_writer)
            if link.cut:
                link.abort(rst=True)
                return
            pipes = [
                asyncio.create_task(self._pipe(c_reader, u_writer, link, upstream=True)),
                asyncio.create_task(self._pipe(u_reader, c_writer, link, upstream=False)),
            ]
            try:
                await asyncio.gather(*pipes)
            finally:
                for pipe in pipes:
                    pipe.cancel()
        except OSError:
            pass
        finally:
            self._links.discard(link)
            if not link.cut:
                link.close()
            for writer in link.writers:  # let the transports finish closing before the loop may end
                try:
                    await writer.wait_closed()
                except OSError:
                    pass

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, upstream: bool
    ) -> None:
        """Copy one direction, applying the toxics in force when each chunk is delivered."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            try:
                while True:
                    data = await reader.read(CHUNK)
                    await queue.put((loop.time(), data))
                    if not data:
                        return
            except OSError:
                await queue.put((loop.time(), b""))

        reading = loop.create_task(read())
        try:
            while True:
                arrived, data = await queue.get()
                if not data:
                    if not link.cut and writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()
                    return
                if self._has(Timeout):
                    continue  # swallowed
                delay = self._delay()
                if delay:
                    await asyncio.sleep(max(0.0, arrived + delay - loop.time()))
                if link.cut:
                    return
                if self._has(Timeout):
                    continue
                await self._write(writer, data, link)
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        finally:
            reading.cancel()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, link: _Link) -> None:
        rate = self._rate()
        if rate is None:
            writer.write(data)
            await writer.drain()
            return
        step = max(1, int(rate * PACE_SLICE))
        for start in range(0, len(data), step):
            if link.cut:
                return
            piece = data[start : start + step]
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(len(piece) / (self._rate() or rate))


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"//{url}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"expected an upstream url like http://127.0.0.1:8000, got {url!r}")
    return parts.hostname, parts.port


class ProxyFleet:
    """Many :class:`ChaosProxy` on one background thread and event loop, driven from sync code.

    Every method blocks until the change is in effect on the proxy's loop, and is safe to call
    from any thread.
    """

    def __init__(self, listen_host: str = "127.0.0.1", seed: int = 0) -> None:
        self.listen_host = listen_host
        self.seed = seed
        self._proxies: dict[str, ChaosProxy] = {}
        self._adding = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy-fleet", daemon=True)
        self._thread.start()
        self._closed = False

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (sync, or returning an awaitable) on the fleet's loop and wait for it."""
        if self._closed:
            raise RuntimeError("the proxy fleet is closed")

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        if threading.current_thread() is self._thread:
            raise RuntimeError("ProxyFleet methods are for other threads; use the ChaosProxy directly")
        future: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout=30)

    def proxy(self, name: str) -> ChaosProxy:
        try:
            return self._proxies[name]
        except KeyError:
            raise KeyError(f"no proxy named {name!r}") from None

    def add(self, name: str, upstream_url: str, listen_port: int = 0) -> str:
        """Start a proxy for ``upstream_url`` and return the url to use instead."""
        host, port = _host_port(upstream_url)
        with self._adding:
            if name in self._proxies:
                raise ValueError(f"proxy {name!r} already exists")
            proxy = ChaosProxy(host, port, self.listen_host, listen_port, seed=self.seed + len(self._proxies))
            self._call(proxy.start)
            self._proxies[name] = proxy
        return proxy.url

    def url(self, name: str) -> str:
        return self.proxy(name).url

    def set_upstream(self, name: str, upstream_url: str) -> None:
        host, port = _host_port(upstream_url)
        proxy = self.proxy(name)
        self._call(lambda: proxy.set_upstream(host, port))

    def set_toxic(self, name: str, toxic_name: str, toxic: Toxic) -> None:
        proxy = self.proxy(name)
        self._call(lambda: proxy.set_toxic(toxic_name, toxic))

    def remove_toxic(self, name: str, toxic_name: str) -> None:
        proxy = self.proxy(name)
        self._call(lambda: proxy.remove_toxic(toxic_name))

    def clear(self, name: str) -> None:
        self._call(self.proxy(name).clear)

    def counters(self, name: str) -> dict[str, int]:
        return self._call(self.proxy(name).counters)

    def close(self) -> None:
        """Stop every proxy and the fleet's thread."""
        if self._closed:
            return
        for proxy in self._proxies.values():
            self._call(proxy.stop)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ProxyFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
