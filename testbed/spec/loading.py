"""Reading spec files: YAML in, a validated model out, or :class:`SpecError` with one readable message.

The message names the file, the field path, the bad value and what was expected, so the CLI can
print it and exit 2 instead of showing a traceback. Everything that could turn bad input into a
traceback or unbounded memory is checked first, in order: the file's size, that it is UTF-8,
its nesting depth (streamed through PyYAML's parser, which does not recurse, before the
composer, which does), then YAML syntax (explained in plain words, with the line) and the fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from testbed.spec.errors import SpecError, format_validation_error
from testbed.spec.limits import MAX_DEPTH, MAX_SPEC_BYTES


def load_spec(path: str | Path, model: type[BaseModel]) -> Any:
    """Read YAML at ``path`` into ``model``, or raise :class:`SpecError` with one clear message."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return validate_spec(data, model, source=str(path), base_dir=path.parent)


def read_yaml(path: str | Path) -> Any:
    """The YAML document at ``path``, parsed; every way a file can be unreadable is a :class:`SpecError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: {size:,} bytes is more than a spec file may hold ({MAX_SPEC_BYTES:,} bytes)")
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(
            f"{path}: not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} is not valid UTF-8; save the file as UTF-8"
        ) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document, refusing input nested deeper than :data:`MAX_DEPTH` before building it."""
    try:
        _check_depth(text, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(yaml_message(source, text, exc)) from None


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise SpecError(
                    f"{source}: nested deeper than {MAX_DEPTH} levels at line {mark.line + 1}, column {mark.column + 1}; "
                    "a spec needs fewer than ten (is a bracket left open?)"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_data_depth(data: Any, source: str) -> None:
    """The same bound on data parsed elsewhere (the explorer, campaign cells), without recursing."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                raise SpecError(f"{source}: nested deeper than {MAX_DEPTH} levels; a spec needs fewer than ten")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


# PyYAML's problem → what to do about it. The first matching fragment wins.
_YAML_PROBLEMS = (
    ("mapping values are not allowed", "a ':' where a value was expected: quote a value that contains ': ', or check this line's indentation"),
    ("expected <block end>", "this line's indentation does not line up with the lines above it"),
    ("could not find expected ':'", "a line without 'key: value' inside a mapping (a missing ':' or a wrong indentation)"),
    ("that cannot start any token", "a character that cannot start a value here (a tab? indent YAML with spaces)"),
    ("found undefined alias", "an alias (*name) with no anchor (&name) before it"),
    ("expected ',' or ']'", "a '[' list that is not closed with ']' (or items without a ',' between them)"),
    ("expected ',' or '}'", "a '{' mapping that is not closed with '}' (or entries without a ',' between them)"),
    ("found unexpected end of stream", "the file ends inside a quoted string"),
    ("expected a single document", "more than one document ('---'): a spec file holds one"),
    ("found unknown escape character", "an unknown escape in a double-quoted string: use single quotes, or '\\\\' for a backslash"),
)


def yaml_message(source: str, text: str, exc: yaml.YAMLError) -> str:
    """``file: not valid YAML at line L, column C: <plain words>`` and the line itself, marked."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    plain = next((advice for fragment, advice in _YAML_PROBLEMS if fragment in problem), problem)
    if mark is None:
        return f"{source}: not valid YAML: {plain}"
    message = f"{source}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {plain}"
    lines = text.splitlines()
    if mark.line < len(lines):
        number = str(mark.line + 1)
        message += f"\n  {number} | {lines[mark.line][:200]}\n  {' ' * len(number)} | {' ' * min(mark.column, 200)}^"
    return message


def validate_spec(data: dict[str, Any], model: type[BaseModel], source: str, base_dir: Path | str = ".") -> Any:
    """Validate already-parsed data (e.g. from the explorer) with the same error messages."""
    _check_data_depth(data, source)
    try:
        return model.model_validate(data, context={"base_dir": str(base_dir), "source": source})
    except ValidationError as exc:
        raise SpecError(format_validation_error(source, exc, data=data, model=model)) from None
