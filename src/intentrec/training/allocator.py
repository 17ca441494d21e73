"""Keep large freed tensor buffers in the process instead of handing them back to the OS.

glibc's malloc serves blocks above its mmap threshold with a fresh ``mmap`` and unmaps them on
``free``. A training step allocates and frees many multi-megabyte tensors (scores over all items,
TAGNN's ``[nodes, items]`` chunks), so every step page-faults the same memory in again: on this
project's 2-core CPU, filling a fresh 20 MB tensor costs about 7x a reused one. Raising the mmap
threshold to glibc's maximum (32 MiB on 64-bit) and the trim threshold to 1 GiB lets the heap keep
those buffers between steps. The cost is that memory freed during training stays with the process
until it exits (the peak is unchanged: it was allocated at the peak anyway).

This is what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do from the environment, done at
run time with ``mallopt`` so a plain ``intentrec train`` gets it. It is a no-op (returning False)
where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: glibc's ``mallopt`` parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc caps the mmap threshold at HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit systems.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds for this process; True when both were accepted."""
    global _applied
    libc = _glibc()
    if libc is None:
        _applied = False
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))) and ok
    _applied = ok
    return ok


def applied() -> bool | None:
    """Whether :func:`keep_freed_memory` took effect in this process (None: never called)."""
    return _applied
