"""Chaos hooks inside a replica: slowdown, injected errors, hang — switched on over HTTP.

These are faults a process can do to itself, which the network-level chaos proxy cannot fake:
a slow accelerator (every model step stretched), an engine answering errors at a rate, a hung
process that accepts connections but never answers. Tests and the live fault injector switch
them with ``POST /chaos`` (fields merge into the current state), clear them with
``DELETE /chaos`` and read them with ``GET /chaos``; the ``/chaos`` routes themselves are never
affected, so a hung replica can always be un-hung.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from testbed.live.openai_schema import error_body

INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
ErrorStatus = Annotated[int, Field(strict=True, ge=400, le=599)]


class ChaosPatch(BaseModel):
    """A ``POST /chaos`` body: any subset of the fields; unknown fields are errors (typos)."""

    model_config = ConfigDict(extra="forbid")

    slowdown: Annotated[float, Field(strict=True, ge=1.0)] | None = None
    error_rate: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] | None = None
    error_status: Annotated[list[ErrorStatus], Field(min_length=1)] | None = None
    hang: bool | None = Field(None, strict=True)


class ReplicaChaos:
    """The current chaos state of one replica, and the decisions that follow from it.

    ``engine`` is anything with a ``slowdown`` attribute (the built-in engine). Injected errors
    draw from a seeded generator, so a test's sequence of outcomes is reproducible.
    """

    def __init__(self, engine=None, seed: int = 0) -> None:
        self.engine = engine
        self._rng = random.Random(seed)
        self._running = asyncio.Event()
        self.clear()

    def clear(self) -> None:
        self.slowdown = 1.0
        self.error_rate = 0.0
        self.error_status = [503]
        self.hang = False
        self._apply()

    def update(self, patch: ChaosPatch) -> None:
        for name, value in patch.model_dump(exclude_none=True).items():
            setattr(self, name, value)
        self._apply()

    def _apply(self) -> None:
        if self.engine is not None:
            self.engine.slowdown = self.slowdown
        if self.hang:
            self._running.clear()
        else:
            self._running.set()

    def snapshot(self) -> dict:
        return {"slowdown": self.slowdown, "error_rate": self.error_rate,
                "error_status": list(self.error_status), "hang": self.hang}

    def injected_status(self) -> int | None:
        """The status to fail this request with, or None to serve it."""
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            return self._rng.choice(self.error_status)
        return None

    async def wait_while_hung(self) -> None:
        await self._running.wait()


class ChaosMiddleware:
    """ASGI middleware: stalls every message while hung, and fails inference requests at a rate.

    Stalling at ``send`` (not only at entry) means streams already under way freeze too, as
    they would if the process hung mid-generation.
    """

    def __init__(self, app, chaos: ReplicaChaos) -> None:
        self.app = app
        self.chaos = chaos

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/chaos"):
            await self.app(scope, receive, send)
            return
        chaos = self.chaos
        await chaos.wait_while_hung()
        if scope["path"] in INFERENCE_PATHS:
            status = chaos.injected_status()
            if status is not None:
                await _send_error(send, status)
                return

        async def stalling_send(message) -> None:
            await chaos.wait_while_hung()
            await send(message)

        await self.app(scope, receive, stalling_send)


async def _send_error(send, status: int) -> None:
    body = json.dumps(error_body(f"injected error: this replica is failing requests with status {status}",
                                 type="injected_error", code=str(status))).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
