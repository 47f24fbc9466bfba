"""Op-level comparison for `bench scan`: the fused op with coupling "none" (M independent Mamba
scans) against the selective scan of the ``mambapy`` package (pure PyTorch, parallel scan), the
Mamba that CPU users without CUDA pick today. ``mambapy`` is never a dependency: without it the
comparison is skipped with a note.

Same inputs for both: the op's (Bt, M, D, L) tensors with D, z, delta_bias and softplus; mambapy
sees the M modalities as Bt * M independent sequences in its own (batch, L, channels) layout
(transposed before timing, so neither side pays for the other's layout), with each modality's A,
D and delta_bias. The mambapy side is its ``selective_scan`` (exp(dt A), dt B x, ``pscan``,
C h + D x) plus the softplus and the SiLU gate that its Mamba block applies around it.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F


def unavailable_reason() -> Optional[str]:
    """None when mambapy's parallel scan is importable, else why not."""
    try:
        from mambapy.pscan import pscan  # noqa: F401
    except ImportError as e:
        return f"mambapy is not importable ({e}); pip install mambapy to compare against it"
    return None


def to_mambapy(x: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The op's inputs in mambapy's layout, as new leaf tensors: sequences (Bt * M, L, R); A,
    D and delta_bias stay per modality (M, ...) and are expanded over the batch inside the scan."""
    grad = x["u"].requires_grad

    def seq(t):  # (Bt, M, R, L) -> (Bt * M, L, R)
        Bt, M, R, L = t.shape
        return t.detach().reshape(Bt * M, R, L).transpose(1, 2).contiguous().requires_grad_(grad)

    out = {k: seq(x[k]) for k in ("u", "delta", "B", "C", "z")}
    out.update({k: x[k].detach().clone().requires_grad_(grad) for k in ("A", "D", "delta_bias")})
    return out


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    """y * silu(z) with y = mambapy's selective scan of softplus(delta + delta_bias); sequences
    (Bt * M, L, R), A (M, D, N), D and delta_bias (M, D). Returns (Bt * M, L, D)."""
    from mambapy.pscan import pscan

    BM, M = u.shape[0], A.shape[0]
    Bt = BM // M
    A_b = A.unsqueeze(0).expand(Bt, *A.shape).reshape(BM, 1, *A.shape[1:])  # (BM, 1, D, N)
    D_b = D.unsqueeze(0).expand(Bt, *D.shape).reshape(BM, 1, D.shape[-1])
    bias_b = delta_bias.unsqueeze(0).expand(Bt, *delta_bias.shape).reshape(BM, 1, delta_bias.shape[-1])
    dt = F.softplus(delta + bias_b)
    deltaA = torch.exp(dt.unsqueeze(-1) * A_b)  # (BM, L, D, N)
    BX = dt.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)
    hs = pscan(deltaA, BX)
    y = (hs @ C.unsqueeze(-1)).squeeze(3) + D_b * u
    return y * F.silu(z)


def compare(sizes: Dict[str, dict], make_inputs, timeit, repeats: int, min_time: float,
            mambapy_repeats: int) -> List[dict]:
    """Rows (size, mode, fused_ms, mambapy_ms, speedup, max relative difference of the outputs)."""
    from coupled_mamba import coupled_selective_scan

    rows = []
    for name, size in sizes.items():
        for mode in ("fwd", "fwd+bwd"):
            grad = mode == "fwd+bwd"
            x = make_inputs(**size, requires_grad=grad)
            xp = to_mambapy(x)

            def ours():
                out = coupled_selective_scan(**x, delta_softplus=True, coupling="none")
                if grad:
                    out.backward(torch.ones_like(out))
                    for v in x.values():
                        v.grad = None
                return out

            def theirs():
                out = mambapy_scan(**xp)
                if grad:
                    out.backward(torch.ones_like(out))
                    for v in xp.values():
                        v.grad = None
                return out

            with torch.set_grad_enabled(grad):
                fused_s = timeit(ours, repeats, min_time)
                mambapy_s = timeit(theirs, mambapy_repeats, 0.0)
                with torch.no_grad():
                    a = coupled_selective_scan(**x, delta_softplus=True, coupling="none")
                    b = mambapy_scan(**xp)
                Bt, M, Dch, L = a.shape
                b = b.reshape(Bt, M, L, Dch).transpose(2, 3)
                diff = float((a - b).norm() / b.norm().clamp_min(1e-30))
            rows.append(dict(size=name, **size, mode=mode, fused_ms=fused_s * 1e3, mambapy_ms=mambapy_s * 1e3,
                             speedup=mambapy_s / fused_s, rel_diff=diff))
    return rows
