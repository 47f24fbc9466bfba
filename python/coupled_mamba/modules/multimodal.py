"""The part every multimodal model shares: per-modality input projections, alignment to one
time axis, masked pooling and the prediction head. Subclasses supply only the fusion
(``fuse``), which is what the paper's ablations vary (Tables 6 and 9)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .alignment import ALIGN_MODES, align_modalities
from .heads import PredictionHead, masked_mean

COMBINES = ("concat", "mean")


class MultimodalFrontEnd(nn.Module):
    """Aligns M sequences (batch, T_m, d_m) to (batch, M, L, d_model) plus an optional mask.

    Alignment runs before the projection: averaging commutes with an affine map, and L <= T_m
    steps of width d_m are cheaper to project than T_m.
    """

    def __init__(self, input_dims: Sequence[int], d_model: int, seq_len: int = 50, align: str = "resample",
                 dropout: float = 0.0):
        super().__init__()
        if align not in ALIGN_MODES:
            raise ValueError(f"align: expected one of {ALIGN_MODES}, got {align!r}")
        self.input_dims, self.seq_len, self.align = list(input_dims), seq_len, align
        self.projections = nn.ModuleList(nn.Linear(d, d_model) for d in input_dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, xs: Sequence[torch.Tensor], lengths=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if len(xs) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} modalities, got {len(xs)}")
        for x, d in zip(xs, self.input_dims):
            if x.dim() != 3 or x.shape[-1] != d:
                raise ValueError(f"expected a (batch, L, {d}) tensor, got shape {tuple(x.shape)}")
        aligned, mask = align_modalities(xs, lengths, self.align, self.seq_len)
        x = torch.stack([proj(a) for proj, a in zip(self.projections, aligned)], dim=1)
        if mask is not None:
            x = x.masked_fill_(~mask[..., None], 0.0)  # in place on stack's fresh result
        return self.dropout(x), mask

    def project_step(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """One already-aligned frame per modality, (batch, d_m) each -> (batch, M, d_model)."""
        return self.dropout(torch.stack([proj(f) for proj, f in zip(self.projections, frames)], dim=1))


class MultimodalModel(nn.Module):
    """Base class: ``model(xs, lengths=None)`` with xs a list of M (batch, L_m, d_m) tensors and
    lengths an optional list of M (batch,) int64 valid lengths; returns (batch,) for regression,
    (batch, num_classes) logits for classification.

    Subclasses implement ``fuse(x, mask) -> (features (batch, K, L, d_model), mask (batch, K, L)
    or None)``; the K streams are mean-pooled over valid steps and combined by ``combine``
    ("concat": K * d_model features, "mean": d_model) before the head.
    ``config`` holds the model kind and every constructor argument:
    ``coupled_mamba.modules.build_model(**model.config)`` rebuilds the same architecture.
    """

    kind: str = ""

    def __init__(self, input_dims: Sequence[int], d_model: int, n_streams: int, combine: str = "concat",
                 seq_len: int = 50, align: str = "resample", dropout: float = 0.0, task: str = "regression",
                 num_classes: int = 1):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine: expected one of {COMBINES}, got {combine!r}")
        self.task, self.num_classes, self.combine = task, num_classes, combine
        self.n_modalities = len(input_dims)
        self.frontend = MultimodalFrontEnd(input_dims, d_model, seq_len, align, dropout)
        head_in = d_model * (n_streams if combine == "concat" else 1)
        self.head = PredictionHead(head_in, d_model, task, num_classes, dropout)
        self.config: Dict[str, Any] = {}

    def _record_config(self, **args) -> None:
        self.config = {"kind": self.kind, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}}

    def fuse(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def predict_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (batch, K, d_model) -> predictions."""
        pooled = pooled.flatten(1) if self.combine == "concat" else pooled.mean(dim=1)
        return self.head(pooled)

    def fuse_and_pool(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The fused streams mean-pooled over their valid steps: (batch, K, d_model). A subclass
        may pool without materialising ``fuse``'s (batch, K, L, d_model) result."""
        feats, mask = self.fuse(x, mask)
        return masked_mean(feats, mask)

    def forward(self, xs: Sequence[torch.Tensor], lengths: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        x, mask = self.frontend(xs, lengths)
        return self.predict_from_pooled(self.fuse_and_pool(x, mask))
