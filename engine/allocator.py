"""The C allocator's settings for engine processes, chosen on purpose and set once at process start.

``configure()`` fixes glibc malloc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` and its trim threshold
at :data:`TRIM_THRESHOLD_BYTES`. ``interlink run`` / ``interlink worker`` and every mapping process call it;
where the C library is not glibc it does nothing and returns False.

Why (measured with ``bench/memory.py``; figures in ``docs/benchmarks.md``, "Memory with large messages"):
glibc serves a block of at least the mmap threshold (128 KiB at start) with its own ``mmap``, given back
on ``free``, but after freeing such a block raises the threshold to that block's size (up to 32 MiB).
After the first 4 MB message, every later 4 MB buffer (the frame, its decoded text, the bundle JSON, pipe
messages) came from the heaps of the threads that touched it, which glibc rarely returns: 100 messages
with a 4 MB NTE left the engine 342 MB and its mapping process 161 MB above idle, still rising. Setting
the threshold also switches that raise off, and big buffers go back to the system when freed.

1 MiB rather than 128 KiB because asyncio reads sockets into 256 KiB buffers that are shrunk to what
arrived: below the threshold they come from the heap instead of costing an mmap, mremap and munmap per
read (strace: three calls per receive at 128 KiB). The trim threshold at 2 MiB (glibc's own ratio when it
moves the mmap threshold) keeps those reads from growing and trimming the heap with two brk calls each;
with both, 2,000 ordinary messages through the engine made as many allocator system calls as without
(strace). Limiting arenas (``M_ARENA_MAX``) changed nothing measurable on top, so it is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "configure"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 1024 * 1024
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # glibc's own ratio when it moves the threshold itself
_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3

_done: bool | None = None


def configure() -> bool:
    """Apply the settings (once per process); True when they are in effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )
    if not _done:
        log.warning("could not set the malloc thresholds; large messages may leave memory held")
    return _done
