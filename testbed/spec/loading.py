"""Reading spec files: YAML in, a validated model out, or :class:`SpecError` with one readable message.

The message names the file, the field path, the bad value and what was expected, so the CLI can
print it and exit 2 instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class SpecError(Exception):
    """A spec file could not be read or is invalid; the message is meant for people."""


def load_spec(path: str | Path, model: type[BaseModel]) -> Any:
    """Read YAML at ``path`` into ``model``, or raise :class:`SpecError` with one clear message."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return validate_spec(data, model, source=str(path), base_dir=path.parent)


def validate_spec(data: dict[str, Any], model: type[BaseModel], source: str, base_dir: Path | str = ".") -> Any:
    """Validate already-parsed data (e.g. from the explorer) with the same error messages."""
    try:
        return model.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        raise SpecError(format_validation_error(source, exc)) from None


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: file, dotted field path, what was wrong, the value given."""
    lines = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif error["type"] == "missing":
            message = "required field is missing"
        line = f"{source}: {location}: {message}"
        if error["type"] not in ("missing",) and "input" in error and not isinstance(error["input"], dict):
            line += f" (got {error['input']!r})"
        lines.append(line)
    return "\n".join(lines)
