"""Will a scenario fit on this machine live, and how to shrink it proportionally if not.

A simulated fleet can have a thousand GPUs; a live replay starts one real process per replica on
this host. Before anything starts, :func:`check_fits` refuses a scenario the machine cannot hold,
with a message that says what to scale down: replicas beyond a per-core budget, replicas whose
model and process overhead would not fit in memory, a model the live plane cannot build, devices
that are not CPUs, or requests longer than the model's context.

:func:`scale` shrinks a scenario proportionally: every rack keeps at least one node and runs
``round(nodes * factor)`` of them, and the arrival rate shrinks by the ratio of replicas actually
kept, so the load on each replica stays what the full scenario put on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from testbed.live.replica.models import RECIPES
from testbed.spec import Scenario, SpecError, validate_spec
from testbed.topology import Topology

PROCESS_BYTES = 450e6  # a replica process: Python, torch, transformers, the server
REPLICAS_PER_CORE = 2  # CPU replicas mostly wait on the gateway at the loads we replay


@dataclass(frozen=True)
class Machine:
    """What this host offers a live replay."""

    cores: int
    memory_bytes: float

    @classmethod
    def here(cls) -> Machine:
        try:
            pages, page = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
            memory = float(pages * page)
        except (ValueError, OSError):
            memory = 4e9
        return cls(cores=len(os.sched_getaffinity(0)), memory_bytes=memory)

    @property
    def max_replicas(self) -> int:
        return max(4, REPLICAS_PER_CORE * self.cores)


def replica_count(scenario: Scenario) -> int:
    return len(Topology.from_spec(scenario.topology).replicas)


def check_fits(scenario: Scenario, machine: Machine) -> None:
    """Raise :class:`SpecError` naming what is too large and what to scale down."""
    topology = scenario.topology
    name = scenario.name
    model = topology.model if isinstance(topology.model, str) else None
    if model not in RECIPES:
        raise SpecError(
            f"{name}: topology.model: the live plane runs its built-in models ({', '.join(RECIPES)}); "
            f"this topology serves {model or 'a custom model shape'!r} — set model: tiny in a copy of the topology"
        )
    racks = [rack for p in topology.providers for r in p.regions for z in r.zones for rack in z.racks]
    for rack in racks:
        if not rack.device.startswith("cpu"):
            raise SpecError(
                f"{name}: topology rack {rack.name!r}: device {rack.device!r}: live replicas run on this machine's CPU; "
                "use device cpu-fp32 (or cpu-int8)"
            )
        if rack.model is not None and rack.model not in RECIPES:
            raise SpecError(f"{name}: topology rack {rack.name!r}: model {rack.model!r} cannot run live; use one of {list(RECIPES)}")
    replicas = replica_count(scenario)
    if replicas > machine.max_replicas:
        factor = machine.max_replicas / replicas
        raise SpecError(
            f"{name}: {replicas} replicas do not fit on this machine ({machine.cores} cores run at most "
            f"{machine.max_replicas}); scale it down with --scale {factor:.3g} or use a smaller topology"
        )
    recipe = RECIPES[model]
    params = _params(recipe.hidden_size, recipe.num_layers, recipe.intermediate_size, recipe.vocab_size)
    needed = replicas * (PROCESS_BYTES + 4 * params)
    if needed > 0.7 * machine.memory_bytes:
        factor = 0.7 * machine.memory_bytes / needed
        raise SpecError(
            f"{name}: {replicas} replicas of {model} need about {needed / 1e9:.1f} GB but {machine.memory_bytes / 1e9:.1f} GB "
            f"is free; scale it down with --scale {factor:.3g}"
        )
    longest = _longest_prompt(scenario) + _max_length(scenario.workload.output_tokens)
    if longest > recipe.max_context:
        raise SpecError(
            f"{name}: workload: prompts plus outputs reach {longest} tokens but {model} holds {recipe.max_context}; "
            "shorten workload.prompt_tokens or workload.output_tokens"
            + (" (or workload.prefix: its system prompts, chat.max_context)" if scenario.workload.prefix else "")
        )


def _longest_prompt(scenario: Scenario) -> int:
    """The longest prompt the workload can draw: its own part, after a system prompt, or a chat
    turn's whole conversation (which ends before its next prompt would pass ``max_context``)."""
    workload = scenario.workload
    longest = _max_length(workload.prompt_tokens)
    prefix = workload.prefix
    if prefix is None:
        return longest
    if prefix.system_prompts is not None:
        longest += prefix.system_prompts.tokens
    if prefix.chat is not None:
        longest = max(longest, prefix.chat.max_context)
    return longest


def _params(hidden: int, layers: int, intermediate: int, vocab: int) -> float:
    """Llama parameters: untied embeddings and head, attention and MLP per layer."""
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * intermediate)


def _max_length(spec) -> int:
    kind = spec.kind
    if kind == "fixed":
        return spec.value
    if kind == "uniform":
        return spec.high
    if kind == "lognormal":
        return spec.max
    return max(spec.values)


def scale(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with about ``factor`` of its replicas and the same load per replica."""
    if not 0 < factor <= 1:
        raise SpecError(f"--scale: expected a share in (0, 1], got {factor}")
    before = replica_count(scenario)
    data = scenario.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    for provider in data["topology"]["providers"]:
        for region in provider["regions"]:
            for zone in region["zones"]:
                for rack in zone["racks"]:
                    rack["nodes"] = max(1, round(rack.get("nodes", 1) * factor))
    kept = validate_spec(data, Scenario, source=f"{scenario.name} (scaled by {factor:g})")
    ratio = replica_count(kept) / before
    arrival = data["workload"]["arrival"]
    if arrival["kind"] == "trace":
        arrival["time_scale"] = arrival.get("time_scale", 1.0) / ratio
    else:
        arrival["rate"] = float(arrival["rate"]) * ratio
        for step in arrival.get("steps", []):
            step["rate"] = float(step["rate"]) * ratio
    return validate_spec(data, Scenario, source=f"{scenario.name} (scaled by {factor:g})")
