"""Deprecated location of the op; use ``coupled_mamba`` or ``coupled_mamba.ops``."""
import warnings

from .ops.scan import CoupledSelectiveScanFn, coupled_selective_scan  # noqa: F401
from .ops.settings import get_num_threads, set_cuda_time_segments, set_num_threads  # noqa: F401

warnings.warn("coupled_mamba.scan moved to coupled_mamba.ops (the op's names are also exported by "
              "coupled_mamba itself)", DeprecationWarning, stacklevel=2)
