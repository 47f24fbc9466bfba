"""Loading the compiled library, with an error that says how to get it when it is missing."""
from __future__ import annotations

# Time steps between saved states; must equal coupled_scan::kChunk and cuda_chunk() (checked on
# first use). The GPU saves states more often: its backward keeps one chunk per thread, and the
# vector path (coupling "none" or a matrix: M states per n) keeps shorter chunks.
CHUNK = 64
CUDA_CHUNK_RANK_ONE = 16
CUDA_CHUNK_VECTOR = 8

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
        built = (_C.chunk, _C.cuda_chunk(0), _C.cuda_chunk(2)) if _C.has_cuda else (_C.chunk,)
        expected = (CHUNK, CUDA_CHUNK_RANK_ONE, CUDA_CHUNK_VECTOR)[:len(built)]
        if built != expected:
            raise ImportError(f"coupled_mamba._C was built with checkpoint chunks {built}, the Python layer "
                              f"expects {expected}; reinstall the package")
        _ext = _C
    return _ext


def checkpoint_chunk(device_type: str, coupling_kind: int) -> int:
    """Time steps between saved states for tensors on this kind of device (kind 0: rank one)."""
    if device_type != "cuda":
        return CHUNK
    return CUDA_CHUNK_RANK_ONE if coupling_kind == 0 else CUDA_CHUNK_VECTOR


def has_cuda() -> bool:
    """Whether the installed library contains the CUDA kernels."""
    return bool(extension().has_cuda)


def cuda_device_count() -> int:
    """GPUs the compiled library can use (0 in a build without CUDA kernels or without a GPU)."""
    ext = extension()
    return int(ext.cuda_device_count()) if ext.has_cuda else 0


def cuda_unavailable_reason() -> str:
    """Why the library's CUDA runtime sees no GPU (its error text and the runtime version)."""
    ext = extension()
    if not ext.has_cuda:
        return "this build has no CUDA kernels"
    v = ext.cuda_runtime_version
    return (f"the library's CUDA runtime {v // 1000}.{v % 1000 // 10} reports: {ext.cuda_error_text() or 'no device'}; "
            "a driver too old for that runtime is the usual cause (rebuild with the CUDA toolkit that matches "
            "torch.version.cuda, or update the driver)")


def cpu_isa() -> str:
    """The instruction set the CPU kernels dispatch to: avx512, avx2 or baseline."""
    return extension().cpu_isa()
