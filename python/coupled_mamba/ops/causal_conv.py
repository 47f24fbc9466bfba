"""The fused depthwise causal conv + SiLU of a Mamba block on the CPU, as the custom ops
``coupled_mamba::causal_conv_silu_fwd`` / ``_bwd`` (compiled library, coupled_scan/causal_conv.h),
and for step-major x (G, rows, L, C) ``coupled_mamba::causal_conv_silu_steps_fwd`` / ``_bwd``
(:func:`causal_conv_silu_steps`).

    y[c, r, t] = silu(bias[c] + sum_j weight[c, j] * x[c, r, t - (k - 1) + j]),  x = 0 before t = 0

For the row-major op x and y are (channels, rows, L): a channel-major layer (autocast, mixed
dtypes) passes (M * E, batch, L), so every sample of a channel shares its weight without the weight
being repeated per sample (what a grouped conv1d over M * E * batch channels needs), and the weight
gradient is summed by one task per channel. The step-major op takes the CPU layer's token-major
(M, batch, L, E) as it is.
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
    return library.max_conv_width()


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


def _call(x: Tensor, weight: Tensor, bias: Optional[Tensor], step_major: bool = False):
    """The library call for x (channels, rows, L), or with step_major for x (G, rows, L, C)."""
    ext = library.extension()
    c = ext.ConvCall()
    if step_major:
        G, rows, L, C = x.shape
        c.channels, c.rows, c.length, c.step_major_groups = G * C, rows, L, G
    else:
        c.channels, c.rows, c.length = x.shape
    c.width = weight.shape[1]
    c.dtype = getattr(ext.DType, _DTYPES[x.dtype])
    c.num_threads = settings.get_num_threads()
    c.x, c.weight = x.data_ptr(), weight.data_ptr()
    c.bias = bias.data_ptr() if bias is not None else 0
    return c


def _run_backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], dy: Tensor,
                  step_major: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) from the library for checked, contiguous inputs (dy is made so); dbias is
    empty without a bias."""
    dy = dy.to(x.dtype).contiguous()
    dx = settings.poisoned(torch.empty(x.shape, dtype=x.dtype))
    dw = settings.poisoned(torch.empty(weight.shape, dtype=x.dtype))
    db = settings.poisoned(torch.empty(bias.shape, dtype=x.dtype)) if bias is not None else x.new_empty((0,))
    c = _call(x, weight, bias, step_major)
    c.dy, c.dx, c.dweight = dy.data_ptr(), dx.data_ptr(), dw.data_ptr()
    c.dbias = db.data_ptr() if bias is not None else 0
    library.extension().conv_backward_cpu(c)
    return dx, dw, db


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
    return _run_backward(x, weight, bias, dy, step_major=False)


@causal_conv_silu_bwd.register_fake
def _bwd_fake(x, weight, bias, dy):
    return torch.empty_like(x), torch.empty_like(weight), (torch.empty_like(bias) if bias is not None
                                                          else x.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _backward_through(bwd_op):
    """The autograd formula of a forward op whose gradients bwd_op(x, weight, bias, dy) gives."""
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = bwd_op(x, weight, bias, dy)
        return dx, dw, (db if bias is not None else None)
    return backward


causal_conv_silu_fwd.register_autograd(_backward_through(torch.ops.coupled_mamba.causal_conv_silu_bwd),
                                       setup_context=_setup_context)


def causal_conv_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """silu(causal depthwise conv) of x (channels, rows, L) with weight (channels, k) and bias
    (channels,); CPU, float32 or float64 (see :func:`supports`)."""
    return torch.ops.coupled_mamba.causal_conv_silu_fwd(
        x.contiguous(), weight.contiguous(), bias.contiguous() if bias is not None else None)


# ---- Step-major layout: x (G, rows, L, C), channel (g, e) with weight[g * C + e]
#
# For a layer whose activations are token-major ((M, batch, L, E) with E contiguous): the library
# reads them in place (CausalConvArgs::step_major_groups), with no transposing copy either way.

def _check_steps(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    name = "causal_conv_silu_steps"
    if not isinstance(x, Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be a 4-d tensor (G, rows, L, C), got {got}")
    if x.device.type != "cpu" or x.dtype not in _DTYPES:
        raise ValueError(f"{name}: x must be a float32 or float64 CPU tensor, got {x.dtype} on {x.device}")
    G, _, _, C = x.shape
    widest = max_width()
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[0] != G * C \
            or not 1 <= weight.shape[1] <= widest:
        got = f"shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{name}: weight must be (G * C, k) = ({G * C}, k) with 1 <= k <= {widest} "
                         f"for x of shape {tuple(x.shape)}, got {got}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (G * C,)):
        got = f"shape {tuple(bias.shape)}" if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"{name}: bias must be (G * C,) = ({G * C},) or None, got {got}")
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name}: {what} must be {x.dtype} on {x.device} like x, got {t.dtype} on {t.device}")


@torch.library.custom_op("coupled_mamba::causal_conv_silu_steps_fwd", mutates_args=())
def causal_conv_silu_steps_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """y (G, rows, L, C) = silu(causal depthwise conv over L of x (G, rows, L, C)); y contiguous."""
    _check_steps(x, weight, bias)
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    y = settings.poisoned(torch.empty(x.shape, dtype=x.dtype))
    c = _call(x, weight, bias, step_major=True)
    c.y = y.data_ptr()
    library.extension().conv_forward_cpu(c)
    return y


@causal_conv_silu_steps_fwd.register_fake
def _steps_fwd_fake(x, weight, bias):
    _check_steps(x, weight, bias)
    return x.new_empty(x.shape)


@torch.library.custom_op("coupled_mamba::causal_conv_silu_steps_bwd", mutates_args=())
def causal_conv_silu_steps_bwd(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                               dy: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of causal_conv_silu_steps_fwd, all contiguous; dbias is empty
    without a bias."""
    _check_steps(x, weight, bias)
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"causal_conv_silu_steps: dy must have x's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    return _run_backward(x, weight, bias, dy, step_major=True)


@causal_conv_silu_steps_bwd.register_fake
def _steps_bwd_fake(x, weight, bias, dy):
    _check_steps(x, weight, bias)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), (bias.new_empty(bias.shape) if bias is not None
                                                                  else x.new_empty((0,)))


causal_conv_silu_steps_fwd.register_autograd(
    _backward_through(torch.ops.coupled_mamba.causal_conv_silu_steps_bwd), setup_context=_setup_context)


def causal_conv_silu_steps(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """silu(causal depthwise conv over time) of a step-major x (G, rows, L, C): channel (g, e)
    uses weight[g * C + e] (weight (G * C, k), bias (G * C,)); y has x's shape, contiguous.
    CPU, float32 or float64, 1 <= k <= max_width(). A non-contiguous x is made contiguous."""
    return torch.ops.coupled_mamba.causal_conv_silu_steps_fwd(
        x.contiguous() if isinstance(x, Tensor) else x,
        weight.contiguous() if isinstance(weight, Tensor) else weight,
        bias.contiguous() if isinstance(bias, Tensor) else bias)
