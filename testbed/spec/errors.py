"""Validation errors in people's words: the field by its path of names, what was wrong, what to write.

Pydantic reports ``faults.0: Input tag 'region_outage' found using 'kind' does not match any of
the expected tags: ...`` and lists a knock-on ``workload.arrival: Field required`` before the
real typo ``workload.arival``. Here every error is placed in the spec (walking the input and the
models side by side), so that:

- list items with a ``name`` are named (``providers.aws``), others keep their index (``faults.0``);
  the tags pydantic inserts for union members (``arrival.poisson``) are left out;
- an unknown key gets "did you mean" (difflib, over the fields at that level) or, when it is a
  field somewhere else, where it belongs ("'routing' belongs under 'serving:'");
- the typo comes first, and the "required field is missing" it caused is dropped;
- pydantic's wording is translated for the common cases (unknown tag, literal, type, bounds).
"""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


class SpecError(Exception):
    """A spec file could not be read or is invalid; the message is meant for people."""


@dataclass(frozen=True)
class Problem:
    kind: str  # the pydantic error type
    where: str  # the path for people
    parent: tuple  # the raw location of the enclosing mapping, to match a typo with its knock-on
    field: str  # the last part of the location
    message: str
    suggestion: str | None = None  # for unknown keys: the field meant


def format_validation_error(
    source: str, exc: ValidationError, data: Any = None, model: type[BaseModel] | None = None
) -> str:
    """One line per problem: file, field path, what was wrong, the value given; typos first."""
    problems = [_problem(error, data, model) for error in exc.errors(include_url=False)]
    typos = {(p.parent, p.suggestion) for p in problems if p.kind == "extra_forbidden" and p.suggestion}
    kept = [p for p in problems if not (p.kind == "missing" and (p.parent, p.field) in typos)]
    kept.sort(key=lambda p: p.kind != "extra_forbidden")
    lines = dict.fromkeys(f"{source}: {p.where}: {p.message}" for p in kept)
    return "\n".join(lines)


# --------------------------------------------------------------------------- one error


def _problem(error: dict[str, Any], data: Any, model: type[BaseModel] | None) -> Problem:
    loc = tuple(error["loc"])
    where, parent_models = _locate(loc, data, model)
    kind = error["type"]
    field = str(loc[-1]) if loc else ""
    suggestion = None
    if kind == "extra_forbidden":
        message, suggestion = _unknown_field(field, parent_models, model)
    elif kind == "missing":
        message = "required field is missing"
    else:
        message = _translate(error)
    if kind != "missing" and "input" in error and not isinstance(error["input"], (dict, list)) and "got " not in message:
        message += f" (got {_short(error['input'])})"
    return Problem(kind, where or "(top level)", loc[:-1], field, message, suggestion)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _translate(error: dict[str, Any]) -> str:
    """Pydantic's message for the common error types, in the words the rest of testbed uses."""
    kind, ctx, msg = error["type"], error.get("ctx") or {}, error["msg"]
    if kind == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        key = str(ctx.get("discriminator", "kind")).strip("'")
        tag = str(ctx.get("tag", ""))
        return f"unknown {key} {tag!r}{_did_you_mean(tag, tags)}; expected one of {', '.join(tags)}"
    if kind == "union_tag_not_found":
        key = str(ctx.get("discriminator", "kind")).strip("'")
        return f"'{key}' is missing: it says which kind of item this is"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        options = [o.strip(" '") for o in expected.split(",")]
        if len(options) == 1:
            return f"expected {expected}"
        return f"expected one of {expected}{_did_you_mean(str(error.get('input', '')), options)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        got = type(error.get("input")).__name__
        return f"expected a mapping of fields ('key: value' lines), got {'a list' if got == 'list' else got}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == r"^[^/\s]+$":
        return "expected a name without '/' or spaces (paths join names with '/')"
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    for prefix in ("Input should be ", "String should ", "List should ", "Tuple should ", "Dictionary should "):
        if msg.startswith(prefix):
            rest = msg.removeprefix(prefix)
            return "expected " + rest if prefix == "Input should be " else _should(prefix, rest)
    return msg


def _should(prefix: str, rest: str) -> str:
    """"List should have at least 1 item after validation, not 0" → "expected at least 1 item, got 0"."""
    what = prefix.split()[0].lower()
    rest = rest.replace(" after validation", "")
    if rest.startswith("have "):
        body, _, got = rest.removeprefix("have ").partition(", not ")
        return f"expected {body}" + (f", got {got}" if got else "")
    return f"expected a {what} that should {rest}"


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_field(key: str, models: list[type[BaseModel]], root: type[BaseModel] | None) -> tuple[str, str | None]:
    """A misspelt key: did you mean; a key of another level: where it belongs; else what is allowed."""
    fields = sorted({name for m in models for name in _fields(m)})
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    strong = difflib.get_close_matches(key, fields, n=1, cutoff=0.8)
    elsewhere = _where_fields_live(root).get(key, []) if root is not None else []
    if elsewhere and not strong and len(elsewhere) <= 3:
        places = " or ".join("at the top level" if not p else f"under '{p}:'" for p in elsewhere)
        return f"unknown field here: '{key}' belongs {places}", None
    if close:
        return f"unknown field (did you mean {close[0]!r}?)", close[0]
    if fields:
        return f"unknown field; expected one of {', '.join(fields)}", None
    return "unknown field (check the spelling)", None


