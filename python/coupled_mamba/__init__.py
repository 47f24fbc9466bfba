"""coupled-mamba: fused coupled selective scans (Coupled Mamba, NeurIPS 2024) for PyTorch.

Three tiers, each importing only those below it: ``coupled_mamba.ops`` (the op), ``.modules``
(layers and models) and the application (``.train``, ``.data``, ``.metrics``, ``.bench``,
``.cli``), which ``import coupled_mamba`` does not load.
"""
from .ops import (  # noqa: F401
    CoupledSelectiveScanFn,
    coupled_selective_scan,
    coupled_selective_scan_ref,
    cpu_isa,
    get_num_threads,
    has_cuda,
    set_cuda_time_segments,
    set_num_threads,
)

__version__ = "0.1.0"


def __getattr__(name):
    # Submodules reached as attributes without an import: the deprecated aliases (reference,
    # scan) and the tiers above the op, loaded only when asked for; likewise the training API.
    if name in ("fit", "FitResult", "cross_validate"):
        from . import train

        return getattr(train, name)
    if name in ("reference", "scan", "modules", "train", "data", "metrics", "bench", "cli"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
