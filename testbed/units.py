"""Quantities written the way people write them: "90s", "30min", "250/s", "10Gbps".

Specs are read by people first, so every duration, rate and size accepts a short string with a
unit as well as a bare number in base units (seconds, per second, bytes per second), written as
a number or a string alike. Network latencies are the exception where a bare number is
suspicious (``rtt: 140`` is nearly always milliseconds meant): above one second they need a unit. Each parser
raises ``ValueError`` with the accepted forms, which pydantic turns into a field error.
"""

from __future__ import annotations

import re

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

_DURATION_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "m": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
}
_WITH_UNIT = re.compile(rf"^\s*{_NUMBER}\s*([a-z]+)\s*$")
_RATE = re.compile(rf"^\s*{_NUMBER}\s*/\s*([a-z]+)\s*$")
_BANDWIDTH_UNITS = {"bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8, "tbps": 1e12 / 8}

DURATION_FORMS = "a number of seconds or a string like '250ms', '90s', '30min', '2h', '1d'"
RATE_FORMS = "a number per second or a string like '250/s', '1200/min', '40000/h'"
BANDWIDTH_FORMS = "a number of bytes per second or a string like '10Gbps', '400Mbps'"


_BARE = re.compile(rf"^\s*{_NUMBER}\s*$")


def _plain_number(value: object) -> float | None:
    """A bare number in base units: 140, 0.5, or the same written as a string ('140'), so that
    quoting a value never changes whether it is accepted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _BARE.match(value):
        return float(value)
    return None


def is_bare_number(value: object) -> bool:
    """True for a number without a unit (140, '140'): base units are implied."""
    return _plain_number(value) is not None


PLAUSIBLE_LATENCY = 1.0
"""Seconds: a network latency (RTT, added delay) written as a bare number above this is refused,
since ``rtt: 140`` is far more often 140 ms meant than 140 s."""


def parse_latency(value: object) -> float:
    """Seconds, like :func:`parse_duration`, but a bare number over :data:`PLAUSIBLE_LATENCY` needs its unit."""
    seconds = parse_duration(value)
    if seconds > PLAUSIBLE_LATENCY and is_bare_number(value):
        raise ValueError(
            f"a bare number is seconds, and {seconds:g} s is implausible for a network latency (over "
            f"{PLAUSIBLE_LATENCY:g} s): write '{seconds:g}ms' for milliseconds, or '{seconds:g}s' if you do mean seconds"
        )
    return seconds


def _parse(value: object, pattern: re.Pattern[str], units: dict[str, float], per: bool, forms: str) -> float:
    """A bare number, or NUMBER UNIT (or NUMBER / UNIT when ``per``) converted to base units."""
    number = _plain_number(value)
    if number is not None:
        return number
    match = pattern.match(value.lower()) if isinstance(value, str) else None
    if not match or match.group(2) not in units:
        raise ValueError(f"expected {forms}")
    scale = units[match.group(2)]
    return float(match.group(1)) / scale if per else float(match.group(1)) * scale


def parse_duration(value: object) -> float:
    """Seconds from ``value``; rejects negatives, since no duration in a spec can be negative."""
    number = _parse(value, _WITH_UNIT, _DURATION_UNITS, False, f"a duration: {DURATION_FORMS}")
    if number < 0:
        raise ValueError("expected a duration that is not negative")
    return number


def parse_rate(value: object) -> float:
    """Events per second from ``value``."""
    number = _parse(value, _RATE, _DURATION_UNITS, True, f"a rate: {RATE_FORMS}")
    if number < 0:
        raise ValueError("expected a rate that is not negative")
    return number


def parse_bandwidth(value: object) -> float:
    """Bytes per second from ``value`` (network convention: bits per second in the string)."""
    number = _parse(value, _WITH_UNIT, _BANDWIDTH_UNITS, False, f"a bandwidth: {BANDWIDTH_FORMS}")
    if number <= 0:
        raise ValueError("expected a positive bandwidth")
    return number


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration` for messages and YAML written back to users."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size) == int(seconds / size):
            return f"{int(seconds / size)}{unit}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
