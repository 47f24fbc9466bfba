"""The one parser of the ``coupling`` argument, shared by the op, the reference and the step.

The coupled previous state of modality m is g^m = sum_i W[m, i] h^i (docs/coupled-scan.md):
"sum" is W = ones (the paper's Eq. 6), "mean" W = ones / M, "none" W = identity, and a tensor is
any (M, M) W. Sum and mean are rank one (alpha * ones), which the kernels exploit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from torch import Tensor

Coupling = Union[str, Tensor]
COUPLING_MODES = ("sum", "mean", "none")


@dataclass(frozen=True)
class ParsedCoupling:
    kind: str                 # "rank_one" (W = alpha * ones), "none" (W = I) or "general"
    alpha: float = 1.0        # the rank-one weight
    W: Optional[Tensor] = None  # the (M, M) matrix of the general kind


def parse_coupling(coupling: Coupling, M: int) -> ParsedCoupling:
    """Classify ``coupling`` for M modalities; its shape, dtype and device are checked with the
    other inputs (ops/validation.py)."""
    if isinstance(coupling, Tensor):
        return ParsedCoupling("general", 1.0, coupling)
    if isinstance(coupling, str):
        if coupling == "sum":
            return ParsedCoupling("rank_one", 1.0)
        if coupling == "mean":
            return ParsedCoupling("rank_one", 1.0 / max(M, 1))
        if coupling == "none":
            return ParsedCoupling("none")
    what = repr(coupling) if isinstance(coupling, str) else f"an object of type {type(coupling).__module__}.{type(coupling).__qualname__}"
    raise (ValueError if isinstance(coupling, str) else TypeError)(
        f"coupled_selective_scan: coupling: expected 'sum', 'mean', 'none' or an (M, M) torch.Tensor, got {what}")
