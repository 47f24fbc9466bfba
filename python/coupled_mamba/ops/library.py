"""The compiled library ``coupled_mamba._C``: loading it, and the limits and sizes it defines.

Every constant (modality and state limits, checkpoint counts and widths) is read from the
library itself, so the Python layer cannot drift from what the kernels were built with.
"""
from __future__ import annotations

import torch

_ext = None
_max_modalities = _max_state = _max_conv_width = None  # the library's limits, read once by extension()

# The library's CouplingKind codes, kept here so that kind_code, which torch.compile traces in
# coupled_selective_scan, reads no module global (dynamo cannot guard on the extension module);
# extension() checks them against the library as it loads it.
_KIND_CODES = {"rank_one": 0, "none": 1, "general": 2}


def extension():
    """The compiled module coupled_mamba._C (imported with this module when it can be, else on
    first use, which raises the ImportError that says how to build it)."""
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
        codes = {k: int(v.value) for k, v in _C.CouplingKind.__members__.items()}
        if codes != _KIND_CODES:
            raise ImportError(f"coupled_mamba._C defines the coupling kinds {codes}, this Python layer {_KIND_CODES}: "
                              "the package and its compiled library come from different versions")
        _ext = _C
        global _max_modalities, _max_state, _max_conv_width
        _max_modalities, _max_state = int(_C.max_modalities), int(_C.max_state)
        _max_conv_width = int(_C.max_conv_width)
    return _ext


# Loaded now when it can be, so that the limits below are plain ints by the time torch.compile
# traces the op's Python wrapper (dynamo cannot guard on the extension module itself).
try:
    extension()
except ImportError:
    pass


def max_modalities() -> int:
    if _max_modalities is None:
        extension()
    return _max_modalities


def max_state() -> int:
    if _max_state is None:
        extension()
    return _max_state


def max_conv_width() -> int:
    if _max_conv_width is None:
        extension()
    return _max_conv_width


def kind_code(kind: str) -> int:
    """The library's integer code of a coupling kind ("rank_one", "none" or "general")."""
    return _KIND_CODES[kind]


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
