"""Dotted paths into a scenario, and the cells of a campaign's matrix.

A matrix key is a dotted path into the scenario mapping: ``serving.batching.policy``,
``faults.failure_process.mtbf``, ``topology.providers.aws.regions.us-east-1.zones.use1-az1.racks.rack.nodes``.
A segment that meets a list picks an item by index (``faults.0``), by ``name``
(``providers.aws``) or, failing that, by ``kind`` (``faults.failure_process``), so paths read
like the YAML they change and survive reordering. The scenario model checks what is set, so this
module only walks and writes mappings; it never knows what a field means.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any


class PathError(ValueError):
    """A dotted path does not lead anywhere in the scenario; the message says where it stopped."""


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` in ``data`` (in place) to a deep copy of ``value``, creating missing mappings."""
    parts = path.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "(top level)"
        if isinstance(node, dict):
            if last:
                node[part] = copy.deepcopy(value)
                return
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        elif isinstance(node, list):
            index = _list_index(node, part, where)
            if last:
                node[index] = copy.deepcopy(value)
                return
            node = node[index]
        else:
            raise PathError(f"{where} is a value ({node!r}), not a mapping or list: cannot go into {part!r}")


def _list_index(items: list[Any], part: str, where: str) -> int:
    """An item of a list by index, by ``name`` or by ``kind`` (which must then be unique)."""
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise PathError(f"{where} has {len(items)} items; index {index} is out of range")
        return index
    for key in ("name", "kind"):
        matches = [i for i, item in enumerate(items) if isinstance(item, dict) and item.get(key) == part]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise PathError(f"{where} has {len(matches)} items with {key} {part!r}; pick one by index ({where}.{matches[0]})")
    names = [item.get("name", item.get("kind")) for item in items if isinstance(item, dict)]
    raise PathError(f"{where} has no item named {part!r}; expected an index or one of {names}")


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: which value each key takes (as labels) and the values themselves."""

    id: str
    params: dict[str, str]
    values: dict[str, Any]

    @property
    def label(self) -> str:
        return ", ".join(f"{short_key(k)}={v}" for k, v in self.params.items()) or "base"


def value_label(value: Any) -> str:
    """How a matrix value is shown: scalars as YAML writes them, mappings as compact JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def short_key(key: str) -> str:
    """The last two segments of a dotted key, enough to tell keys apart in a table or a plot."""
    return ".".join(key.split(".")[-2:])


def labelled_values(values: list[Any] | dict[str, Any]) -> list[tuple[str, Any]]:
    """A matrix entry as (label, value) pairs: a list labels itself; a mapping gives the labels."""
    if isinstance(values, dict):
        return [(str(label), value) for label, value in values.items()]
    return [(value_label(value), value) for value in values]


def cells(matrix: dict[str, list[Any] | dict[str, Any]]) -> list[Cell]:
    """Every combination of the matrix's values, the first key varying slowest.

    A cell's id is a digest of its labels, so it stays the same when the matrix grows or is
    reordered — which is what lets a resumed campaign recognise the runs it already has.
    """
    keys = list(matrix)
    choices = [labelled_values(matrix[key]) for key in keys]
    out = []
    for combination in itertools.product(*choices):
        params = {key: label for key, (label, _) in zip(keys, combination)}
        values = {key: value for key, (_, value) in zip(keys, combination)}
        out.append(Cell(cell_id(params), params, values))
    return out


def cell_id(params: dict[str, str]) -> str:
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return f"c{digest[:8]}"


def differs_in_one(a: Cell, b: Cell) -> str | None:
    """The one key in which two cells differ, or None if they differ in none or several."""
    if a.params.keys() != b.params.keys():
        return None
    diff = [k for k in a.params if a.params[k] != b.params[k]]
    return diff[0] if len(diff) == 1 else None
