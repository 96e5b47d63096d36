"""The hands on the target: planned actions carried out through the endpoints' hooks and the
chaos proxies, each journaled as it happens, and everything still in force undone on the way out.

:class:`Operator` is the injector's target (:class:`testbed.live.injector.Injector` calls
:meth:`Operator.perform` at each action's time). Restarts and resumes wait until the endpoint
answers its health check again, so the time an action took is the time the endpoint took to
come back (with ``self_healing`` that is the platform's own recovery). Before switching a fault
on, the blast-radius limit is checked against what is in force *now*: a restart that failed
leaves its endpoint counted as faulted, and the next fault is refused rather than taking down
one endpoint too many.

:meth:`Operator.rollback` undoes, newest first, every entry of the journal still in force:
restart what was killed, resume what was paused, switch hooks back to neutral, remove toxics
and cuts. :func:`rollback_journal` does the same from a journal file alone, after the run that
wrote it died; chaos-proxy toxics lived in that run's process and ended with it.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.live.chaos_proxy import Bandwidth, Down, Latency, ProxyFleet, Timeout
from testbed.live.injector import Action
from testbed.live.targets.hooks import ActionFailed, perform, wait_healthy
from testbed.live.targets.journal import Entry, Journal, read
from testbed.live.targets.plan import NEUTRAL_HOOKS, PROXY_VERBS, UNDO as UNDO_VERB, TargetPlan, neutral
from testbed.live.targets.spec import Endpoint, TargetSpec

CUT = "cut"

Report = Callable[[str], None]


def _key(verb: str, target: str, name: str = "") -> str:
    undo = UNDO_VERB.get(verb, verb)
    return f"{undo}:{target}" + (f":{name}" if name else "")


def _toxic(params: dict[str, Any]):
    """The chaos-proxy toxic for a network fault (as the project's own stack uses them)."""
    kind = params["kind"]
    if kind == "partition":
        return Timeout()
    if kind == "latency":
        return Latency(latency_ms=params["delay"] * 1000, jitter_ms=params.get("jitter", 0.0) * 1000)
    return Bandwidth(rate_kbps=params["limit"] * 8 / 1000)


class Operator:
    """Performs a :class:`TargetPlan`'s actions on the target; see the module docstring."""

    def __init__(self, plan: TargetPlan, journal: Journal, proxies: ProxyFleet | None, base_dir: Path,
                 clock: Callable[[], float] = time.monotonic, started: float = 0.0) -> None:
        self.plan, self.journal, self.proxies, self.base_dir = plan, journal, proxies, base_dir
        self.clock, self.started = clock, started
        self.by_name = {e.name: e for e in plan.endpoints}
        limit = plan.target.blast_radius * len(plan.endpoints)
        self.limit = math.floor(limit + 1e-9)

    # ------------------------------------------------------------------ forward

    async def perform(self, action: Action) -> None:
        at = round(self.clock() - self.started, 3)
        if action.verb in PROXY_VERBS:
            await self._proxy(action, at)
            return
        endpoint = self.plan.endpoints[int(action.target)]
        verb, params = action.verb, dict(action.params)
        undoes = verb in ("restart", "resume") or (verb == "hooks" and neutral(params))
        if not undoes:
            self._check_blast_radius([endpoint.name], f"{verb} {endpoint.name}")
        how = await self._do(endpoint, verb, params)
        self.journal.applied(verb, _key(verb, endpoint.name), how, endpoint=endpoint.name, region=self.plan.regions[int(action.target)],
                             params=params, undoes=undoes, at=at)

    async def _do(self, endpoint: Endpoint, verb: str, params: dict[str, Any]) -> str:
        hook = getattr(endpoint.actions, verb)
        if hook is None:  # plan_target refused this already; a rollback may still ask
            raise ActionFailed(f"endpoint {endpoint.name} has no {verb} action")
        how = await perform(hook, endpoint, params, self.base_dir)
        if verb in ("restart", "resume"):
            took = await wait_healthy(endpoint, endpoint.actions.recover_within)
            how += f"; healthy after {took:.2f} s"
        return how

    async def _proxy(self, action: Action, at: float) -> None:
        assert self.proxies is not None, "plan_target refuses network faults without proxies"
        region = str(action.target)
        names = [self.plan.endpoints[i].name for i in self.plan.in_region(region)]
        toxic_name = CUT if action.verb in ("cut", "heal") else f"{action.params['kind']}-{action.fault}"
        undoes = action.verb in ("heal", "untoxic")
        if not undoes:
            self._check_blast_radius(names, f"{action.verb} {region}")
        for name in names:
            if action.verb == "cut":
                await asyncio.to_thread(self.proxies.set_toxic, name, CUT, Down())
            elif action.verb == "toxic":
                await asyncio.to_thread(self.proxies.set_toxic, name, toxic_name, _toxic(action.params))
            else:
                await asyncio.to_thread(self.proxies.remove_toxic, name, toxic_name)
        key = _key(action.verb, region, "" if toxic_name == CUT else toxic_name)
        how = f"{action.verb} {toxic_name} on the chaos proxies of {', '.join(names)}"
        self.journal.applied(action.verb, key, how, region=region, params=dict(action.params), undoes=undoes, at=at)

    def faulted(self) -> set[str]:
        """Endpoints under some fault in force now."""
        names: set[str] = set()
        for entry in self.journal.in_force.values():
            if entry.endpoint is not None:
                names.add(entry.endpoint)
            elif entry.region is not None:
                names.update(self.plan.endpoints[i].name for i in self.plan.in_region(entry.region))
        return names

    def _check_blast_radius(self, names: list[str], what: str) -> None:
        after = self.faulted() | set(names)
        if len(after) > self.limit:
            raise ActionFailed(
                f"{what} refused: {len(after)} of {len(self.plan.endpoints)} endpoints would be faulted at once "
                f"(blast_radius allows {self.limit}); still faulted: {', '.join(sorted(self.faulted()))}"
            )

    # ------------------------------------------------------------------ back

    async def rollback(self, report: Report) -> list[str]:
        """Undo everything in force, newest first; returns the failures (the rest is restored)."""
        failures = []
        for entry in sorted(self.journal.in_force.values(), key=lambda e: -e.seq):
            try:
                how = await self._undo(entry)
            except Exception as exc:  # noqa: BLE001 - every other undo must still run
                failures.append(f"undo {entry.verb} ({entry.key}): {exc}")
                self.journal.write("failed", verb=UNDO_VERB[entry.verb], key=entry.key, error=str(exc), rollback=True)
                report(f"rollback failed: {entry.key}: {exc}")
            else:
                self.journal.applied(UNDO_VERB[entry.verb], entry.key, how, endpoint=entry.endpoint, region=entry.region,
                                     params=NEUTRAL_HOOKS if entry.verb == "hooks" else {}, undoes=True)
                report(f"rolled back {entry.key}: {how}")
        return failures

    async def _undo(self, entry: Entry) -> str:
        if entry.endpoint is not None:
            endpoint = self.by_name[entry.endpoint]
            return await self._do(endpoint, UNDO_VERB[entry.verb], dict(NEUTRAL_HOOKS) if entry.verb == "hooks" else {})
        assert self.proxies is not None and entry.region is not None
        toxic_name = entry.key.split(":", 2)[2] if entry.verb == "toxic" else CUT
        for i in self.plan.in_region(entry.region):
            await asyncio.to_thread(self.proxies.remove_toxic, self.plan.endpoints[i].name, toxic_name)
        return f"removed {toxic_name} from the chaos proxies of {entry.region}"


async def _undo_from_journal(target: TargetSpec, entry: Entry, base_dir: Path) -> str:
    endpoints = {e.name: e for e in target.endpoints()}
    if entry.endpoint is None:
        return "the chaos proxies ended with the run that added this; nothing left to remove"
    endpoint = endpoints[entry.endpoint]
    verb = UNDO_VERB[entry.verb]
    hook = getattr(endpoint.actions, verb)
    if hook is None:
        raise ActionFailed(f"endpoint {endpoint.name} has no {verb} action")
    params = dict(NEUTRAL_HOOKS) if entry.verb == "hooks" else {}
    how = await perform(hook, endpoint, params, base_dir)
    if verb in ("restart", "resume"):
        how += f"; healthy after {await wait_healthy(endpoint, endpoint.actions.recover_within):.2f} s"
    return how


def rollback_journal(path: Path, report: Report) -> list[str]:
    """Undo what the run that wrote the journal at ``path`` left in force; returns the failures."""
    from testbed.live.targets.spec import TargetSpec

    begin, in_force, lines = read(path)
    if any(line.get("event") == "rolled_back" for line in lines) and not in_force:
        report("nothing to roll back: the journal shows everything undone")
        return []
    target = TargetSpec.model_validate(begin["target"])
    base_dir = Path(begin.get("base_dir", "."))
    journal = Journal(path)
    journal.seq = max((line.get("seq") or 0 for line in lines), default=0)
    journal.write("rollback", pid=os.getpid(), entries=[e.key for e in in_force])
    failures = []

    async def undo_all() -> None:
        for entry in sorted(in_force, key=lambda e: -e.seq):
            try:
                how = await _undo_from_journal(target, entry, base_dir)
            except Exception as exc:  # noqa: BLE001 - every other undo must still run
                failures.append(f"undo {entry.key}: {exc}")
                journal.write("failed", key=entry.key, error=str(exc), rollback=True)
                report(f"rollback failed: {entry.key}: {exc}")
            else:
                journal.seq += 1
                journal.write("applied", seq=journal.seq, verb=UNDO_VERB[entry.verb], key=entry.key, how=how, endpoint=entry.endpoint,
                              region=entry.region, params={}, undo=True, undoes=entry.seq)
                report(f"rolled back {entry.key}: {how}")

    try:
        asyncio.run(undo_all())
        if not in_force:
            report("nothing to roll back: no action was left in force")
        journal.write("rolled_back", failures=failures)
    finally:
        journal.close()
    return failures
