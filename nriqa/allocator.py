"""glibc's allocator set up for PyTorch on the CPU: freed tensor memory is kept for reuse.

A CPU forward pass allocates and frees tensors of tens of MB at every layer. glibc serves a
request above its mmap threshold (dynamic, at most 32 MB) with a fresh ``mmap`` and hands the top
of its heap back to the system once more than its trim threshold is free, so the pages of every
layer's output are faulted in again on the next batch: ``nriqa demo`` spent 330 s of system time
beside 575 s of user time. Raising both thresholds keeps freed memory in the process, as jemalloc
and tcmalloc (which PyTorch's CPU performance guide suggests preloading) do; the frozen backbone's
pass over the demo's crops then runs about 3x faster (``benchmarks/allocator.py``). The price: the
process holds on to its peak memory until it ends, which suits a command that runs one job.

The ``nriqa`` command calls :func:`retain_freed_memory` at start; a Python program may call it
once, early. ``NRIQA_KEEP_FREED_MEMORY=0`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: requests up to this size come from the heap, and this much free memory stays in it (a C int)
KEEP_BYTES = 1 << 30
ENV = "NRIQA_KEEP_FREED_MEMORY"


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`KEEP_BYTES`; True when done (glibc, not
    turned off by ``NRIQA_KEEP_FREED_MEMORY=0``), False elsewhere (macOS, Windows, musl)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # trim first: setting either threshold also stops glibc from moving the mmap one on its own
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) and mallopt(M_MMAP_THRESHOLD, KEEP_BYTES))
