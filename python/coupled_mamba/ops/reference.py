"""Plain PyTorch implementation of the coupled selective scan: the oracle for every test.

It follows docs/coupled-scan.md step by step: a Python loop over time, the full (batch, M, D, N)
state at every step, and a dense (M, M) matrix for the sum, mean and general couplings (so it
shares no code path with the kernels' rank-one form). Coupling "none" keeps the modalities apart
outright (no multiplication by an identity, which would turn a NaN in one modality into 0 x NaN
in the others). Slow and memory hungry by design; autograd through it gives the reference
gradients.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .coupling import Coupling, parse_coupling


def coupling_matrix(coupling: Coupling, M: int, dtype: torch.dtype, device) -> Optional[torch.Tensor]:
    """The dense (M, M) matrix W of a coupling (W[m, i] weights state i feeding modality m), or
    None for "none" (the identity, applied as no coupling at all)."""
    parsed = parse_coupling(coupling, M)
    if parsed.kind == "none":
        return None
    if parsed.kind == "general":
        return parsed.W.to(dtype=dtype, device=device)
    return torch.full((M, M), parsed.alpha, dtype=dtype, device=device)


def coupled_selective_scan_ref(
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
    initial_state: Optional[torch.Tensor] = None,
    return_last_state: bool = False,
    lengths: Optional[torch.Tensor] = None,
):
    """Reference coupled selective scan; same signature and result as
    :func:`coupled_mamba.coupled_selective_scan`.

    Shapes: u, delta, z (Bt, M, D, L); A (M, D, N); B, C (Bt, M, N, L); D, delta_bias (M, D);
    initial_state (Bt, M, D, N); lengths (Bt,). Computes in float64 for float64 inputs, float32
    otherwise. With lengths, sample b's state stops changing after its lengths[b] steps and its
    outputs there are 0.
    """
    in_dtype = u.dtype
    cdt = torch.float64 if in_dtype == torch.float64 else torch.float32
    Bt, M, Dch, L = u.shape
    N = A.shape[-1]
    u_c, delta_c, B_c, C_c = (t.to(cdt) for t in (u, delta, B, C))
    A_c = A.to(cdt)
    W = coupling_matrix(coupling, M, cdt, u.device)

    dt = delta_c
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[None, :, :, None]
    if delta_softplus:
        dt = F.softplus(dt)  # log1p(exp(x)), and x itself above 20

    if initial_state is None:
        h = torch.zeros(Bt, M, Dch, N, dtype=cdt, device=u.device)
    else:
        h = initial_state.to(cdt)
    ys = []
    for t in range(L):
        a = torch.exp(dt[..., t, None] * A_c)  # (Bt, M, D, N)
        g = h if W is None else torch.einsum("mi,bidn->bmdn", W, h)  # coupled previous state
        h_next = a * g + (dt[..., t] * u_c[..., t])[..., None] * B_c[:, :, None, :, t]
        ys.append((h_next * C_c[:, :, None, :, t]).sum(-1))
        if lengths is not None:  # past its length a sample keeps its state (its outputs are zeroed below)
            h_next = torch.where((t < lengths).view(Bt, 1, 1, 1), h_next, h)
        h = h_next
    y = torch.stack(ys, dim=-1) if L > 0 else u_c.new_zeros(Bt, M, Dch, 0)
    if D is not None:
        y = y + D.to(cdt)[None, :, :, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(cdt))
    if lengths is not None:
        steps = torch.arange(L, device=u.device)
        y = torch.where((steps[None, :] < lengths[:, None]).view(Bt, 1, 1, L), y, torch.zeros_like(y))
    out = y.to(in_dtype)
    if return_last_state:
        return out, h
    return out
