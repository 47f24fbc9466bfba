"""Loading the compiled library, with an error that says how to get it when it is missing."""
from __future__ import annotations

# Time steps between saved states; must equal coupled_scan::kChunk (checked on first use).
CHUNK = 64

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
        if _C.chunk != CHUNK:
            raise ImportError(f"coupled_mamba._C was built with chunk {_C.chunk}, the Python layer expects {CHUNK}")
        _ext = _C
    return _ext


def num_chunks(length: int) -> int:
    return (length + CHUNK - 1) // CHUNK


def has_cuda() -> bool:
    """Whether the installed library contains the CUDA kernels."""
    return bool(extension().has_cuda)


def cpu_isa() -> str:
    """The instruction set the CPU kernels dispatch to: avx512, avx2 or baseline."""
    return extension().cpu_isa()
