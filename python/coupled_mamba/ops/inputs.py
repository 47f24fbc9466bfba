"""Random inputs of the op, shared by the tests, the benchmarks and the tools.

Values are drawn, never zeros (zeros would hide outputs a kernel forgot to write), with dt around
softplus(-1) so that states decay at a realistic rate.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

SEQUENCE_INPUTS = ("u", "delta", "B", "C", "z")


def make_inputs(Bt: int, M: int, D: int, N: int, L: int, dtype: torch.dtype = torch.float32,
                optional: bool = True, initial_state: Optional[bool] = None, seed: int = 0,
                dt_shift: float = -1.0, requires_grad: bool = False, device=None) -> Dict[str, torch.Tensor]:
    """Keyword arguments of :func:`coupled_mamba.coupled_selective_scan` (no coupling).

    Sequence inputs take ``dtype``; parameters and the initial state take float64 for float64
    and float32 otherwise. ``optional`` adds D, z and delta_bias, and the initial state unless
    ``initial_state`` says otherwise.
    """
    g = torch.Generator().manual_seed(seed)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32

    def r(*shape, dt=dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dt)

    x = dict(
        u=r(Bt, M, D, L), delta=r(Bt, M, D, L, scale=0.5, shift=dt_shift),
        A=(-(0.5 + 1.5 * torch.rand(M, D, N, generator=g, dtype=torch.float64))).to(pdt),
        B=r(Bt, M, N, L), C=r(Bt, M, N, L),
    )
    if optional:
        x.update(D=r(M, D, dt=pdt), z=r(Bt, M, D, L), delta_bias=r(M, D, dt=pdt, scale=0.3))
    if initial_state if initial_state is not None else optional:
        x["initial_state"] = r(Bt, M, D, N, dt=pdt)
    return {k: v.to(device).requires_grad_(requires_grad) for k, v in x.items()}


def random_lengths(Bt: int, L: int, seed: int = 0, device=None) -> torch.Tensor:
    """(Bt,) int64 lengths in [0, L] that include 0, 1 and L whenever Bt >= 3."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (Bt,), generator=g)
    for i, v in enumerate((0, 1, L)[:Bt]):
        lengths[(i * 7) % Bt] = v
    return lengths.to(device)