# --------------------------------------------------------------------------- walking models and data


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by every key the input may use (name and alias)."""
    out: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        out[info.alias or name] = info
        out[name] = info
    return out


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives an annotation allows (through Annotated, Optional and unions)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [alt for arg in get_args(annotation) for alt in _unwrap(arg)]
    return [annotation]


def _models(annotations: list[Any]) -> list[type[BaseModel]]:
    return [a for ann in annotations for a in _unwrap(ann) if isinstance(a, type) and issubclass(a, BaseModel)]


def _elements(annotations: list[Any]) -> list[Any]:
    """What a list, tuple or dict annotation holds (the values, for a dict)."""
    out = []
    for ann in annotations:
        for alt in _unwrap(ann):
            origin = get_origin(alt)
            if origin in (list, tuple, set, frozenset):
                out += [a for a in get_args(alt) if a is not Ellipsis]
            elif origin is dict:
                out.append(get_args(alt)[1])
    return out


def _literals(model: type[BaseModel]) -> dict[str, tuple]:
    """The model's Literal fields (its tags, such as ``kind: outage``)."""
    out = {}
    for name, info in _fields(model).items():
        alts = _unwrap(info.annotation)
        if alts and all(get_origin(a) is Literal for a in alts):
            out[name] = tuple(v for a in alts for v in get_args(a))
    return out


def _matching(models: list[type[BaseModel]], node: dict) -> list[type[BaseModel]]:
    """The union members whose tags agree with the input mapping (all of them if none does)."""
    fit = [m for m in models if all(node[k] in vals for k, vals in _literals(m).items() if k in node and _hashable(node[k]))]
    return fit or models


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _locate(loc: tuple, data: Any, model: type[BaseModel] | None) -> tuple[str, list[type[BaseModel]]]:
    """The path for people, and the models that could hold the last key (for suggestions)."""
    shown: list[str] = []
    node = data
    annotations: list[Any] = [model] if model is not None else []
    parent_models: list[type[BaseModel]] = []
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        models = _models(annotations)
        if isinstance(node, dict):
            models = _matching(models, node)
        if last:
            parent_models = models
        if isinstance(node, dict) and isinstance(part, str) and part in node and (last or isinstance(node[part], (dict, list))):
            shown.append(part)
            fields = [f for m in models if (f := _fields(m).get(part)) is not None]
            annotations = [f.annotation for f in fields] if fields else _elements(annotations)
            node = node[part]
        elif isinstance(node, dict) and not last and isinstance(part, str):
            # A union member's tag (``poisson``) or type name (``str``): not in the path. A tag may
            # also be a key (``signal: SIGKILL`` under the ``signal`` member): it is one when the
            # location goes on below a value that has nothing below it.
            tagged = [m for m in models if any(part in vals for vals in _literals(m).values())]
            annotations = tagged or annotations
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            item = node[part]
            name = item.get("name") if isinstance(item, dict) else None
            shown.append(name if isinstance(name, str) and name else str(part))
            annotations = _elements(annotations)
            node = item
        else:
            shown.append(str(part))
            node = None
            annotations = []
    return ".".join(shown), parent_models


def _where_fields_live(root: type[BaseModel], max_depth: int = 6) -> dict[str, list[str]]:
    """Every field key of the spec tree → the paths (``serving``, ``sla``; ``""`` for the top level) of the mappings that hold it."""
    cached = _INDEX.get(root)
    if cached is not None:
        return cached
    index: dict[str, list[str]] = {}
    queue: list[tuple[type[BaseModel], str, int]] = [(root, "", 0)]
    seen: set[tuple[type[BaseModel], str]] = set()
    while queue:
        model, path, depth = queue.pop(0)
        if (model, path) in seen or depth > max_depth:
            continue
        seen.add((model, path))
        for key, info in model.model_fields.items():
            key = info.alias or key
            places = index.setdefault(key, [])
            if path not in places:
                places.append(path)
            child = f"{path}.{key}" if path else key
            for sub in _models([info.annotation]) + _models(_elements([info.annotation])):
                queue.append((sub, child, depth + 1))
    _INDEX[root] = index
    return index


_INDEX: dict[type[BaseModel], dict[str, list[str]]] = {}
