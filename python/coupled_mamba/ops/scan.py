"""The public entry of the fused coupled selective scan: :func:`coupled_selective_scan` and the
autograd Function :class:`CoupledSelectiveScanFn` (for code written against mamba-ssm's
``SelectiveScanFn``). Both parse the coupling once and call the custom op, which validates."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import custom_ops, library, validation
from .coupling import Coupling, parse_coupling


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _op_coupling(coupling: Coupling, u) -> tuple:
    """(kind code, alpha, W) for the op."""
    parsed = parse_coupling(coupling, validation.check_u(u))
    return library.kind_code(parsed.kind), parsed.alpha, parsed.W


def coupled_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    coupling: Coupling = "mean",
    initial_state: Optional[Tensor] = None,
    return_last_state: bool = False,
    lengths: Optional[Tensor] = None,
):
    """Fused coupled selective scan (docs/coupled-scan.md).

    Shapes: u, delta, z (Bt, M, D, L); A (M, D, N); B, C (Bt, M, N, L); D, delta_bias (M, D);
    initial_state (Bt, M, D, N); lengths (Bt,) int32/int64 with 0 <= lengths[b] <= L. ``coupling``
    is "sum" (the paper's Eq. 6; grows like M^L, overflows float32 near L = 80 for M = 3 at small
    dt), "mean" (bounded), "none" (M independent scans) or an (M, M) tensor W (gets a gradient).
    With ``lengths``, sample b is scanned over its first lengths[b] steps only: ``out`` is 0 after
    them, ``last_state`` is the state after its last valid step, and gradients there are 0.
    Returns ``out`` (u's dtype), or ``(out, last_state)`` with last_state (Bt, M, D, N) in float32
    (float64 for float64 inputs) when ``return_last_state``. NaN and Inf in the inputs propagate
    to the outputs; they are not checked for.
    """
    validation.check_tensor_types(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                                  initial_state=initial_state, lengths=lengths)
    kind, alpha, W = _op_coupling(coupling, u)
    save = _needs_grad(u, delta, A, B, C, D, z, delta_bias, W, initial_state)
    out, last, _ = torch.ops.coupled_mamba.scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), kind, alpha, W, initial_state, lengths, save)
    return (out, last) if return_last_state else out


class CoupledSelectiveScanFn(torch.autograd.Function):
    """``CoupledSelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling,
    initial_state, return_last_state, lengths)``: the same computation as
    :func:`coupled_selective_scan` (positional arguments in the same order), as an autograd Function."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                coupling="mean", initial_state=None, return_last_state=False, lengths=None):
        validation.check_tensor_types(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                                      initial_state=initial_state, lengths=lengths)
        kind, alpha, W = _op_coupling(coupling, u)
        out, last, ck = torch.ops.coupled_mamba.scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), kind, alpha, W, initial_state, lengths,
            True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, W, initial_state, lengths, ck)
        ctx.flags = (bool(delta_softplus), kind, alpha)
        ctx.return_last_state = return_last_state
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, dlast=None):
        du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit = custom_ops.backward(
            ctx.saved_tensors, ctx.flags, dout, dlast if ctx.return_last_state else None)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dW, dinit, None, None
