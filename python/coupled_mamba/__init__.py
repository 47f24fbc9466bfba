"""coupled-mamba: fused coupled selective scans (Coupled Mamba, NeurIPS 2024) for PyTorch."""
from . import reference  # noqa: F401
from ._extension import cpu_isa, has_cuda  # noqa: F401
from .scan import (  # noqa: F401
    CoupledSelectiveScanFn,
    coupled_selective_scan,
    get_num_threads,
    set_cuda_time_segments,
    set_num_threads,
)

__version__ = "0.1.0"
