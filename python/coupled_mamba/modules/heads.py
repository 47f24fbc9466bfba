"""Pooling over time and the prediction head shared by every model, so that models differ only
in how they fuse the modalities."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

TASKS = ("regression", "classification")


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over time of valid steps: x (batch, K, L, d), mask (batch, K, L) bool or None ->
    (batch, K, d). A stream with no valid step pools to zeros. Values at masked steps never reach
    the result, even NaN or Inf (they are replaced, not multiplied by 0)."""
    if mask is None:
        return x.mean(dim=2)
    count = mask.sum(dim=2, keepdim=True).to(x.dtype)[..., 0, None]
    kept = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))  # one pass
    return kept.sum(dim=2) / count.clamp_min(1.0)


class PredictionHead(nn.Module):
    """MLP from the combined pooled features to one value (regression) or class logits.

    Returns (batch,) for regression and (batch, num_classes) for classification.
    """

    def __init__(self, in_features: int, hidden: int, task: str = "regression", num_classes: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        if task == "classification" and num_classes < 2:
            raise ValueError("classification needs num_classes >= 2")
        self.task = task
        out = 1 if task == "regression" else num_classes
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        y = self.mlp(pooled)
        return y.squeeze(-1) if self.task == "regression" else y
