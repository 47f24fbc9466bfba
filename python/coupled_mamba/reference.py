"""Plain PyTorch implementation of the coupled selective scan: the oracle for every test.

It follows docs/coupled-scan.md step by step (a Python loop over time, a dense (M, M) coupling
matrix for every mode, so it shares no code path with the rank-one kernels) and materialises the
full (batch, M, D, N) state at every step. Slow and memory hungry by design; autograd through it
gives the reference gradients.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

Coupling = Union[str, torch.Tensor]


def coupling_matrix(coupling: Coupling, M: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The dense (M, M) matrix W of a coupling mode: W[m, i] weights state i feeding modality m."""
    if isinstance(coupling, torch.Tensor):
        return coupling.to(dtype=dtype, device=device)
    if coupling == "sum":
        return torch.ones(M, M, dtype=dtype, device=device)
    if coupling == "mean":
        return torch.full((M, M), 1.0 / M, dtype=dtype, device=device)
    if coupling == "none":
        return torch.eye(M, dtype=dtype, device=device)
    raise ValueError(f"coupling: expected 'sum', 'mean', 'none' or an (M, M) tensor, got {coupling!r}")


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
):
    """Reference coupled selective scan; same signature and result as
    :func:`coupled_mamba.coupled_selective_scan`.

    Shapes: u, delta, z (Bt, M, D, L); A (M, D, N); B, C (Bt, M, N, L); D, delta_bias (M, D);
    initial_state (Bt, M, D, N). Computes in float64 for float64 inputs, float32 otherwise.
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
        g = torch.einsum("mi,bidn->bmdn", W, h)  # coupled previous state
        h = a * g + (dt[..., t] * u_c[..., t])[..., None] * B_c[:, :, None, :, t]
        ys.append((h * C_c[:, :, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if L > 0 else u_c.new_zeros(Bt, M, Dch, 0)
    if D is not None:
        y = y + D.to(cdt)[None, :, :, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(cdt))
    out = y.to(in_dtype)
    if return_last_state:
        return out, h
    return out
