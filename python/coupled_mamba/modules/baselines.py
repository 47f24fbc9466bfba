"""The paper's fusion baselines (Tables 6 and 9, Figures 3 and 4), with the same input
projections, alignment, pooling and head as CoupledMambaForMultimodal; only the fusion differs.

- AverageFusionModel: M independent Mamba stacks, pooled outputs averaged.
- ConcatFusionModel: projected features concatenated along channels, one Mamba stack.
- Uncoupled Mamba fusion is CoupledMambaForMultimodal(coupling="none").
- CrossAttentionFusionModel: each modality attends to the others (multi-head cross attention).
- TransformerFusionModel: a self-attention encoder over the concatenated modality tokens.

The attention models are bidirectional and get sinusoidal time positions (a Mamba stack knows
order from its recurrence). Attention runs through F.scaled_dot_product_attention.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layer import resolve_dt_rank
from .model import CoupledMamba
from .multimodal import MultimodalModel


class AverageFusionModel(MultimodalModel):
    """Average fusion: M independent Mamba stacks (a CoupledMamba with coupling "none" is exactly
    that: per-modality parameters, no state exchange), pooled vectors averaged before the head."""

    kind = "average"

    def __init__(self, input_dims: Sequence[int], d_model: int = 128, n_layers: int = 3, d_state: int = 64,
                 d_conv: int = 4, expand: int = 2, dt_rank: Optional[int] = None, seq_len: int = 50,
                 align: str = "resample", dropout: float = 0.1, task: str = "regression", num_classes: int = 1):
        super().__init__(input_dims, d_model, len(input_dims), "mean", seq_len, align, dropout, task, num_classes)
        dt_rank = resolve_dt_rank(dt_rank, d_state)
        self.backbone = CoupledMamba(d_model, len(input_dims), n_layers, d_state, d_conv, expand, dt_rank, "none")
        self._record_config(input_dims=input_dims, task=task, num_classes=num_classes, d_model=d_model,
                            n_layers=n_layers, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                            seq_len=seq_len, align=align, dropout=dropout)

    def fuse(self, x, mask):
        return self.backbone(x, mask), mask


class ConcatFusionModel(MultimodalModel):
    """Concat fusion: the M projected features concatenated along channels (M * d_model), mapped
    back to d_model, one Mamba stack. A step is valid when any modality is valid there; an
    absent modality contributes zeros."""

    kind = "concat"

    def __init__(self, input_dims: Sequence[int], d_model: int = 128, n_layers: int = 3, d_state: int = 64,
                 d_conv: int = 4, expand: int = 2, dt_rank: Optional[int] = None, seq_len: int = 50,
                 align: str = "resample", dropout: float = 0.1, task: str = "regression", num_classes: int = 1):
        super().__init__(input_dims, d_model, 1, "concat", seq_len, align, dropout, task, num_classes)
        dt_rank = resolve_dt_rank(dt_rank, d_state)
        self.fusion = nn.Linear(len(input_dims) * d_model, d_model)
        self.backbone = CoupledMamba(d_model, 1, n_layers, d_state, d_conv, expand, dt_rank, "none")
        self._record_config(input_dims=input_dims, task=task, num_classes=num_classes, d_model=d_model,
                            n_layers=n_layers, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                            seq_len=seq_len, align=align, dropout=dropout)

    def fuse(self, x, mask):
        Bt, M, L, d = x.shape  # the front end already zeroed masked steps
        fused = self.fusion(x.permute(0, 2, 1, 3).reshape(Bt, L, M * d)).unsqueeze(1)  # (B, 1, L, d)
        any_valid = mask.any(dim=1, keepdim=True) if mask is not None else None
        return self.backbone(fused, any_valid), any_valid


def sinusoidal_positions(length: int, d_model: int, device=None) -> torch.Tensor:
    """(length, d_model) fixed sin/cos positions (Vaswani et al.), any length."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe


