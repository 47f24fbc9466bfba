"""Loading the compiled library, with an error that says how to get it when it is missing."""
from __future__ import annotations

# Time steps between saved states; must equal coupled_scan::kChunk / kCudaChunk (checked on
# first use). The GPU saves states more often: its backward keeps one chunk per thread.
CHUNK = 64
CUDA_CHUNK = 16

_ext = None
_error = None


def extension():
    """The compiled module coupled_mamba._C (imported on first use)."""
    global _ext, _error
    if _ext is None:
        try:
            from . import _C
        except ImportError as e:  # a source checkout on sys.path without a build
            _error = e
            raise ImportError(
                "coupled_mamba._C, the compiled kernel library, is not importable "
                f"({e}). Install the package with `pip install .` from the repository root "
                "(it builds the library with CMake) instead of importing the source tree."
            ) from e
        if _C.chunk != CHUNK or getattr(_C, "cuda_chunk", CUDA_CHUNK) != CUDA_CHUNK:
            raise ImportError("coupled_mamba._C was built with other checkpoint chunks than the Python layer expects "
                              f"({_C.chunk}, {getattr(_C, 'cuda_chunk', None)} vs {CHUNK}, {CUDA_CHUNK})")
        _ext = _C
    return _ext


def num_chunks(length: int) -> int:
    return (length + CHUNK - 1) // CHUNK


def checkpoint_chunk(device_type: str) -> int:
    """Time steps between saved states for tensors on this kind of device."""
    return CUDA_CHUNK if device_type == "cuda" else CHUNK


def has_cuda() -> bool:
    """Whether the installed library contains the CUDA kernels."""
    return bool(extension().has_cuda)


def cuda_device_count() -> int:
    """GPUs the compiled library can use (0 in a build without CUDA kernels or without a GPU)."""
    ext = extension()
    return int(ext.cuda_device_count()) if ext.has_cuda else 0


def cpu_isa() -> str:
    """The instruction set the CPU kernels dispatch to: avx512, avx2 or baseline."""
    return extension().cpu_isa()
