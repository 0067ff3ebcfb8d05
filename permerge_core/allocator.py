"""Keep the C allocator from handing memory back to the OS between batches.

Every forward pass makes and frees the same multi-megabyte activations. By default glibc
returns blocks from about 128 kB up to the kernel (mmap/munmap, and trimming the heap), so
the next batch faults every page in again. On the machines we measured that cost 15% of a
loss-path point (20,000 page faults per point; docs/performance.md). Raising the thresholds
makes freed activations reusable: the peak memory is the same, it is just not given back.
Only glibc has these knobs; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks above this still come from mmap
TRIM_THRESHOLD = 256 * 2**20  # free memory kept at the heap's top before it is returned

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True if they were set."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
