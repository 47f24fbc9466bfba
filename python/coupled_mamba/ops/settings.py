"""Process-wide settings of the op: CPU threads and the CUDA time-segment layout."""
from __future__ import annotations

from typing import Optional

import torch

# An upper bound that no machine reaches, so a typo (2**40) is an error here and not in every call.
MAX_THREADS = 4096

_num_threads: Optional[int] = None
_cuda_time_segments = 0

# Tests set this to fill every buffer the kernels write with NaN first, so that an element a
# kernel forgets to write fails the comparison instead of passing with stale memory.
POISON_OUTPUTS = False


def poisoned(t):
    """A fresh output, NaN-filled when the tests ask for it (an unwritten value then shows)."""
    return t.fill_(float("nan")) if POISON_OUTPUTS else t


def _is_int(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def set_num_threads(n: Optional[int]) -> None:
    """Threads used by the CPU kernels; None (default) follows torch.get_num_threads()."""
    global _num_threads
    if n is not None and (not _is_int(n) or not 1 <= n <= MAX_THREADS):
        raise ValueError(f"set_num_threads: expected an int in [1, {MAX_THREADS}] or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    return _num_threads if _num_threads is not None else torch.get_num_threads()


def set_cuda_time_segments(n: int = 0) -> None:
    """How the CUDA kernels split long sequences into time segments that run in parallel: 0
    (default) when the grid alone would leave the GPU idle, 1 never, n > 1 into n (docs/cuda.md)."""
    global _cuda_time_segments
    if not _is_int(n) or not 0 <= n <= 1 << 20:
        raise ValueError(f"set_cuda_time_segments: expected an int in [0, {1 << 20}], got {n!r}")
    _cuda_time_segments = n


def get_cuda_time_segments() -> int:
    return _cuda_time_segments