class AttentionBlock(nn.Module):
    """Pre-norm multi-head attention + feed-forward, both residual. ``forward(x, kv, key_mask)``:
    queries from x (batch, Lq, d), keys and values from kv (batch, Lk, d) (x itself for
    self-attention), key_mask (batch, Lk) bool or None. A query whose sample has no valid key
    gets no attention update (instead of attending to padding)."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int = 2, cross: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model) if cross else None
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model))

    def forward(self, x: torch.Tensor, kv: Optional[torch.Tensor] = None,
                key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        Bt, Lq, d = x.shape
        h = self.n_heads
        xn = self.norm_q(x)
        kvn = xn if kv is None else self.norm_kv(kv)
        q = self.q_proj(xn).view(Bt, Lq, h, d // h).transpose(1, 2)
        k, v = self.kv_proj(kvn).view(Bt, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask, has_key = None, None
        if key_mask is not None:
            has_key = key_mask.any(dim=-1)  # (B,)
            # Rows without any valid key would softmax over nothing (NaN): let them see every key
            # and drop their result below.
            attn_mask = (key_mask | ~has_key[:, None])[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        a = self.out_proj(a.transpose(1, 2).reshape(Bt, Lq, d))
        if has_key is not None:
            a = a * has_key[:, None, None].to(a.dtype)
        x = x + a
        return x + self.ffn(self.norm_ff(x))


class CrossAttentionFusionModel(MultimodalModel):
    """Cross-attention fusion (the paper's Table 6 baseline): in every layer each modality's
    tokens attend to the tokens of all other modalities (own parameters per modality), then a
    feed-forward; n_layers deep, per-modality final norm, same pooling and head as the coupled
    model. With one modality it is plain self-attention."""

    kind = "cross-attention"

    def __init__(self, input_dims: Sequence[int], d_model: int = 128, n_layers: int = 3, n_heads: int = 4,
                 expand: int = 2, seq_len: int = 50, align: str = "resample", dropout: float = 0.1,
                 task: str = "regression", num_classes: int = 1):
        super().__init__(input_dims, d_model, len(input_dims), "concat", seq_len, align, dropout, task, num_classes)
        M = len(input_dims)
        self.layers = nn.ModuleList(
            nn.ModuleList(AttentionBlock(d_model, n_heads, expand, cross=M > 1) for _ in range(M))
            for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(M))
        self._record_config(input_dims=input_dims, task=task, num_classes=num_classes, d_model=d_model,
                            n_layers=n_layers, n_heads=n_heads, expand=expand, seq_len=seq_len, align=align,
                            dropout=dropout)

    def fuse(self, x, mask):
        Bt, M, L, d = x.shape
        streams = list((x + sinusoidal_positions(L, d, x.device).to(x.dtype)).unbind(1))
        masks = list(mask.unbind(1)) if mask is not None else [None] * M
        for blocks in self.layers:
            new = []
            for m, block in enumerate(blocks):
                if M == 1:
                    new.append(block(streams[0], None, masks[0]))
                    continue
                others = [i for i in range(M) if i != m]
                kv = torch.cat([streams[i] for i in others], dim=1)
                kmask = torch.cat([masks[i] for i in others], dim=1) if mask is not None else None
                new.append(block(streams[m], kv, kmask))
            streams = new
        return torch.stack([norm(s) for norm, s in zip(self.norms, streams)], dim=1), mask


class TransformerFusionModel(MultimodalModel):
    """Transformer baseline: the M aligned token sequences are concatenated into one sequence of
    M * L tokens (plus time positions and a learned modality embedding) and run through an
    n_layers pre-norm self-attention encoder; tokens are then pooled per modality as in the
    coupled model. Attention over M * L tokens is what makes its cost quadratic in L."""

    kind = "transformer"

    def __init__(self, input_dims: Sequence[int], d_model: int = 128, n_layers: int = 3, n_heads: int = 4,
                 expand: int = 2, seq_len: int = 50, align: str = "resample", dropout: float = 0.1,
                 task: str = "regression", num_classes: int = 1):
        super().__init__(input_dims, d_model, len(input_dims), "concat", seq_len, align, dropout, task, num_classes)
        M = len(input_dims)
        self.modality_embedding = nn.Parameter(torch.randn(M, d_model) * 0.02)
        self.layers = nn.ModuleList(AttentionBlock(d_model, n_heads, expand) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self._record_config(input_dims=input_dims, task=task, num_classes=num_classes, d_model=d_model,
                            n_layers=n_layers, n_heads=n_heads, expand=expand, seq_len=seq_len, align=align,
                            dropout=dropout)

    def fuse(self, x, mask):
        Bt, M, L, d = x.shape
        x = x + sinusoidal_positions(L, d, x.device).to(x.dtype) + self.modality_embedding[:, None].to(x.dtype)
        tokens = x.reshape(Bt, M * L, d)
        key_mask = mask.reshape(Bt, M * L) if mask is not None else None
        for layer in self.layers:
            tokens = layer(tokens, None, key_mask)
        return self.norm(tokens).view(Bt, M, L, d), mask
