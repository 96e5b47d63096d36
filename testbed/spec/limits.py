"""Upper bounds on what a spec may ask for, checked before anything is read, parsed or built.

A spec is input: a typo in a count (``count: 100000000``) must be a clear error at validation,
not 16 GB of memory or a ``MemoryError`` minutes into a run. The bounds are generous — well
beyond any fleet the simulator is meant to model (a million devices is fine) — and each message
names the bound, so it can be raised here if a real use needs more.
"""

from __future__ import annotations

MAX_SPEC_BYTES = 16 * 1024 * 1024
"""A spec file larger than this is refused unread (specs are hand-written; traces are CSV files)."""

MAX_DEPTH = 64
"""Nesting levels in a spec file (a scenario needs about eight); deeper input is refused before
parsing builds it, because PyYAML and validation both recurse."""

MAX_DEVICES = 1_000_000
"""Devices in a whole topology, after racks are expanded (count x nodes x devices_per_node)."""

MAX_DEVICES_PER_NODE = 1024
"""Devices in one node (the largest real nodes hold 8 to 72 accelerators)."""
