"""The event loop runs with Python's cyclic garbage collector paused.

Why: the loop allocates a few small objects per event (timers, sequences, attempt and request
states) and frees nearly all of them by reference counting, but the collector cannot know that.
It wakes every 700 net allocations and walks the young objects, and now and then every object
alive — on a 1,000-GPU fleet hundreds of thousands of in-flight requests' states, cold in the
CPU's caches. Measured on ``benchmarks/sim_throughput.py``'s fleet, the collections took 16% of
the event loop and found nothing to free.

Why it is safe: the loop makes no reference cycles, so reference counting alone frees what it
drops; ``tests/test_gc_pause.py`` holds catalog scenarios (faults, retries, hedging, agents,
elastic fleets, the gateway queue, prefix caching) to leaving next to no cyclic garbage behind,
so a change that starts leaking cycles fails there rather than growing a long run's memory. The
collector's state is restored when the loop ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for the block; restore its state afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
