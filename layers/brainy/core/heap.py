"""Handing freed heap memory back to the system between the phases of a build.

glibc's malloc keeps freed memory for reuse rather than returning it, and the
more so after large frees: freeing a block it had mapped raises its thresholds
(up to 32 MB mapped, 64 MB kept at the heap's top), so the many few-MB numpy
temporaries of a compaction (chunks read, blocks scored) come from the heap and
stay resident once freed. Each phase then adds what the last one left to its own
peak (measured on a 1M-row compaction into 8 partitions: 60-90 MB, a third of
the largest partition's raw bytes). `malloc_trim` returns those pages; called
where a phase that allocated much ends and one that maps much begins. A trim is
not free (the pages it returns fault back in when reused: 7 % of a 10,000-row
`build_segment`), so small builds (an indexer's batches) go without.

Other C libraries (musl, macOS) have no `malloc_trim`: there it does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_freed() -> bool:
    """Return the heap's free pages to the system; False where that is not possible
    (no `malloc_trim`) or nothing was returned."""
    return _TRIM is not None and bool(_TRIM(0))
