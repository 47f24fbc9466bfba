"""The fused depthwise causal conv + SiLU of a Mamba block on the CPU, as the custom ops
``coupled_mamba::causal_conv_silu_fwd`` / ``_bwd`` (compiled library, coupled_scan/causal_conv.h).

    y[c, r, t] = silu(bias[c] + sum_j weight[c, j] * x[c, r, t - (k - 1) + j]),  x = 0 before t = 0

x and y are (channels, rows, L): the layer passes (M * E, batch, L), so every sample of a channel
shares its weight without the weight being repeated per sample (what a grouped conv1d over
M * E * batch channels needs), and the weight gradient is summed by one task per channel.
PyTorch's depthwise conv1d plus SiLU costs several times this in a training step on the CPU.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import library, settings

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def max_width() -> int:
    """The widest kernel the compiled library takes."""
    return int(library.extension().max_conv_width)


def supports(x: Tensor, width: int = 1) -> bool:
    """Whether the fused op takes x with a kernel of ``width``: a CPU tensor in float32 or
    float64 and 1 <= width <= max_width()."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and 1 <= width <= max_width()


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    if x.dim() != 3:
        raise ValueError(f"causal_conv_silu: x must be (channels, rows, L), got shape {tuple(x.shape)}")
    if not (x.device.type == "cpu" and x.dtype in _DTYPES):
        raise ValueError(f"causal_conv_silu: x must be a float32 or float64 CPU tensor, got {x.dtype} on {x.device}")
    C = x.shape[0]
    widest = max_width() if x.device.type != "meta" else 16
    if weight.dim() != 2 or weight.shape[0] != C or not 1 <= weight.shape[1] <= widest:
        raise ValueError(f"causal_conv_silu: weight must be ({C}, k) with 1 <= k <= {widest}, "
                         f"got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"causal_conv_silu: bias must be ({C},), got shape {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"causal_conv_silu: {name} must be {x.dtype} on {x.device} like x, "
                             f"got {t.dtype} on {t.device}")


def _call(x: Tensor, weight: Tensor, bias: Optional[Tensor]):
    ext = library.extension()
    c = ext.ConvCall()
    c.channels, c.rows, c.length = x.shape
    c.width = weight.shape[1]
    c.dtype = getattr(ext.DType, _DTYPES[x.dtype])
    c.num_threads = settings.get_num_threads()
    c.x, c.weight = x.data_ptr(), weight.data_ptr()
    c.bias = bias.data_ptr() if bias is not None else 0
    return c


@torch.library.custom_op("coupled_mamba::causal_conv_silu_fwd", mutates_args=())
def causal_conv_silu_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """y = silu(causal depthwise conv(x)); all inputs contiguous."""
    _check(x, weight, bias)
    y = torch.empty_like(x)
    c = _call(x, weight, bias)
    c.y = y.data_ptr()
    library.extension().conv_forward_cpu(c)
    return y


@causal_conv_silu_fwd.register_fake
def _fwd_fake(x, weight, bias):
    return torch.empty_like(x)


@torch.library.custom_op("coupled_mamba::causal_conv_silu_bwd", mutates_args=())
def causal_conv_silu_bwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], dy: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); dbias is empty without a bias."""
    _check(x, weight, bias)
    dy = dy.to(x.dtype).contiguous()
    dx, dw = torch.empty_like(x), torch.empty_like(weight)
    db = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    c = _call(x, weight, bias)
    c.dy, c.dx, c.dweight = dy.data_ptr(), dx.data_ptr(), dw.data_ptr()
    c.dbias = db.data_ptr() if bias is not None else 0
    library.extension().conv_backward_cpu(c)
    return dx, dw, db


@causal_conv_silu_bwd.register_fake
def _bwd_fake(x, weight, bias, dy):
    return torch.empty_like(x), torch.empty_like(weight), (torch.empty_like(bias) if bias is not None
                                                          else x.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = torch.ops.coupled_mamba.causal_conv_silu_bwd(x, weight, bias, dy)
    return dx, dw, (db if bias is not None else None)


causal_conv_silu_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_conv_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """silu(causal depthwise conv) of x (channels, rows, L) with weight (channels, k) and bias
    (channels,); CPU, float32 or float64 (see :func:`supports`)."""
    return torch.ops.coupled_mamba.causal_conv_silu_fwd(
        x.contiguous(), weight.contiguous(), bias.contiguous() if bias is not None else None)
