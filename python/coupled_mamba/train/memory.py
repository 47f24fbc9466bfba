"""Keep freed memory in the process (glibc), so that a training loop does not page-fault its
activations back in at every step.

PyTorch's CPU tensors come from malloc. glibc hands out blocks above its mmap threshold as fresh
pages from the kernel and returns freed memory at the top of its heap to the kernel once it
exceeds the trim threshold (both start at 128 KB; the mmap threshold rises as large blocks are
freed). A training step frees its activations and allocates them again in the next step, so every
step touches new pages: the kernel faults each 4 KB page in and zeroes it. On the 2-core
development VM, coupled-mean at the aligned benchmark size (batch 32, L 50) took 2,300 to 10,000
faults per step at about 2 us each (docs/benchmarks.md, "Page faults per training step").

:func:`retain_freed_memory` raises both thresholds, so blocks up to 32 MiB (glibc's maximum mmap
threshold on 64-bit) come from the heap and freed memory stays there for the next step. The
process's peak memory is unchanged; it is no longer given back to the system until exit. The
``coupled-mamba train`` command and ``python -m coupled_mamba.bench train`` call it; call it
yourself at the start of your own training script if you want the same. It does nothing where
the C library is not glibc, or when the user configured glibc's malloc through the environment
(``GLIBC_TUNABLES`` naming ``glibc.malloc``, or ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
or ``MALLOC_TOP_PAD_``).
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["retain_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# mallopt's parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2); a mallopt above it fails.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30  # freed heap top kept up to 1 GiB (mallopt takes an int)

_ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _user_configured() -> bool:
    return any(name in os.environ for name in _ENV_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module's doc). Returns
    True when both were set, False when nothing was changed (not glibc, the user's own malloc
    settings in the environment, or mallopt refused)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _user_configured():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. The mmap threshold first: once set, glibc stops adjusting it.
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
