"""The client side of a target run: the scenario's requests sent at their arrival times, each
recorded as the user's own clients would see it.

In client mode these rows are the records (the user's router is under test, and nothing of the
project sits between the clients and it); in gateway mode the gateway's records are, and the
client's view still feeds the stop conditions. A row follows the records' schema: ``ok`` when
the answer came whole, ``timeout`` when the client gave up after the scenario's request timeout,
``shed`` for a 429, ``failed`` otherwise; the first token is the first streamed chunk that carried
text (a non-streamed answer has its first token when it arrives). The replica that served is not
visible from outside, so it is -1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable

import httpx

from testbed.live.records import LiveRecorder, LiveRow
from testbed.live.replay import ReplayPlan

Outcome = Callable[[float, bool], None]


class Client:
    """Sends a replay plan's requests to ``url``; ``recorder`` holds the client-side rows."""

    def __init__(self, replay: ReplayPlan, url: str, model: str, stream: bool, started: float, timeout: float,
                 on_outcome: Outcome) -> None:
        self.replay, self.url, self.model, self.stream = replay, url, model, stream
        self.started, self.timeout, self.on_outcome = started, timeout, on_outcome
        self.recorder = LiveRecorder()
        self.stopped_at: float | None = None  # run time from which no request is sent (an abort)
        self._stopping = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.started

    def stop(self) -> None:
        """Send nothing due from now on; requests in flight finish."""
        if self.stopped_at is None:
            self.stopped_at = self.now()
        self._stopping.set()

    def sent(self) -> int:
        """How many requests were sent: a prefix of the workload (arrivals before the abort)."""
        times = self.replay.arrivals.time
        return len(times) if self.stopped_at is None else int((times < self.stopped_at).sum())

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0))
        async with httpx.AsyncClient(base_url=self.url, timeout=timeout, limits=limits) as client:
            times = self.replay.arrivals.time.tolist()
            await asyncio.gather(*(self._send(client, i, at) for i, at in enumerate(times)))

    async def _send(self, client: httpx.AsyncClient, i: int, at: float) -> None:
        delay = self.started + at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)  # an abort wakes the requests not yet due
        if self.stopped_at is not None and at >= self.stopped_at:
            return
        arrivals = self.replay.arrivals
        row = self.recorder.open(
            self.now(), request_id=i,
            request_class=arrivals.class_names[arrivals.request_class[i]],
            priority=int(arrivals.priority[i]),
            client_region=arrivals.region_names[arrivals.client_region[i]],
        )
        body = {
            "model": self.model,
            "prompt": self.replay.prompts[i],
            "max_tokens": int(arrivals.output_tokens[i]),
            "ignore_eos": True,
        }
        if self.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        headers = {"x-request-id": str(i), "x-client-region": row.client_region, "x-priority": str(row.priority),
                   "x-request-class": row.request_class}
        status = "failed"
        try:
            async with client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
                if response.status_code == 200:
                    status = await self._read(response, row)
                else:
                    await response.aread()
                    status = "shed" if response.status_code == 429 else "timeout" if response.status_code == 504 else "failed"
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.HTTPError:
            status = "failed"
        self.recorder.close(row, status, self.now())
        self.on_outcome(row.finish, status == "ok")

    async def _read(self, response: httpx.Response, row: LiveRow) -> str:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            data = json.loads(await response.aread())
            row.first_token = self.now()
            _usage(row, data.get("usage"))
            return "ok" if data.get("choices") else "failed"
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                return "failed"
            if math.isnan(row.first_token) and any(c.get("text") for c in chunk.get("choices") or []):
                row.first_token = self.now()
            _usage(row, chunk.get("usage"))
        return "ok" if done else "failed"


def _usage(row: LiveRow, usage: dict | None) -> None:
    if usage:
        row.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        row.output_tokens = int(usage.get("completion_tokens") or 0)
