"""`release_freed`: freed heap memory leaves the process's resident set."""

from __future__ import annotations

import ctypes

import pytest

from brainy.core import heap

pytestmark = pytest.mark.skipif(
    heap._TRIM is None, reason="the C library has no malloc_trim (not glibc)"
)

_BLOCK = 64 << 10  # under malloc's mmap threshold: served from the heap
_BLOCKS = 1024  # 64 MB


def _resident_anon_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon"))


def test_freed_heap_blocks_leave_the_resident_set() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(_BLOCK) for _ in range(_BLOCKS)]
    pin = libc.malloc(_BLOCK)  # above them: the heap's top cannot shrink past it
    try:
        for b in blocks:
            ctypes.memset(b, 1, _BLOCK)  # resident
        for b in blocks:
            libc.free(b)
        kept = _resident_anon_kb()
        assert heap.release_freed()
        released = kept - _resident_anon_kb()
    finally:
        libc.free(pin)
    # Most of the 64 MB freed (other threads and the interpreter move a little).
    assert released > 48 << 10, f"only {released} kB of 65,536 left the resident set"


def test_without_malloc_trim_nothing_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_TRIM", None)
    assert heap.release_freed() is False
