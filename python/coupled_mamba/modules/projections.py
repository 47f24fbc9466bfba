"""The projections of a Coupled Mamba layer's branch as autograd Functions that choose the layout
of every result and gradient, so nothing is transposed, copied or zero-filled between the
residual stream and the scan in either direction.

Everything is token-major: the residual stream is (M, rows, d_model) and the branch between the
projections (M, rows, channels), with rows = batch * L and the last axis contiguous. That is what
LayerNorm, the matmuls (x @ W^T), the step-major conv (ops/causal_conv.py) and the scan read
without copies: the scan takes the (batch, M, channels, L) views of these tensors as step-major
sequence tensors, loading one step's channels as whole vectors (docs/coupled-scan.md, "Strides"),
and writes its output and gradients in the same layouts.

- :class:`NormInProj`: per-modality LayerNorm (with its affine) and the input projection,
  u = LN(x) @ W_u^T and z = LN(x) @ W_z^T (+ bias), each (M, rows, E).
- :class:`SelectiveProj`: x_proj and dt_proj of the conv's output u (M, rows, E), giving the
  scan's delta (masked steps set to -inf), B and C; it also passes u itself on to the scan, so
  that u's two gradients (through x_proj and from the scan) are summed by the matmul (beta = 1)
  instead of by a separate add, and the gradient of x_proj's output is assembled without the
  zero-filled buffer that slicing it would cost.
- :class:`OutProjResidual`: x + y @ W^T (+ bias), (M, rows, d_model), the residual add done by the
  matmul itself (beta = 1).

All three run PyTorch's own kernels (native_layer_norm and its backward, mm / bmm); the layer uses
them on CPU tensors whose dtypes match (see :func:`takes`), and plain autograd ops elsewhere (CUDA,
autocast, mixed dtypes), which compute the same values.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor


def takes(x: Tensor, *params: Optional[Tensor]) -> bool:
    """Whether the Functions here run on x and these parameters: a CPU tensor in float32 or float64,
    parameters of the same dtype and device, and no autocast (its casts are not applied inside a
    Function)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return all(p is None or (p.dtype == x.dtype and p.device == x.device) for p in params)


class NormInProj(torch.autograd.Function):
    """u, z = split(LayerNorm_m(x[m]) @ W^T + bias) for every modality m.

    x (M, rows, d) contiguous; norm_weight, norm_bias (M, d); weight (M, 2E, d); bias (M, 2E) or
    None. Returns u and z, each (M, rows, E) contiguous. The gradient of x is (M, rows, d).
    """

    @staticmethod
    def forward(ctx, x: Tensor, norm_weight: Tensor, norm_bias: Tensor, weight: Tensor, bias: Optional[Tensor],
                eps: float):
        M, rows, d = x.shape
        E = weight.shape[1] // 2
        u = x.new_empty(M, rows, E)
        z = x.new_empty(M, rows, E)
        saved: List[Tensor] = []
        for m in range(M):
            xn, mean, rstd = torch.native_layer_norm(x[m], [d], norm_weight[m], norm_bias[m], eps)
            if bias is None:
                torch.mm(xn, weight[m, :E].t(), out=u[m])
                torch.mm(xn, weight[m, E:].t(), out=z[m])
            else:
                torch.addmm(bias[m, :E], xn, weight[m, :E].t(), out=u[m])
                torch.addmm(bias[m, E:], xn, weight[m, E:].t(), out=z[m])
            saved += [xn, mean, rstd]
        ctx.save_for_backward(x, norm_weight, norm_bias, weight, *saved)
        ctx.has_bias, ctx.eps = bias is not None, eps
        return u, z

    @staticmethod
    def backward(ctx, du: Optional[Tensor], dz: Optional[Tensor]):
        x, norm_weight, norm_bias, weight, *saved = ctx.saved_tensors
        M, rows, d = x.shape
        E = weight.shape[1] // 2
        du = torch.zeros(M, rows, E, dtype=x.dtype) if du is None else du.reshape(M, rows, E)
        dz = torch.zeros(M, rows, E, dtype=x.dtype) if dz is None else dz.reshape(M, rows, E)
        dx = torch.empty_like(x)
        dnorm_w, dnorm_b = torch.empty_like(norm_weight), torch.empty_like(norm_bias)
        dweight = torch.empty_like(weight)
        dxn = x.new_empty(rows, d)
        for m in range(M):
            xn, mean, rstd = saved[3 * m: 3 * m + 3]
            # d LN(x) = du W_u + dz W_z, (rows, d) as LayerNorm's backward reads it.
            torch.mm(du[m], weight[m, :E], out=dxn)
            dxn.addmm_(dz[m], weight[m, E:])
            torch.mm(du[m].t(), xn, out=dweight[m, :E])
            torch.mm(dz[m].t(), xn, out=dweight[m, E:])
            torch.ops.aten.native_layer_norm_backward.out(
                dxn, x[m], [d], mean, rstd, norm_weight[m], norm_bias[m], [True, True, True],
                out0=dx[m], out1=dnorm_w[m], out2=dnorm_b[m])
        dbias = torch.cat([du.sum(1), dz.sum(1)], dim=1) if ctx.has_bias else None
        return dx, dnorm_w, dnorm_b, dweight, dbias, None


