"""Actions and probes for Chaos Toolkit experiments: testbed called from ``chaos run``.

A Chaos Toolkit user keeps their experiment file and calls testbed from it as a Python
provider (``"module": "testbed.live.targets.chaostoolkit"``):

* probes — :func:`endpoints_healthy` (the steady-state hypothesis: every endpoint of a target
  answers its health check) and :func:`sla_passed` (the verdicts of a finished run);
* actions — :func:`run_scenario` (start a load: a scenario's workload and its faults from the
  catalog against the target, with testbed's own stop conditions, rollbacks and journal; it
  returns the verdicts), :func:`inject_fault` (one fault of the catalog's kinds on one endpoint,
  journaled) and :func:`rollback` (undo what a journal left in force — the experiment's
  ``rollbacks`` section).

Every function takes plain strings and numbers (what an experiment's ``arguments`` hold) and
returns JSON-able values, so Chaos Toolkit's journal records them as they are.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from testbed.live.targets.hooks import ActionFailed, healthy, perform
from testbed.live.targets.journal import Journal
from testbed.live.targets.spec import load_target

# A fault kind of the catalog -> the endpoint action that carries it out, and its undo key.
FAULT_VERBS = {
    "accelerator_failure": "kill", "node_crash": "kill", "capacity_loss": "kill",
    "node_hang": "pause", "slowdown": "hooks", "error_injection": "hooks",
}


def endpoints_healthy(target: str, allow_remote: bool = False) -> bool:
    """Probe: does every endpoint of the target answer its health check?"""
    spec = load_target(target, allow_remote=allow_remote)

    async def check() -> list[bool]:
        return await asyncio.gather(*(healthy(e, timeout=5.0) for e in spec.endpoints()))

    return all(asyncio.run(check()))


def run_scenario(scenario: str, target: str, out: str, mode: str | None = None, seed: int | None = None,
                 allow_remote: bool = False) -> dict[str, Any]:
    """Action: run a scenario (load and faults) against the target; its verdicts and stats."""
    from testbed.live.targets.run import run_target
    from testbed.spec import Scenario

    spec = load_target(target, allow_remote=allow_remote)
    out_dir = Path(out)
    result = run_target(Scenario.from_yaml(scenario), spec, source=target, base_dir=Path(target).resolve().parent,
                        journal_path=out_dir / "journal.jsonl", mode=mode, seed=seed, out_dir=out_dir).result
    return {
        "passed": result.passed,
        "aborted": result.stats.get("aborted"),
        "requests": int(len(result.requests)),
        "verdicts": [{"objective": v.objective, "passed": bool(v.passed), "observed": float(v.observed)} for v in result.sla],
        "journal": str(out_dir / "journal.jsonl"),
    }


def sla_passed(out: str) -> bool:
    """Probe: did the run written to ``out`` meet every objective?"""
    return bool(json.loads((Path(out) / "verdicts.json").read_text())["passed"])


def inject_fault(target: str, endpoint: str, kind: str, journal: str, slowdown: float = 2.0, error_rate: float = 0.5,
                 error_status: int = 500, allow_remote: bool = False) -> str:
    """Action: one fault of ``kind`` (a catalog fault kind) on ``endpoint``, written to ``journal``."""
    spec = load_target(target, allow_remote=allow_remote)
    if kind not in FAULT_VERBS:
        raise ActionFailed(f"kind: expected one of {', '.join(FAULT_VERBS)}, got {kind!r}")
    endpoints = {e.name: e for e in spec.endpoints()}
    if endpoint not in endpoints:
        raise ActionFailed(f"endpoint: {endpoint!r} is not in target {spec.name} (it has {', '.join(endpoints)})")
    verb = FAULT_VERBS[kind]
    hook = getattr(endpoints[endpoint].actions, verb)
    if hook is None:
        raise ActionFailed(f"endpoint {endpoint} has no {verb} action for {kind}")
    params: dict[str, Any] = {}
    if kind == "slowdown":
        params = {"slowdown": slowdown}
    elif kind == "error_injection":
        params = {"error_rate": error_rate, "error_status": error_status}
    base_dir = Path(target).resolve().parent
    how = asyncio.run(perform(hook, endpoints[endpoint], params, base_dir))
    book = Journal(Path(journal))
    if book.path.stat().st_size == 0:
        book.write("begin", source=target, base_dir=str(base_dir), target=spec.model_dump(mode="json", by_alias=True))
    book.seq = sum(1 for _ in open(book.path))  # unique within the file
    undo = {"kill": "restart", "pause": "resume", "hooks": "hooks"}[verb]
    book.applied(verb, f"{undo}:{endpoint}", how, endpoint=endpoint, params=params)
    book.close()
    return how


def rollback(journal: str) -> list[str]:
    """Action (for ``rollbacks``): undo what the journal left in force; the failures (none: all restored)."""
    from testbed.live.targets.operator import rollback_journal

    if not Path(journal).exists():
        return []
    return rollback_journal(Path(journal), lambda _: None)


__all__ = ["endpoints_healthy", "inject_fault", "rollback", "run_scenario", "sla_passed"]
