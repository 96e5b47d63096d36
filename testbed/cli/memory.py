"""The command's process keeps the memory it frees for reuse instead of handing it back to the OS.

Why: glibc's malloc serves an allocation above its mmap threshold (128 KiB, raised to the largest
block freed so far) with a fresh mapping, and gives the top of its heap back to the OS once more
than twice that is free. A run's analysis and reports allocate and free arrays of a few MB per
column of the request table, over and over, so the kernel kept mapping and zeroing fresh pages
for them: on the baseline some 50,000 page faults after the event loop, and as much as 0.2 s of
system time each in finish_run, report.html and the rest, depending on the load. With the mmap
threshold at glibc's maximum (32 MiB) and half a GiB of free heap kept, freed arrays are reused.

pyarrow's own allocator (mimalloc, for the parquet records) commits its first arena eagerly on
Linux by default; the first parquet write then took 0.11-0.24 s of system time with under a
hundred page faults (huge pages zeroed, by the look of it), the later ones none. Committed on
demand (``MIMALLOC_ARENA_EAGER_COMMIT=0``, set before pyarrow loads) it took 0.04 s.

The cost: the process's resident memory does not shrink below its peak (less up to half a GiB
free) until it exits, which a command that runs once and exits can afford. The long-running
commands (``serve``, ``live``) load the same CLI and keep the setting: what they free stays
in the process for reuse, up to half a GiB of it at the top of the heap. It is the command's
choice, made when the CLI loads, never the library's; only glibc has ``mallopt``, so elsewhere
(macOS, musl) nothing changes; settings already in the environment (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MIMALLOC_ARENA_EAGER_COMMIT``) win.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, and have pyarrow's mimalloc commit
    on demand; True if glibc's were set. Call it before pyarrow is imported."""
    if not sys.platform.startswith("linux"):
        return False
    os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
