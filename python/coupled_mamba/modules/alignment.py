"""Bringing modalities of different lengths to one time axis.

Coupling exchanges state between modalities at every time step, so all M sequences must share a
time axis. Two ways (docs/model.md, "The model"):

- "resample" (default): each sample's valid part of each modality is divided into L equal bins
  and every bin is the average of the input over it (steps cut by a bin edge count in proportion
  to the part inside). Every output step is valid, whatever the input length. A valid part
  shorter than L is stretched (piecewise constant). The authors' code did this with L = 50.
- "pad": every modality is right-padded to the longest one, L = min(max_m T_m, seq_len), and a
  (batch, M, L) mask marks the valid steps. Nothing is averaged away; the model must respect the
  mask. A recording longer than seq_len keeps its first seq_len steps (the rest is never read), at
  training and evaluation alike, so seq_len bounds the scanned length (and the cost) whatever the
  data. The batch itself comes padded only to its own longest recording
  (:meth:`coupled_mamba.data.MultimodalDataset.batch`), so L is often below seq_len.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

ALIGN_MODES = ("resample", "pad")


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch,) valid lengths -> (batch, max_len) bool mask, True at steps t < length."""
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


def resample_to_bins(x: torch.Tensor, num_bins: int, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Average each sample's valid part x[b, :lengths[b]] over ``num_bins`` equal bins.

    x: (batch, T, d); lengths: (batch,) int, None = all T. Returns (batch, num_bins, d) in x's
    dtype (computed in float32 at least). Bin j of a sample with n valid steps covers
    [j n / L, (j + 1) n / L); with the input read as piecewise constant in time, the bin value is
    its exact mean, taken as a difference of the running integral. A sample with n = 0 gives zeros.
    Values past a sample's length are never read (they may be anything finite or not).
    """
    Bt, T, d = x.shape
    L = num_bins
    if lengths is None and T == L:
        return x  # already aligned: the bins are the steps
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    if lengths is None:
        n = torch.full((Bt,), T, device=x.device, dtype=torch.long)
    else:
        n = lengths.to(device=x.device, dtype=torch.long).clamp(0, T)
    if T == 0:
        return x.new_zeros(Bt, L, d)
    xf = x.to(cdt).masked_fill(~lengths_to_mask(n, T)[..., None], 0.0)
    integral = torch.cat([xf.new_zeros(Bt, 1, d), xf.cumsum(dim=1)], dim=1)  # (B, T + 1, d)
    # Bin edges in input steps, in float64 so edges that are whole steps come out exact.
    edges = torch.arange(L + 1, device=x.device, dtype=torch.float64)[None, :] * n[:, None].double() / L
    idx = edges.floor().long().clamp(max=T - 1)  # step containing the edge (edge = T: last step, frac 1)
    frac = (edges - idx.double()).to(cdt)[..., None]
    gather = lambda t: torch.gather(t, 1, idx[..., None].expand(-1, -1, d))  # noqa: E731
    at_edges = gather(integral) + frac * gather(xf)  # integral of x from 0 to each edge
    width = (n.to(cdt) / L).clamp_min(torch.finfo(cdt).tiny)[:, None, None]
    out = (at_edges[:, 1:] - at_edges[:, :-1]) / width
    return out.masked_fill((n == 0)[:, None, None], 0.0).to(x.dtype)


def align_modalities(
    xs: Sequence[torch.Tensor],
    lengths: Optional[Sequence[Optional[torch.Tensor]]] = None,
    mode: str = "resample",
    seq_len: int = 50,
) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Bring M sequences (batch, T_m, d_m) to one length L.

    lengths: None or a list of M (batch,) int tensors (or None entries = all T_m valid).
    mode "resample": L = seq_len; every step of a non-empty modality is valid, all steps of an
    empty one (length 0) are masked.
    mode "pad": L = min(max_m T_m, seq_len); each modality keeps its first L steps (lengths are
    clamped to L) and is right-padded to L; steps past a sample's length are zeroed and masked.
    The mask is None when no lengths are given and, for "pad", every T_m is at least L (every step
    is valid then). Whether a mask is needed never depends on tensor values, so the function traces
    under torch.compile without a graph break.
    Returns (list of M tensors (batch, L, d_m), mask (batch, M, L) bool or None).
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"align: expected one of {ALIGN_MODES}, got {mode!r}")
    M = len(xs)
    if lengths is None:
        lengths = [None] * M
    if len(lengths) != M:
        raise ValueError(f"got {M} modalities but {len(lengths)} length tensors")
    Bt = xs[0].shape[0]
    device = xs[0].device

    if mode == "resample":
        out = [resample_to_bins(x, seq_len, n) for x, n in zip(xs, lengths)]
        if all(n is None for n in lengths):
            return out, None
        present = torch.stack(
            [(n.to(device) > 0) if n is not None else torch.ones(Bt, dtype=torch.bool, device=device) for n in lengths], 1
        )
        return out, present[..., None].expand(Bt, M, seq_len).clone()

    L = min(max(x.shape[1] for x in xs), seq_len)
    out, masks, need_mask = [], [], False
    for x, given in zip(xs, lengths):
        x = x[:, :L]  # a longer recording keeps its first seq_len steps
        T = x.shape[1]
        n = torch.full((Bt,), T, dtype=torch.long, device=device) if given is None else given.to(device).clamp(0, T)
        need_mask = need_mask or T < L or given is not None
        mask = lengths_to_mask(n, L)
        if T < L:
            x = torch.nn.functional.pad(x, (0, 0, 0, L - T))
        # Padded garbage (even NaN) never enters; one where is a single pass (masked_fill copies, then fills).
        out.append(torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)))
        masks.append(mask)
    return out, (torch.stack(masks, dim=1) if need_mask else None)