class SelectiveProj(torch.autograd.Function):
    """u (M, rows, E) contiguous, x_proj weight (M, R + 2N, E), dt_proj weight (M, E, R), and
    minus_inf: None or a (M, rows, 1) tensor, -inf at masked steps and 0 elsewhere, with
    rows = batch * L. Returns (u, delta (M, rows, E) contiguous, B, C (M, rows, N) views of one
    (M, rows, R + 2N) buffer), delta before the scan's bias and softplus; masked steps get
    delta = -inf and no gradient.

    u's gradient is the scan's (the first output's) plus x_proj's; it is accumulated into the
    scan's gradient tensor in place, which this Function owns: the returned u goes to the scan
    and nowhere else.
    """

    @staticmethod
    def forward(ctx, u: Tensor, x_weight: Tensor, dt_weight: Tensor, minus_inf: Optional[Tensor]):
        R = dt_weight.shape[2]
        N = (x_weight.shape[1] - R) // 2
        x_dbl = torch.bmm(u, x_weight.transpose(1, 2))  # (M, rows, R + 2N)
        delta = torch.bmm(x_dbl[..., :R], dt_weight.transpose(1, 2))  # (M, rows, E)
        if minus_inf is not None:
            delta.add_(minus_inf)  # x + (-inf) = -inf, x + 0 = x
        ctx.save_for_backward(u, x_weight, dt_weight, x_dbl, minus_inf)
        return u, delta, x_dbl[..., R:R + N], x_dbl[..., R + N:]

    @staticmethod
    def backward(ctx, du: Optional[Tensor], ddelta: Optional[Tensor], dB: Optional[Tensor], dC: Optional[Tensor]):
        u, x_weight, dt_weight, x_dbl, minus_inf = ctx.saved_tensors
        M, rows, E = u.shape
        R = dt_weight.shape[2]
        N = (x_weight.shape[1] - R) // 2
        dx_dbl = u.new_empty(M, rows, R + 2 * N)
        if ddelta is None:
            dx_dbl[..., :R].zero_()
            ddt_weight = torch.zeros_like(dt_weight)
        else:
            ddelta = ddelta.reshape(M, rows, E)
            if minus_inf is not None:
                # Masked steps get no gradient. The scan's is already 0 there (its softplus slope at
                # -inf is 0); the product also zeroes any finite value, in place on the gradient the
                # scan made for this Function alone (a multiply: several times cheaper than a where).
                ddelta = ddelta.mul_((minus_inf == 0).to(ddelta.dtype))
            dx_dbl[..., :R].copy_(torch.bmm(ddelta, dt_weight))
            ddt_weight = torch.bmm(ddelta.transpose(1, 2), x_dbl[..., :R])
        for cols, g in ((slice(R, R + N), dB), (slice(R + N, R + 2 * N), dC)):
            if g is None:
                dx_dbl[..., cols].zero_()
            else:
                dx_dbl[..., cols].copy_(g.reshape(M, rows, N))
        dx_weight = torch.bmm(dx_dbl.transpose(1, 2), u)
        if du is None:
            du = torch.bmm(dx_dbl, x_weight)
        else:
            du = du.reshape(M, rows, E).baddbmm_(dx_dbl, x_weight)
        return du, dx_weight, ddt_weight, None


class OutProjResidual(torch.autograd.Function):
    """residual + y @ W^T (+ bias) for every modality: y (M, rows, E), weight (M, d, E), bias (M, d)
    or None, residual (M, rows, d) contiguous; returns (M, rows, d). The gradient of y is
    (M, rows, E) contiguous."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Tensor):
        out = torch.baddbmm(residual, y, weight.transpose(1, 2))
        if bias is not None:
            out.add_(bias[:, None, :])
        ctx.save_for_backward(y, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        y, weight = ctx.saved_tensors
        dy = torch.bmm(dout, weight)  # (M, rows, E)
        dweight = torch.bmm(dout.transpose(1, 2), y)  # (M, d, E)
        dbias = dout.sum(1) if ctx.has_bias else None
        return dy, dweight, dbias, dout
