"""The compiled library ``coupled_mamba._C``: loading it, and the limits and sizes it defines.

Every constant (modality and state limits, checkpoint counts and widths) is read from the
library itself, so the Python layer cannot drift from what the kernels were built with.
"""
from __future__ import annotations

import torch

_ext = None


def extension():
    """The compiled module coupled_mamba._C (imported on first use)."""
    global _ext
    if _ext is None:
        try:
            from .. import _C
        except ImportError as e:  # a source checkout on sys.path without a build
            raise ImportError(
                "coupled_mamba._C, the compiled kernel library, is not importable "
                f"({e}). Install the package with `pip install .` from the repository root "
                "(it builds the library with CMake) instead of importing the source tree."
            ) from e
        _ext = _C
    return _ext


def max_modalities() -> int:
    return int(extension().max_modalities)


def max_state() -> int:
    return int(extension().max_state)


def kind_code(kind: str) -> int:
    """The library's integer code of a coupling kind ("rank_one", "none" or "general")."""
    return int(extension().CouplingKind.__members__[kind].value)


def kind_from_code(code: int):
    """The library's CouplingKind enum for an integer code; ValueError for an unknown code."""
    for value in extension().CouplingKind.__members__.values():
        if int(value.value) == code:
            return value
    names = ", ".join(f"{int(v.value)} ({k})" for k, v in extension().CouplingKind.__members__.items())
    raise ValueError(f"coupled_selective_scan: coupling: expected a kind code among {names}, got {code!r}")


def checkpoint_shape(device: torch.device, code: int, Bt: int, M: int, Dch: int, N: int, L: int) -> tuple:
    """Shape of the saved states the forward leaves for the backward: (Bt, D, chunks, width)."""
    ext = extension()
    kind = kind_from_code(code)
    chunks = ext.num_checkpoints(kind, L, device.type == "cuda")
    return (Bt, Dch, int(chunks), int(ext.checkpoint_width(kind, M, N)))


def has_cuda() -> bool:
    """Whether the installed library contains the CUDA kernels."""
    return bool(extension().has_cuda)


def cuda_device_count() -> int:
    """GPUs the compiled library can use (0 in a build without CUDA kernels or without a GPU)."""
    ext = extension()
    return int(ext.cuda_device_count()) if ext.has_cuda else 0


def cuda_unavailable_reason() -> str:
    """Why CUDA tensors cannot run here: no CUDA kernels in the build, or the library's runtime
    sees no GPU (its error text and the runtime version)."""
    ext = extension()
    if not ext.has_cuda:
        return ("this build of coupled-mamba has no CUDA kernels; reinstall it where the CUDA toolkit is "
                "present (COUPLED_MAMBA_CUDA=ON pip install .) or move the tensors to the CPU")
    v = ext.cuda_runtime_version
    return (f"the library's CUDA runtime {v // 1000}.{v % 1000 // 10} reports: {ext.cuda_error_text() or 'no device'}; "
            "a driver too old for that runtime is the usual cause (rebuild with the CUDA toolkit that matches "
            "torch.version.cuda, or update the driver)")


def cpu_isa() -> str:
    """The instruction set the CPU kernels dispatch to: avx512, avx2 or baseline."""
    return extension().cpu_isa()
