"""The Coupled Mamba stack (Figure 1 of the paper: N layers of M coupled blocks, a final norm)
and the ready model for multimodal sequence tasks built on it."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import masked_mean
from .layer import CoupledMambaLayer, LayerCache, resolve_dt_rank
from .multimodal import MultimodalModel


@dataclass
class InferenceCache:
    """Streaming state of a CoupledMamba stack: one LayerCache per layer and the step count."""

    layers: List[LayerCache]
    seqlen_offset: int = 0


class CoupledMamba(nn.Module):
    """N CoupledMambaLayers and a final per-modality LayerNorm: (batch, M, L, d) -> same shape.

    ``coupling`` defaults to "mean", which keeps the state bounded; "sum" is the paper's Eq. 6 and
    its state grows like M^L (float32 overflows near L = 80 for M = 3). Other keyword arguments go
    to every layer (see CoupledMambaLayer).
    """

    def __init__(self, d_model: int, n_modalities: int, n_layers: int = 3, d_state: int = 64, d_conv: int = 4,
                 expand: int = 2, dt_rank: Union[int, str, None] = "auto", coupling: str = "mean",
                 norm_eps: float = 1e-5, **layer_kwargs):
        super().__init__()
        self.d_model, self.n_modalities, self.norm_eps = d_model, n_modalities, norm_eps
        self.layers = nn.ModuleList(
            CoupledMambaLayer(d_model, n_modalities, d_state=d_state, d_conv=d_conv, expand=expand,
                              dt_rank=dt_rank, coupling=coupling, norm_eps=norm_eps, **layer_kwargs)
            for _ in range(n_layers)
        )
        self.norm_weight = nn.Parameter(torch.ones(n_modalities, d_model))
        self.norm_bias = nn.Parameter(torch.zeros(n_modalities, d_model))

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        xn = F.layer_norm(x, (self.d_model,), eps=self.norm_eps)
        if x.dim() == 4:
            return xn * self.norm_weight[:, None] + self.norm_bias[:, None]
        return xn * self.norm_weight + self.norm_bias

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                cache: Optional[InferenceCache] = None) -> torch.Tensor:
        """x (batch, M, L, d_model), mask (batch, M, L) bool or None. With a cache, continues from
        its state and leaves the state after the last step in it (chunked processing)."""
        return torch.stack(self.features_by_modality(x, mask, cache), dim=1)

    def features_by_modality(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                             cache: Optional[InferenceCache] = None) -> List[torch.Tensor]:
        """:meth:`forward`'s result as M contiguous (batch, L, d_model) tensors, one per modality.

        Between the layers the residual stream stays in the layout (M, batch, L, d_model)
        (CoupledMambaLayer.forward_modality_major): x is copied into it once, and the final
        per-modality LayerNorms read it and write these M tensors.
        """
        x = x.transpose(0, 1)
        for i, layer in enumerate(self.layers):
            x = layer.forward_modality_major(x, mask, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.seqlen_offset += x.shape[2]
        return [F.layer_norm(xm, (self.d_model,), self.norm_weight[m], self.norm_bias[m], self.norm_eps)
                for m, xm in enumerate(x.unbind(0))]

    def allocate_cache(self, batch_size: int, device=None) -> InferenceCache:
        return InferenceCache([layer.allocate_cache(batch_size, device) for layer in self.layers])

    def step(self, x: torch.Tensor, cache: InferenceCache, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One time step for all modalities: x (batch, M, d_model) -> (batch, M, d_model), O(1) in
        the length; equals forward() at that step. mask: optional (batch, M) bool."""
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer.step(x, layer_cache, mask)
        cache.seqlen_offset += 1
        return self._final_norm(x)


@dataclass
class MultimodalStreamCache:
    """Streaming state of a CoupledMambaForMultimodal: the stack's cache and running pooled sums."""

    backbone: InferenceCache
    pooled_sum: torch.Tensor  # (batch, M, d_model)
    count: torch.Tensor  # (batch, M, 1) valid steps seen per modality


# log(largest finite float32) = log(3.4e38): a state growing by a factor M per step overflows after
# about this / ln M steps (docs/coupled-scan.md, Numerics, "Growth under sum").
_FLOAT32_LOG_MAX = 88.72


