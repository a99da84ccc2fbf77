"""Keep big tensor buffers in the heap between steps (glibc malloc tuning; no effect elsewhere).

    from trustlora.alloc import tune_glibc_malloc
    tune_glibc_malloc()     # the CLI calls it once at start unless TRUSTLORA_MALLOC=default

glibc serves allocations above its mmap threshold (128 KiB, adapting up to 32 MiB) with fresh ``mmap`` pages and
returns them with ``munmap`` on free, so every training step page-faults its activations and logit chunks in
again (the kernel zeroes each page). Raising the mmap threshold to its maximum and the trim threshold far above it
keeps freed buffers in the heap for the next step. Measured side by side in ``benchmarks/bench_speed.py``
(variants ``chunked+mallopt`` and, via LD_PRELOAD, ``chunked+tcmalloc`` / ``chunked+jemalloc``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's cap on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def tune_glibc_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds; True if applied (False: not glibc, or TRUSTLORA_MALLOC=default)."""
    if os.environ.get("TRUSTLORA_MALLOC", "tuned") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    return bool(ok)
