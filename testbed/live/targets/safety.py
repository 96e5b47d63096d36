"""Safety around a target run: the steady-state hypothesis and the stop conditions.

The **steady-state hypothesis** (Chaos Toolkit's term) is checked before any fault — a target
that is not healthy to begin with proves nothing, so no fault is injected — and again after the
rollbacks, within ``steady_state.within`` seconds: that is the deployment recovering. Its two
results are verdicts of the run, beside the SLA's.

**Stop conditions** (AWS FIS's term) abort a run that is doing more harm than the experiment
is worth. :class:`StopWatch` reads the client's view of each request as it ends — what a user
sees — and trips when availability over a sliding window falls below a floor, or when the
scenario's availability error budget burns faster than ``burn`` times over both a long and a
short window (the SRE workbook's multiwindow burn-rate alert, on seconds rather than hours).
It does no I/O: the run feeds it outcomes and asks it, so it is tested on plain numbers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import httpx

from testbed.live.targets.hooks import healthy
from testbed.live.targets.spec import Endpoint, StopConditions
from testbed.sla import Verdict
from testbed.spec import Objective


@dataclass(frozen=True)
class Check:
    passed: bool
    detail: str


async def steady_state(endpoints: list[Endpoint], completion_urls: list[str], model: str, checks_health: bool) -> Check:
    """Every endpoint healthy (if asked) and a one-token completion answered at each URL."""
    problems = []
    if checks_health:
        states = await asyncio.gather(*(healthy(e, timeout=5.0) for e in endpoints))
        problems += [f"{e.name} unhealthy at {e.url}{e.health}" for e, ok in zip(endpoints, states) if not ok]
    async with httpx.AsyncClient(timeout=60.0) as client:
        for url in completion_urls:
            try:
                response = await client.post(url + "/v1/completions", json={"model": model, "prompt": "steady", "max_tokens": 1})
                if response.status_code != 200:
                    problems.append(f"completion at {url} answered {response.status_code}")
            except httpx.HTTPError as exc:
                problems.append(f"completion at {url} failed: {type(exc).__name__}")
    return Check(not problems, "; ".join(problems) or "held")


async def steady_state_within(within: float, *args) -> Check:
    """Check until it holds, at most ``within`` seconds (the deployment recovering)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        check = await steady_state(*args)
        if check.passed or loop.time() > deadline:
            return check
        await asyncio.sleep(0.5)


def steady_verdict(name: str, check: Check) -> Verdict:
    """A steady-state check as a verdict of the run (1 = held)."""
    observed = 1.0 if check.passed else 0.0
    return Verdict(f"steady state {name}", "steady_state", None, "min", 1.0, observed, check.passed, observed - 1.0, "", 1)


class StopWatch:
    """Client-side outcomes in, an abort reason out; see the module docstring."""

    def __init__(self, spec: StopConditions, objectives: list[Objective], source: str) -> None:
        self.spec = spec
        self.reason: str | None = None
        self.budget: float | None = None
        if spec.burn_rate is not None:
            floors = [o.min for o in objectives if o.metric == "availability" and o.min is not None]
            if not floors:
                raise ValueError(f"{source}: stop.burn_rate: the scenario has no availability objective to take an error budget from")
            self.budget = 1.0 - max(floors)
            if self.budget <= 0:
                raise ValueError(f"{source}: stop.burn_rate: an availability objective of 100% leaves no error budget to burn")
        windows = [w for w in (spec.availability and spec.availability.window, spec.burn_rate and spec.burn_rate.long) if w]
        self.horizon = max(windows, default=0.0)
        self.events: deque[tuple[float, bool]] = deque()

    def record(self, t: float, ok: bool) -> None:
        self.events.append((t, ok))

    def check(self, now: float) -> str | None:
        """The reason to abort at ``now``, or None; once tripped it stays tripped."""
        if self.reason is not None:
            return self.reason
        while self.events and self.events[0][0] < now - self.horizon:
            self.events.popleft()
        a = self.spec.availability
        if a is not None:
            n, good = self._window(now, a.window)
            if n >= a.min_requests and good / n < a.min:
                self.reason = f"availability {good / n:.1%} over the last {a.window:g} s is below the floor {a.min:.1%} ({n} requests)"
        b = self.spec.burn_rate
        if b is not None and self.reason is None:
            assert self.budget is not None
            burns = []
            for window in (b.long, b.short):
                n, good = self._window(now, window)
                burns.append((n, (n - good) / n / self.budget if n else 0.0))
            if all(n >= b.min_requests and burn >= b.burn for n, burn in burns):
                self.reason = (
                    f"burn-rate alert: the availability budget burns {burns[0][1]:.1f}x over {b.long:g} s and "
                    f"{burns[1][1]:.1f}x over {b.short:g} s (threshold {b.burn:g}x)"
                )
        return self.reason

    def _window(self, now: float, width: float) -> tuple[int, int]:
        inside = [ok for t, ok in self.events if t >= now - width]
        return len(inside), sum(inside)


def stop_verdict(reason: str | None) -> Verdict:
    observed = 0.0 if reason else 1.0
    return Verdict("no stop condition tripped" + (f": {reason}" if reason else ""), "stop_condition", None, "min", 1.0,
                   observed, reason is None, observed - 1.0, "", 1)
