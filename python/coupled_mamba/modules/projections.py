"""The projections of a Coupled Mamba layer's branch as autograd Functions that choose the layout
of every result and gradient, so nothing is transposed or zero-filled between the residual stream
and the scan in either direction.

The residual stream of a layer is (M, rows, d_model) with rows = batch * L (d_model contiguous,
what LayerNorm reads); the branch between the projections is (M, channels, rows) (time
contiguous, what the conv and the scan read). A matmul between the two layouts has one operand
transposed; autograd's generic bmm backward would then hand one gradient back transposed, and the
next op would copy it. Here each backward writes its gradients in the layout of their input.

- :class:`NormInProj`: per-modality LayerNorm (with its affine) and the input projection,
  u = W_u @ LN(x)^T and z = W_z @ LN(x)^T (+ bias), each (M, E, rows).
- :class:`SelectiveProj`: x_proj and dt_proj of the conv's output u (M, E, rows), giving the
  scan's delta (masked steps set to -inf), B and C; it also passes u itself on to the scan, so
  that u's two gradients (through x_proj and from the scan) are summed by the matmul (beta = 1)
  instead of by a separate add, and the gradient of x_proj's output is assembled without the
  zero-filled buffer that slicing it would cost.
- :class:`OutProjResidual`: x + out_proj(y), (M, rows, d_model), the residual add done by the
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
    """u, z = split(W @ LayerNorm_m(x[m])^T + bias) for every modality m.

    x (M, rows, d) contiguous; norm_weight, norm_bias (M, d); weight (M, 2E, d); bias (M, 2E) or
    None. Returns u and z, each (M, E, rows) contiguous. The gradient of x is (M, rows, d).
    """

    @staticmethod
    def forward(ctx, x: Tensor, norm_weight: Tensor, norm_bias: Tensor, weight: Tensor, bias: Optional[Tensor],
                eps: float):
        M, rows, d = x.shape
        E = weight.shape[1] // 2
        u = x.new_empty(M, E, rows)
        z = x.new_empty(M, E, rows)
        saved: List[Tensor] = []
        for m in range(M):
            xn, mean, rstd = torch.native_layer_norm(x[m], [d], norm_weight[m], norm_bias[m], eps)
            xt = xn.t()
            if bias is None:
                torch.mm(weight[m, :E], xt, out=u[m])
                torch.mm(weight[m, E:], xt, out=z[m])
            else:
                torch.addmm(bias[m, :E, None], weight[m, :E], xt, out=u[m])
                torch.addmm(bias[m, E:, None], weight[m, E:], xt, out=z[m])
            saved += [xn, mean, rstd]
        ctx.save_for_backward(x, norm_weight, norm_bias, weight, *saved)
        ctx.has_bias, ctx.eps = bias is not None, eps
        return u, z

    @staticmethod
    def backward(ctx, du: Optional[Tensor], dz: Optional[Tensor]):
        x, norm_weight, norm_bias, weight, *saved = ctx.saved_tensors
        M, rows, d = x.shape
        E = weight.shape[1] // 2
        du = torch.zeros(M, E, rows, dtype=x.dtype) if du is None else du
        dz = torch.zeros(M, E, rows, dtype=x.dtype) if dz is None else dz
        dx = torch.empty_like(x)
        dnorm_w, dnorm_b = torch.empty_like(norm_weight), torch.empty_like(norm_bias)
        dweight = torch.empty_like(weight)
        dxn = x.new_empty(rows, d)
        for m in range(M):
            xn, mean, rstd = saved[3 * m: 3 * m + 3]
            # d LN(x)^T = W_u^T du + W_z^T dz, written (rows, d) as LayerNorm's backward reads it.
            torch.mm(du[m].t(), weight[m, :E], out=dxn)
            dxn.addmm_(dz[m].t(), weight[m, E:])
            torch.mm(du[m], xn, out=dweight[m, :E])
            torch.mm(dz[m], xn, out=dweight[m, E:])
            torch.ops.aten.native_layer_norm_backward.out(
                dxn, x[m], [d], mean, rstd, norm_weight[m], norm_bias[m], [True, True, True],
                out0=dx[m], out1=dnorm_w[m], out2=dnorm_b[m])
        dbias = torch.cat([du.sum(-1), dz.sum(-1)], dim=1) if ctx.has_bias else None
        return dx, dnorm_w, dnorm_b, dweight, dbias, None


class SelectiveProj(torch.autograd.Function):
    """u (M, E, rows) contiguous, x_proj weight (M, R + 2N, E), dt_proj weight (M, E, R), and
    minus_inf: None or a (M, 1, batch, L) tensor, -inf at masked steps and 0 elsewhere, with
    rows = batch * L. Returns (u, delta (M, E, rows) contiguous, B, C (M, N, rows) views of one
    buffer), delta before the scan's bias and softplus; masked steps get delta = -inf and no
    gradient.

    u's gradient is the scan's (the first output's) plus x_proj's; it is accumulated into the
    scan's gradient tensor in place, which this Function owns: the returned u goes to the scan
    and nowhere else.
    """

    @staticmethod
    def forward(ctx, u: Tensor, x_weight: Tensor, dt_weight: Tensor, minus_inf: Optional[Tensor]):
        M, E, rows = u.shape
        R = dt_weight.shape[2]
        N = (x_weight.shape[1] - R) // 2
        x_dbl = torch.bmm(x_weight, u)  # (M, R + 2N, rows)
        delta = torch.bmm(dt_weight, x_dbl[:, :R])
        if minus_inf is not None:
            delta.view(M, E, minus_inf.shape[2], -1).add_(minus_inf)  # x + (-inf) = -inf, x + 0 = x
        ctx.save_for_backward(u, x_weight, dt_weight, x_dbl, minus_inf)
        return u, delta, x_dbl[:, R:R + N], x_dbl[:, R + N:]

    @staticmethod
    def backward(ctx, du: Optional[Tensor], ddelta: Optional[Tensor], dB: Optional[Tensor], dC: Optional[Tensor]):
        u, x_weight, dt_weight, x_dbl, minus_inf = ctx.saved_tensors
        M, E, rows = u.shape
        R = dt_weight.shape[2]
        N = (x_weight.shape[1] - R) // 2
        dx_dbl = u.new_empty(M, R + 2 * N, rows)
        if ddelta is None:
            dx_dbl[:, :R].zero_()
            ddt_weight = torch.zeros_like(dt_weight)
        else:
            if minus_inf is not None:
                # Masked steps get no gradient. The scan's is already 0 there (its softplus slope at
                # -inf is 0); the product also zeroes any finite value, in place on the gradient the
                # scan made for this Function alone (a multiply: several times cheaper than a where).
                ddelta = ddelta.reshape(M, E, rows).mul_((minus_inf.view(M, 1, rows) == 0).to(ddelta.dtype))
            for m in range(M):
                torch.mm(dt_weight[m].t(), ddelta[m], out=dx_dbl[m, :R])
            ddt_weight = torch.bmm(ddelta, x_dbl[:, :R].transpose(1, 2))
        for rows_slice, g in ((slice(R, R + N), dB), (slice(R + N, R + 2 * N), dC)):
            if g is None:
                dx_dbl[:, rows_slice].zero_()
            else:
                dx_dbl[:, rows_slice].copy_(g)
        dx_weight = torch.bmm(dx_dbl, u.transpose(1, 2))
        x_weight_t = x_weight.transpose(1, 2)
        if du is None:
            du = torch.bmm(x_weight_t, dx_dbl)
        else:
            du = du.reshape(M, E, rows).baddbmm_(x_weight_t, dx_dbl)
        return du, dx_weight, ddt_weight, None


class OutProjResidual(torch.autograd.Function):
    """residual + y^T @ W^T (+ bias) for every modality: y (M, E, rows) with rows contiguous,
    weight (M, d, E), bias (M, d) or None, residual (M, rows, d) contiguous; returns (M, rows, d).
    The gradient of y is (M, E, rows) contiguous."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Tensor):
        out = torch.baddbmm(residual, y.transpose(1, 2), weight.transpose(1, 2))
        if bias is not None:
            out.add_(bias[:, None, :])
        ctx.save_for_backward(y, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        y, weight = ctx.saved_tensors
        dy = torch.bmm(weight.transpose(1, 2), dout.transpose(1, 2))  # (M, E, rows)
        dweight = torch.bmm(dout.transpose(1, 2), y.transpose(1, 2))  # (M, d, E)
        dbias = dout.sum(1) if ctx.has_bias else None
        return dy, dweight, dbias, dout
