"""One time step of the coupled selective scan, in plain PyTorch, for streaming inference.

The full-sequence path runs the fused scan; a user who receives frames one at a time wants each
new output without rescanning the past. :func:`coupled_scan_step` advances the coupled SSM state
by exactly one step (O(1) in the sequence length). It uses the rank-one form for "sum" and
"mean" (alpha times the sum over modalities) rather than the reference's dense (M, M) product.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .coupling import Coupling, parse_coupling


def couple_states(h: torch.Tensor, coupling: Coupling) -> torch.Tensor:
    """g^m = sum_i W[m, i] h^i for states h of shape (batch, M, ...): the coupled previous state."""
    parsed = parse_coupling(coupling, h.shape[1])
    if parsed.kind == "general":
        return torch.einsum("mi,bi...->bm...", parsed.W.to(h.dtype), h)
    if parsed.kind == "none":
        return h
    return (h.sum(dim=1, keepdim=True) * parsed.alpha).expand_as(h)


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