def sum_coupling_horizon(n_modalities: int) -> float:
    """Steps after which a "sum"-coupled float32 state growing like M^t can overflow (inf for M = 1)."""
    return math.inf if n_modalities < 2 else _FLOAT32_LOG_MAX / math.log(n_modalities)


class CoupledMambaForMultimodal(MultimodalModel):
    """Coupled Mamba for multimodal sequence regression or classification.

    Per-modality input projections to d_model, alignment to one length (``align="resample"``:
    each sample's valid part averaged into ``seq_len`` equal bins; ``"pad"``: right padding and
    masks), a CoupledMamba stack, masked mean pooling per modality, concatenation, MLP head.

    ``model(xs, lengths=None)``: xs a list of M (batch, L_m, d_m) tensors, lengths an optional list
    of M (batch,) int64 tensors. Returns (batch,) for regression, (batch, num_classes) logits for
    classification. Padded steps never change the output.

    coupling: "mean" (default, bounded), "sum" (paper's Eq. 6; state grows like M^L), "none"
    (uncoupled Mamba fusion), "learned" (row-stochastic softmax(logits), starts at mean).
    dt_rank None = ceil(d_state / 8).
    """

    def __init__(self, input_dims: Sequence[int], d_model: int = 128, n_layers: int = 3, d_state: int = 64,
                 d_conv: int = 4, expand: int = 2, dt_rank: Optional[int] = None, coupling: str = "mean",
                 seq_len: int = 50, align: str = "resample", dropout: float = 0.1, task: str = "regression",
                 num_classes: int = 1):
        super().__init__(input_dims, d_model, len(input_dims), "concat", seq_len, align, dropout, task, num_classes)
        self.kind = f"coupled-{coupling}"
        horizon = sum_coupling_horizon(len(input_dims))
        if coupling == "sum" and seq_len > horizon:
            warnings.warn(f"coupled-sum with {len(input_dims)} modalities and seq_len {seq_len}: the summed state "
                          f"grows like {len(input_dims)}^L and float32 can overflow after about {horizon:.0f} steps "
                          "(docs/coupled-scan.md, Numerics); use a shorter seq_len or coupling 'mean' or 'learned'",
                          RuntimeWarning, stacklevel=2)
        dt_rank = resolve_dt_rank(dt_rank, d_state)
        self.backbone = CoupledMamba(d_model, len(input_dims), n_layers, d_state, d_conv, expand, dt_rank, coupling)
        self._record_config(input_dims=input_dims, task=task, num_classes=num_classes, d_model=d_model,
                            n_layers=n_layers, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                            seq_len=seq_len, align=align, dropout=dropout)

    def fuse(self, x, mask):
        return self.backbone(x, mask), mask

    def fuse_and_pool(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        # Each modality's features pooled as the stack leaves them, without stacking them first.
        feats = self.backbone.features_by_modality(x, mask)
        masks = [None] * len(feats) if mask is None else [mask[:, m, None] for m in range(len(feats))]
        return torch.cat([masked_mean(f[:, None], mm) for f, mm in zip(feats, masks)], dim=1)

    def allocate_cache(self, batch_size: int, device=None) -> MultimodalStreamCache:
        device = device if device is not None else self.backbone.norm_weight.device
        M, d = self.n_modalities, self.backbone.d_model
        return MultimodalStreamCache(
            backbone=self.backbone.allocate_cache(batch_size, device),
            pooled_sum=torch.zeros(batch_size, M, d, device=device),
            count=torch.zeros(batch_size, M, 1, device=device),
        )

    def step(self, frames: Sequence[torch.Tensor], cache: MultimodalStreamCache,
             mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Streaming prediction: one frame per modality, (batch, d_m) each, already on the common
        time axis. Returns the prediction for everything seen so far, which equals
        ``model(prefix)`` with ``align="pad"`` (or an already aligned input with T_m = L).
        mask: optional (batch, M) bool, False for a modality whose stream has ended."""
        x = self.frontend.project_step(frames)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        feats = self.backbone.step(x, cache.backbone, mask)
        valid = torch.ones_like(cache.count) if mask is None else mask[..., None].to(feats.dtype)
        cache.pooled_sum = cache.pooled_sum + feats * valid
        cache.count = cache.count + valid
        return self.predict_from_pooled(cache.pooled_sum / cache.count.clamp_min(1.0))
