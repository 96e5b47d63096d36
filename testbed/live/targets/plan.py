"""A run against a target, decided before anything starts: which endpoint stands for which
replica, which hook carries out each fault action, and whether the target can do it at all.

The scenario keeps its topology — it is what the simulation of the same scenario runs, so a
target run can be compared with it — and the target's endpoints take the places of its
replicas: the endpoints listed under region R, pool P are the topology's replicas of R and P,
in order. The fault schedule is drawn exactly as for the project's own stack and planned into
the same actions (:func:`testbed.live.injector.plan`); here each action is bound to the
endpoint hook that performs it, and refused — naming the fault and what is missing — when the
target has no such hook, before any process is touched. The blast-radius limit is checked on
the planned actions too: how many endpoints are under some fault at once never depends on
timing.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from testbed.live.injector import Action, LiveUnsupported
from testbed.live.replay import ReplayPlan, prepare
from testbed.live.targets.spec import Endpoint, TargetSpec
from testbed.spec import Scenario, SpecError

# The hook each action verb needs, and the verb that undoes it (what a rollback performs).
UNDO = {"kill": "restart", "pause": "resume", "hooks": "hooks", "cut": "heal", "toxic": "untoxic"}
NEUTRAL_HOOKS = {"slowdown": 1.0, "error_rate": 0.0}
ENDPOINT_VERBS = ("kill", "restart", "pause", "resume", "hooks")
PROXY_VERBS = ("cut", "heal", "toxic", "untoxic")


@dataclass
class TargetPlan:
    """The replay plan (workload, schedule, actions) with the endpoints standing for its replicas."""

    replay: ReplayPlan
    target: TargetSpec
    endpoints: list[Endpoint]  # index = the topology's replica index
    regions: list[str]  # region of each endpoint
    pools: list[str]
    mode: str
    peak_faulted: int  # endpoints under a fault at once, at most

    @property
    def actions(self) -> list[Action]:
        return self.replay.actions

    def in_region(self, region: str) -> list[int]:
        return [i for i, r in enumerate(self.regions) if r == region]

    def describe(self) -> list[str]:
        """The plan in words, one line each: what ``--dry-run`` prints."""
        scenario, target = self.replay.scenario, self.target
        n = len(self.endpoints)
        to = f"to {target.entry}" if self.mode == "client" else "through the project's gateway"
        lines = [
            f"target {target.name} ({self.mode} mode), scenario {scenario.name}, seed {self.replay.seed}",
            f"workload: {len(self.replay.arrivals):,} requests over {scenario.duration:g} s {to}",
        ]
        for i, endpoint in enumerate(self.endpoints):
            proxy = " behind a chaos proxy" if endpoint.proxy is not None else ""
            lines.append(f"endpoint {endpoint.name} = replica {i} ({self.regions[i]}, pool {self.pools[i]}): {endpoint.url}{proxy}")
        steady = target.steady_state
        checks = [c for c, on in (("health of every endpoint", steady.health), ("one completion", steady.completion)) if on]
        lines.append(f"steady state before the faults and after recovery: {', '.join(checks) or 'nothing checked'}")
        stop = target.stop
        if stop.availability is not None:
            lines.append(f"stop if availability over {stop.availability.window:g} s falls below {stop.availability.min:.1%}")
        if stop.burn_rate is not None:
            b = stop.burn_rate
            lines.append(f"stop if the availability budget burns over {b.burn:g}x in both {b.long:g} s and {b.short:g} s")
        lines.append(f"blast radius: at most {self.peak_faulted} of {n} endpoints faulted at once (limit {target.blast_radius:.0%})")
        for action in self.actions:
            lines.append(f"  at {action.at:7.2f} s  {self.how(action)}")
        lines.append("rollback: every action still in force is undone at the end, on failure, Ctrl-C or abort")
        if self.mode == "client":
            lines.append("client mode: the scenario's serving: section is not used; your own stack's policies are under test")
        return lines

    def how(self, action: Action) -> str:
        """One action in words: verb, where, and the hook that carries it out."""
        if action.verb in PROXY_VERBS:
            names = ", ".join(self.endpoints[i].name for i in self.in_region(str(action.target)))
            what = f"{action.params.get('kind', 'cut')} " if action.verb in ("toxic", "untoxic") else ""
            return f"{action.verb} {what}{action.target} through the chaos proxies of {names}"
        endpoint = self.endpoints[int(action.target)]
        hook = getattr(endpoint.actions, action.verb)
        params = f" {dict(action.params)}" if action.params else ""
        return f"{action.verb} {endpoint.name}{params}: {hook.describe()}"


def plan_target(scenario: Scenario, target: TargetSpec, source: str, mode: str | None = None, seed: int | None = None) -> TargetPlan:
    """Bind the scenario's replicas to the target's endpoints and its fault actions to their hooks.

    Raises :class:`SpecError` (mapping, mode) or :class:`LiveUnsupported` (a fault the target
    cannot carry out) before anything starts.
    """
    mode = mode or target.mode
    if mode == "client" and target.entry is None:
        raise SpecError(f"{source}: entry: client mode sends the workload to your own entry point; give its URL")
    replay = prepare(scenario, seed)
    endpoints, regions, pools = _bind(replay, target, source)
    plan = TargetPlan(replay, target, endpoints, regions, pools, mode, 0)
    for action in replay.actions:
        _check_action(plan, action, source)
    plan.peak_faulted = peak_faulted(replay.actions, plan)
    limit = math.floor(target.blast_radius * len(endpoints) + 1e-9)
    if plan.peak_faulted > limit:
        raise LiveUnsupported(
            f"{source}: blast_radius: the scenario's faults hold {plan.peak_faulted} of {len(endpoints)} endpoints at once; "
            f"the limit {target.blast_radius:.0%} allows {limit}. Raise blast_radius or fault fewer endpoints together"
        )
    return plan


def _bind(replay: ReplayPlan, target: TargetSpec, source: str) -> tuple[list[Endpoint], list[str], list[str]]:
    topology = replay.topology
    wanted = Counter((r.region, r.pool) for r in topology.replicas)
    given = Counter((region, pool) for region, pool, _ in target.placed())
    for key in sorted(set(wanted) | set(given)):
        if wanted[key] != given[key]:
            region, pool = key
            raise SpecError(
                f"{source}: regions.{region}.pools.{pool}: {given[key]} endpoint(s), but scenario {replay.scenario.name!r} "
                f"has {wanted[key]} replica(s) in region {region}, pool {pool}; a target lists one endpoint per replica "
                f"(the topology has {dict((f'{r}/{p}', n) for (r, p), n in sorted(wanted.items()))})"
            )
    queues: dict[tuple[str, str], list[Endpoint]] = {}
    for region, pool, endpoint in target.placed():
        queues.setdefault((region, pool), []).append(endpoint)
    endpoints = [queues[(r.region, r.pool)].pop(0) for r in topology.replicas]
    return endpoints, [r.region for r in topology.replicas], [r.pool for r in topology.replicas]


def _check_action(plan: TargetPlan, action: Action, source: str) -> None:
    fault = plan.replay.schedule[action.fault] if action.fault >= 0 else None
    what = f"faults.{action.fault} ({fault.kind} on {fault.target})" if fault is not None else action.verb
    if action.verb in PROXY_VERBS:
        for i in plan.in_region(str(action.target)):
            endpoint = plan.endpoints[i]
            if endpoint.proxy is None:
                raise LiveUnsupported(
                    f"{source}: {what} needs a chaos proxy in front of endpoint {endpoint.name} (region {action.target}); "
                    f"add `proxy: {{port: ...}}` to it"
                )
            if plan.mode == "client" and endpoint.proxy.port == 0:
                raise LiveUnsupported(
                    f"{source}: {what}: in client mode your router must send to endpoint {endpoint.name}'s chaos proxy; "
                    "give the proxy a fixed port and point your router at it"
                )
        return
    endpoint = plan.endpoints[int(action.target)]
    needed = [action.verb] + ([UNDO[action.verb]] if action.verb in ("kill", "pause") else [])
    for verb in needed:
        if getattr(endpoint.actions, verb) is None:
            use = {"kill": "a signal (SIGKILL), a command (docker kill ...)", "restart": "a command or self_healing: true",
                   "pause": "a signal (SIGSTOP)", "resume": "a signal (SIGCONT)", "hooks": "an http call to a chaos hook"}[verb]
            raise LiveUnsupported(
                f"{source}: {what} needs endpoint {endpoint.name}'s `{verb}` action, which the target does not give; "
                f"add actions.{verb} ({use})"
            )
    if endpoint.health is None and action.verb in ("kill", "pause"):
        raise LiveUnsupported(
            f"{source}: {what}: endpoint {endpoint.name} has no health path, so testbed cannot tell when it is restored; set health"
        )


def peak_faulted(actions: list[Action], plan: TargetPlan) -> int:
    """The most endpoints under some fault at the same time, replaying the actions in order."""
    holds: dict[int, set[tuple[str, str, str]]] = {}
    peak = 0
    for action in actions:
        members = plan.in_region(str(action.target)) if action.verb in PROXY_VERBS else [int(action.target)]
        key = (UNDO.get(action.verb, action.verb), str(action.target), str(action.params.get("kind", "")))
        on = action.verb in ("kill", "pause", "cut", "toxic") or (action.verb == "hooks" and not neutral(action.params))
        for i in members:
            held = holds.setdefault(i, set())
            if on:
                held.add(key)
            else:
                held.discard(key)
        peak = max(peak, sum(1 for held in holds.values() if held))
    return peak


def neutral(params: dict[str, float]) -> bool:
    return params.get("slowdown", 1.0) == 1.0 and params.get("error_rate", 0.0) == 0.0
