"""One time step of a Coupled Mamba layer, in plain PyTorch, for streaming inference.

The full-sequence path runs the fused coupled scan; a user who receives frames one at a time
wants each new output without rescanning the past. These functions advance the two pieces of
state a layer keeps -- the depthwise causal conv window and the coupled SSM state -- by exactly
one step, so a step costs O(1) in the sequence length. They follow docs/coupled-scan.md, but
use the rank-one form for "sum" and "mean" (docs/coupled-scan.md, "Rank-one fast path") rather
than a dense (M, M) product, so the streaming path and the scan share no code.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

Coupling = Union[str, torch.Tensor]


def couple_states(h: torch.Tensor, coupling: Coupling) -> torch.Tensor:
    """g^m = sum_i W[m, i] h^i for states h of shape (batch, M, ...): the coupled previous state."""
    if isinstance(coupling, torch.Tensor):
        W = coupling.to(h.dtype)
        return torch.einsum("mi,bi...->bm...", W, h)
    if coupling == "none":
        return h
    if coupling == "sum":
        return h.sum(dim=1, keepdim=True).expand_as(h)
    if coupling == "mean":
        return h.mean(dim=1, keepdim=True).expand_as(h)
    raise ValueError(f"coupling: expected 'sum', 'mean', 'none' or an (M, M) tensor, got {coupling!r}")


def coupled_scan_step(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    coupling: Coupling = "mean",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Advance the coupled selective scan by one time step.

    Shapes (the time axis of :func:`coupled_mamba.coupled_selective_scan` removed):
    state (Bt, M, D, N) = h_{t-1}; u, delta, z (Bt, M, D); A (M, D, N); B, C (Bt, M, N);
    D, delta_bias (M, D). Returns (out_t (Bt, M, D) in u's dtype, h_t (Bt, M, D, N)) with the state
    in float32 (float64 for float64 inputs), as the scan's last_state.
    """
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    u_c, B_c, C_c = u.to(cdt), B.to(cdt), C.to(cdt)
    dt = delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)
    if delta_softplus:
        dt = F.softplus(dt)
    a = torch.exp(dt.unsqueeze(-1) * A.to(cdt))  # (Bt, M, D, N)
    g = couple_states(state.to(cdt), coupling)
    h = a * g + (dt * u_c).unsqueeze(-1) * B_c.unsqueeze(2)
    y = (h * C_c.unsqueeze(2)).sum(-1)
    if D is not None:
        y = y + D.to(cdt) * u_c
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(u.dtype), h


def causal_conv_step(
    conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of a depthwise causal Conv1d.

    conv_state (..., C, k - 1) holds the previous k - 1 inputs (oldest first), x (..., C) the new
    one, weight (..., C, k) and bias (..., C) broadcast against them. Returns (output (..., C),
    new conv_state). Matches F.conv1d with k - 1 zeros of left padding: weight[..., k - 1]
    multiplies the newest input.
    """
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    out = (window * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return out, window[..., 1:]
