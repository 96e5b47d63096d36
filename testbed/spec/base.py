"""Shared building blocks of every spec: quantities with units, names, and the strict base model.

Unknown keys are errors (they are nearly always typos); durations, rates and bandwidths accept
units (``90s``, ``2/s``, ``10Gbps``) and fractions accept percentages (``99.9%``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from testbed.units import parse_bandwidth, parse_duration, parse_latency, parse_rate


Duration = Annotated[float, BeforeValidator(parse_duration)]
Latency = Annotated[float, BeforeValidator(parse_latency)]
"""A network latency (RTT, added delay): a duration whose bare-number form must be plausible."""
Rate = Annotated[float, BeforeValidator(parse_rate)]
Bandwidth = Annotated[float, BeforeValidator(parse_bandwidth)]


def parse_fraction(value: object) -> object:
    """Accept "99.9%" as well as 0.999 for shares and availability targets."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError("expected a fraction like 0.999 or a percentage like '99.9%'") from None
    return value


Fraction = Annotated[float, BeforeValidator(parse_fraction), Field(ge=0.0, le=1.0)]


PartName = Annotated[str, Field(min_length=1, pattern=r"^[^/\s]+$", description="a name without '/' or spaces: paths join names with '/'")]


class Strict(BaseModel):
    """Base for specs: unknown keys are typos, so they are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def require_unique(what: str, names: list[str]) -> None:
    """Names join into topology paths and select classes and stages, so two alike are an error."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} name {name!r}")
        seen.add(name)
