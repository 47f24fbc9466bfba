"""Deprecated location of the reference oracle; use ``coupled_mamba.ops.reference``."""
import warnings

from .ops.reference import coupled_selective_scan_ref, coupling_matrix  # noqa: F401

warnings.warn("coupled_mamba.reference moved to coupled_mamba.ops.reference (also exported as "
              "coupled_mamba.coupled_selective_scan_ref)", DeprecationWarning, stacklevel=2)
