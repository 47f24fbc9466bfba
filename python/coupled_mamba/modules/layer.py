"""One Coupled Mamba layer: M Mamba blocks, one per modality, whose scans run as one coupled call.

Algorithm 1 of the paper, per modality m (docs/model.md, "One block"):

    x' = LayerNorm(x^m);  u, z = in_proj(x');  u' = SiLU(causal depthwise conv(u))
    dt_r, B, C = x_proj(u');  delta = dt_proj(dt_r)
    y^m = coupled scan over all M modalities (one call);  out^m = out_proj(y^m * SiLU(z)) + x^m

Every block has its own parameters. They are stored stacked along a leading modality axis
(weight (M, out, in) and so on) so that the M blocks run as a handful of batched matmuls and one
conv instead of M small ones; ``param[m]`` is block m's parameter, and slicing the state
dict of an M-modality layer gives M single-modality layers (the tests rely on this).

Internally, on the CPU (float32 / float64, no autocast), the layer is token-major: the residual
stream is (M, batch * L, d_model) and every tensor of the branch (M, batch * L, channels), which
is what LayerNorm, the matmuls x @ W^T and the step-major conv + SiLU kernel (ops/causal_conv.py)
read and write without copies. The scan takes (batch, M, channels, L) views of them as step-major
sequence tensors (docs/coupled-scan.md, "Strides"), loading each step's channels as whole
vectors, and writes its output and gradients in the same layouts; the LayerNorm + input
projection, x_proj + dt_proj and the output projection + residual add are autograd Functions
(projections.py) that keep every gradient in its input's layout. So nothing is transposed or
copied between the projections and the scan in either direction. Elsewhere (CUDA, autocast,
mixed dtypes) the branch runs as plain autograd ops in the channel-major (M, channels, batch * L)
layout, which gives the CUDA kernels time-contiguous rows. The residual stream is
(M, batch, L, d_model) in both (:meth:`forward_modality_major`, what a CoupledMamba stack keeps
between its layers); :meth:`forward` takes and returns (batch, M, L, d_model) and pays one copy
each way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import causal_conv, coupled_scan_step, coupled_selective_scan
from . import projections
from .streaming import causal_conv_step

COUPLINGS = ("mean", "sum", "none", "learned")


def _masks_with_minus_inf(t: torch.Tensor) -> bool:
    """Whether masked steps reach the scan as delta = -inf (the CPU kernels' bias + softplus make
    that dt = 0 with no gradient) rather than as dt = 0 after a softplus in PyTorch."""
    return t.device.type == "cpu"


def resolve_dt_rank(dt_rank: Union[int, str, None], d_state: int) -> int:
    """dt_rank "auto"/None means ceil(d_state / 8): our reading of the paper's "Delta = d_state/8".

    (Mamba's own default, and the authors' code, use ceil(d_model / 16) / ceil(d_model / 8); pass
    an int to get those.)
    """
    if dt_rank is None or dt_rank == "auto":
        return math.ceil(d_state / 8)
    if isinstance(dt_rank, str):
        raise ValueError(f"dt_rank: expected an int, 'auto' or None, got {dt_rank!r}")
    return int(dt_rank)


@dataclass
class LayerCache:
    """Streaming state of one layer: the last d_conv - 1 conv inputs and the coupled SSM state."""

    conv_state: torch.Tensor  # (batch, M, E, d_conv - 1), float32, oldest input first
    ssm_state: torch.Tensor  # (batch, M, E, d_state), float32


class CoupledMambaLayer(nn.Module):
    """M Mamba blocks (one per modality, own parameters) coupled through one coupled scan.

    Args:
        d_model: width of the residual stream of every modality.
        n_modalities: M.
        d_state: SSM state size N.
        d_conv: kernel size of the depthwise causal conv.
        expand: inner width E = expand * d_model.
        dt_rank: rank of the delta projection; "auto" = ceil(d_state / 8) (see resolve_dt_rank).
        coupling: "mean" (default, W = 1/M, bounded), "sum" (the paper's Eq. 6, W = ones: the
            state grows like M^L and overflows float32 near L = 80 for M = 3, kept for fidelity),
            "none" (M independent Mamba blocks) or "learned" (W = softmax(logits, -1), row
            stochastic hence bounded, logits initialised to zero so training starts at "mean").
        dt_min, dt_max, dt_init_floor, dt_scale: Mamba's delta initialisation.
        conv_bias, bias: biases of the conv and of the in/out projections (Mamba: True, False).
        norm_eps: LayerNorm epsilon.

    Input and output: (batch, M, L, d_model). Parameters are always float32; run under
    torch.autocast for bf16/f16 compute.
    """

    def __init__(
        self,
        d_model: int,
        n_modalities: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Union[int, str, None] = "auto",
        coupling: str = "mean",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        device=None,
    ):
        super().__init__()
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling: expected one of {COUPLINGS}, got {coupling!r}")
        if d_conv < 1:
            raise ValueError("d_conv must be >= 1")
        M, E, N = n_modalities, expand * d_model, d_state
        R = resolve_dt_rank(dt_rank, d_state)
        self.d_model, self.n_modalities, self.d_state, self.d_conv = d_model, M, N, d_conv
        self.d_inner, self.dt_rank, self.coupling, self.norm_eps = E, R, coupling, norm_eps
        f32 = dict(device=device, dtype=torch.float32)

        self.norm_weight = nn.Parameter(torch.ones(M, d_model, **f32))
        self.norm_bias = nn.Parameter(torch.zeros(M, d_model, **f32))
        self.in_proj_weight = nn.Parameter(torch.empty(M, 2 * E, d_model, **f32))
        self.in_proj_bias = nn.Parameter(torch.empty(M, 2 * E, **f32)) if bias else None
        self.conv_weight = nn.Parameter(torch.empty(M, E, d_conv, **f32))
        self.conv_bias = nn.Parameter(torch.empty(M, E, **f32)) if conv_bias else None
        self.x_proj_weight = nn.Parameter(torch.empty(M, R + 2 * N, E, **f32))
        self.dt_proj_weight = nn.Parameter(torch.empty(M, E, R, **f32))
        self.dt_proj_bias = nn.Parameter(torch.empty(M, E, **f32))  # the scan's delta_bias
        self.A_log = nn.Parameter(torch.empty(M, E, N, **f32))
        self.D = nn.Parameter(torch.empty(M, E, **f32))
        self.out_proj_weight = nn.Parameter(torch.empty(M, d_model, E, **f32))
        self.out_proj_bias = nn.Parameter(torch.empty(M, d_model, **f32)) if bias else None
        self.coupling_logits = nn.Parameter(torch.zeros(M, M, **f32)) if coupling == "learned" else None
        # Mamba excludes these from weight decay; optimisers can read the flag.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._dt_init = (dt_min, dt_max, dt_init_floor, dt_scale)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation, applied to every block independently."""
        dt_min, dt_max, dt_init_floor, dt_scale = self._dt_init

        def linear_(weight, bias):  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1.0 / math.sqrt(weight.shape[-1])
            weight.uniform_(-bound, bound)
            if bias is not None:
                bias.uniform_(-bound, bound)

        self.norm_weight.fill_(1.0)
        self.norm_bias.zero_()
        linear_(self.in_proj_weight, self.in_proj_bias)
        linear_(self.conv_weight, self.conv_bias)  # depthwise conv: fan_in = d_conv
        linear_(self.x_proj_weight, None)
        linear_(self.out_proj_weight, self.out_proj_bias)
        # dt_proj: weight U(+-dt_rank^-0.5 * dt_scale); bias = softplus^-1(dt) with dt log-uniform
        # in [dt_min, dt_max], so the initial step sizes span two decades.
        std = self.dt_rank ** -0.5 * dt_scale
        self.dt_proj_weight.uniform_(-std, std)
        dt = torch.exp(
            torch.rand_like(self.dt_proj_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A = -[1, ..., N] for every channel, stored as log so A stays negative.
        N = self.d_state
        a = torch.arange(1, N + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(a).expand_as(self.A_log))
        self.D.fill_(1.0)
        if self.coupling_logits is not None:
            self.coupling_logits.zero_()  # softmax of zeros = mean coupling

    def coupling_weights(self) -> Union[str, torch.Tensor]:
        """What the scan gets as ``coupling``: the mode string, or for "learned" the (M, M)
        row-stochastic W = softmax(logits, -1) (a tensor, so the logits get a gradient)."""
        if self.coupling_logits is not None:
            return torch.softmax(self.coupling_logits.float(), dim=-1)
        return self.coupling

    def A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # One LayerNorm per modality: normalise, then that modality's affine.
        xn = F.layer_norm(x, (self.d_model,), eps=self.norm_eps)
        if x.dim() == 4:  # (batch, M, L, d)
            return xn * self.norm_weight[:, None] + self.norm_bias[:, None]
        return xn * self.norm_weight + self.norm_bias  # (batch, M, d)

    def allocate_cache(self, batch_size: int, device=None) -> LayerCache:
        device = device if device is not None else self.A_log.device
        M, E = self.n_modalities, self.d_inner
        return LayerCache(
            conv_state=torch.zeros(batch_size, M, E, self.d_conv - 1, device=device),
            ssm_state=torch.zeros(batch_size, M, E, self.d_state, device=device),
        )

    def forward(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, cache: Optional[LayerCache] = None
    ) -> torch.Tensor:
        """x: (batch, M, L, d_model) -> (batch, M, L, d_model).

        mask: optional (batch, M, L) bool, True at valid steps. A modality's masked steps get
        dt = 0 (state carried over unchanged into the coupling, no input, no decay), and the scan
        ends each sample at its last valid step (the op's ``lengths``), so the values at padded
        steps never change any output at a valid step, of any modality.
        cache: optional LayerCache; the layer starts from its conv and SSM state (so a long
        sequence can be processed in chunks) and leaves the state after the last step in it.
        """
        if x.dim() != 4 or x.shape[1] != self.n_modalities:
            raise ValueError(f"expected (batch, {self.n_modalities}, L, {self.d_model}), got input of shape {tuple(x.shape)}")
        return self.forward_modality_major(x.transpose(0, 1), mask, cache).transpose(0, 1).contiguous()

    def forward_modality_major(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, cache: Optional[LayerCache] = None
    ) -> torch.Tensor:
        """:meth:`forward` on the residual stream in the layout (M, batch, L, d_model), the one a
        stack keeps between its layers (mask and cache as in forward). Returns a contiguous
        (M, batch, L, d_model) tensor."""
        M, Bt, L, d = x.shape
        if M != self.n_modalities or d != self.d_model:
            raise ValueError(f"expected ({self.n_modalities}, batch, L, {self.d_model}), got input of shape {tuple(x.shape)}")
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        x = x.reshape(M, Bt * L, d)  # a copy only when x is not in this layout already
        fused = projections.takes(x, self.norm_weight, self.in_proj_weight, self.x_proj_weight, self.dt_proj_weight,
                                  self.out_proj_weight)
        if fused:
            u, z, delta, B, C, delta_bias, softplus = self._branch_tokens(x, Bt, L, mask, cache)
        else:
            u, z, delta, B, C, delta_bias, softplus = self._branch_channels(x, Bt, L, mask, cache)
        lengths = None
        if mask is not None:
            # The scan stops each sample after its last valid step of any modality: the padded
            # tail costs nothing and cannot change (or overflow) anything before it.
            steps = torch.arange(1, L + 1, device=mask.device)
            lengths = (mask.any(dim=1) * steps).amax(dim=-1) if L > 0 else mask.new_zeros(Bt, dtype=torch.long)

        # Views of the branch's tensors; the op reads their strides (docs/coupled-scan.md, "Strides").
        result = coupled_selective_scan(
            u,
            delta,
            self.A(),
            B,
            C,
            D=self.D,
            z=z,
            delta_bias=delta_bias,
            delta_softplus=softplus,
            coupling=self.coupling_weights(),
            initial_state=cache.ssm_state if cache is not None else None,
            return_last_state=cache is not None,
            lengths=lengths,
        )
        if cache is not None:
            y, last_state = result
            cache.ssm_state = last_state.detach().float()
        else:
            y = result
        if fused:  # (Bt, M, E, L) step-major, as u: a view of (M, rows, E)
            y = y.permute(1, 0, 3, 2).reshape(M, Bt * L, E)
            out = projections.OutProjResidual.apply(y, self.out_proj_weight, self.out_proj_bias, x)
        else:  # (Bt, M, E, L) time-contiguous, as u: a view of (M, E, rows)
            y = y.permute(1, 2, 0, 3).reshape(M, E, Bt * L)
            out = torch.bmm(y.transpose(1, 2), self.out_proj_weight.transpose(1, 2))
            if self.out_proj_bias is not None:
                out = out + self.out_proj_bias[:, None].to(out.dtype)
            out = out + x
        return out.view(M, Bt, L, d)

    def _branch_tokens(self, x: torch.Tensor, Bt: int, L: int, mask: Optional[torch.Tensor],
                       cache: Optional[LayerCache]):
        """The scan's inputs from x (M, rows, d) through the projection Functions (CPU, matching
        dtypes), token-major: every tensor is (M, rows, channels), passed to the scan as step-major
        (Bt, M, channels, L) views. Returns (u, z, delta, B, C, delta_bias, delta_softplus)."""
        M, E = self.n_modalities, self.d_inner
        u, z = projections.NormInProj.apply(
            x, self.norm_weight, self.norm_bias, self.in_proj_weight, self.in_proj_bias, self.norm_eps)
        u = self._conv_silu_tokens(u.view(M, Bt, L, E), cache).view(M, Bt * L, E)
        minus_inf = None
        if mask is not None:  # -inf at masked steps (see _mask_delta), in delta's layout
            minus_inf = torch.zeros(M, Bt, L, 1, dtype=u.dtype, device=u.device)
            minus_inf.masked_fill_(~mask.permute(1, 0, 2)[..., None], float("-inf"))
            minus_inf = minus_inf.view(M, Bt * L, 1)
        u, delta, B, C = projections.SelectiveProj.apply(u, self.x_proj_weight, self.dt_proj_weight, minus_inf)

        def view(t: torch.Tensor) -> torch.Tensor:  # (M, rows, C) -> (Bt, M, C, L), a view
            return t.view(M, Bt, L, t.shape[-1]).permute(1, 0, 3, 2)

        return view(u), view(z), view(delta), view(B), view(C), self.dt_proj_bias, True

    def _branch_channels(self, x: torch.Tensor, Bt: int, L: int, mask: Optional[torch.Tensor],
                         cache: Optional[LayerCache]):
        """The scan's inputs from x (M, rows, d) with plain autograd ops (CUDA, autocast, mixed
        dtypes), channel-major: every tensor is (M, channels, rows), passed to the scan as
        time-contiguous (Bt, M, channels, L) views. Returns (u, z, delta, B, C, delta_bias,
        delta_softplus)."""
        M, d = self.n_modalities, self.d_model
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        xn = F.layer_norm(x, (d,), eps=self.norm_eps) * self.norm_weight[:, None] + self.norm_bias[:, None]
        xn = xn.transpose(1, 2)  # (M, d, Bt * L), read transposed by the bmm
        # u and z as two bmm over halves of the weight: each result is a whole tensor, so the
        # backward gets no zero-filled (M, 2E, ...) slice gradient to assemble.
        u = torch.bmm(self.in_proj_weight[:, :E], xn)
        z = torch.bmm(self.in_proj_weight[:, E:], xn)
        del xn
        if self.in_proj_bias is not None:
            u = u + self.in_proj_bias[:, :E, None].to(u.dtype)
            z = z + self.in_proj_bias[:, E:, None].to(z.dtype)
        u = self._conv_silu(u.view(M, E, Bt, L), cache).view(M, E, Bt * L)
        x_dbl = torch.bmm(self.x_proj_weight, u)  # (M, R + 2N, Bt * L)
        delta = torch.bmm(self.dt_proj_weight, x_dbl[:, :R])
        B, C = x_dbl[:, R:R + N], x_dbl[:, R + N:]
        delta, delta_bias, softplus = self._mask_delta(delta.view(M, E, Bt, L), mask)

        def view(t: torch.Tensor) -> torch.Tensor:  # (M, C, Bt * L) -> (Bt, M, C, L), a view
            return t.reshape(M, t.shape[1], Bt, L).permute(2, 0, 1, 3)

        return view(u), view(z), view(delta), view(B), view(C), delta_bias, softplus

    def _mask_delta(self, delta: torch.Tensor, mask: Optional[torch.Tensor]):
        """delta (M, E, Bt, L) before bias and softplus -> (delta, delta_bias, delta_softplus) for
        the scan, with dt = 0 at the masked steps of mask (batch, M, L)."""
        if mask is None:
            return delta, self.dt_proj_bias, True
        mask = mask.permute(1, 0, 2)[:, None]  # (M, 1, Bt, L), delta's layout
        if _masks_with_minus_inf(delta):
            # Masked steps inside a sample get dt = 0 exactly (the modality's state is carried into
            # the coupling unchanged, without input or decay): their delta is -inf, and the CPU
            # kernels' softplus(-inf + bias) is exactly 0 with slope sigmoid(-inf) = 0, so those
            # steps get no gradient either. In place on the bmm's result, in its layout.
            return delta.masked_fill_(~mask, float("-inf")), self.dt_proj_bias, True
        # Elsewhere bias and softplus are applied here and masked steps get dt = 0 directly.
        dt = F.softplus(delta.float() + self.dt_proj_bias[..., None, None])
        return torch.where(mask, dt, 0.0).to(delta.dtype), None, False

    def _conv_silu_tokens(self, u: torch.Tensor, cache: Optional[LayerCache]) -> torch.Tensor:
        """SiLU of the depthwise causal conv of u (M, Bt, L, E), token-major; the result is
        (M, Bt, L, E) contiguous. With a cache, through :meth:`_conv_silu` on a transposed copy
        (streaming in chunks, not a training path)."""
        M, Bt, L, E = u.shape
        k = self.d_conv
        if cache is None and causal_conv.supports(u, k):  # the fused CPU kernel, step-major
            bias = self.conv_bias.reshape(M * E) if self.conv_bias is not None else None
            return causal_conv.causal_conv_silu_steps(u, self.conv_weight.reshape(M * E, k), bias)
        return self._conv_silu(u.permute(0, 3, 1, 2), cache).permute(0, 2, 3, 1).contiguous()

    def _conv_silu(self, u: torch.Tensor, cache: Optional[LayerCache]) -> torch.Tensor:
        """SiLU of the depthwise causal conv of u (M, E, Bt, L); the result is (M, E, Bt, L)
        contiguous, the layout x_proj reads."""
        M, E, Bt, L = u.shape
        k = self.d_conv
        if cache is None and causal_conv.supports(u, k):  # the fused CPU kernel
            bias = self.conv_bias.reshape(M * E) if self.conv_bias is not None else None
            out = causal_conv.causal_conv_silu(u.reshape(M * E, Bt, L), self.conv_weight.reshape(M * E, k), bias)
            return out.view(M, E, Bt, L)
        # Otherwise the (M, E, batch) rows are independent channels, so the padded input (a
        # contiguous copy) runs as one conv over M*E*Bt channels with each weight repeated per sample.
        if cache is not None:
            conv_state = cache.conv_state.to(u.dtype).permute(1, 2, 0, 3)  # (M, E, Bt, k - 1)
            u_in = torch.cat([conv_state, u], dim=-1)
            if k > 1:
                cache.conv_state = u_in[..., u_in.shape[-1] - (k - 1):].permute(2, 0, 1, 3).detach().float()
        else:
            u_in = F.pad(u, (k - 1, 0))
        conv_w = self.conv_weight.reshape(M * E, 1, k).repeat_interleave(Bt, dim=0)
        conv_b = self.conv_bias.reshape(M * E).repeat_interleave(Bt) if self.conv_bias is not None else None
        out = F.conv1d(u_in.reshape(1, M * E * Bt, -1), conv_w, conv_b, groups=M * E * Bt)
        return F.silu(out).view(M, E, Bt, L)

    def step(self, x: torch.Tensor, cache: LayerCache, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Advance all modalities one time step: x (batch, M, d_model) -> (batch, M, d_model).

        Updates ``cache`` in place (O(1) work and memory in the sequence length) and equals
        :meth:`forward` at that step. mask: optional (batch, M) bool, as in forward.
        """
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        xn = self._norm(x)
        xz = torch.einsum("med,bmd->bme", self.in_proj_weight, xn)  # (B, M, 2E)
        if self.in_proj_bias is not None:
            xz = xz + self.in_proj_bias
        u, z = xz.split(E, dim=-1)
        u, cache.conv_state = causal_conv_step(cache.conv_state, u, self.conv_weight, self.conv_bias)
        u = F.silu(u)
        x_dbl = torch.einsum("mre,bme->bmr", self.x_proj_weight, u)  # (B, M, R + 2N)
        dt_r, B, C = x_dbl.split([R, N, N], dim=-1)
        delta = torch.einsum("mer,bmr->bme", self.dt_proj_weight, dt_r)  # (B, M, E)
        if mask is None:
            delta_bias, softplus = self.dt_proj_bias, True
        else:
            delta = F.softplus(delta + self.dt_proj_bias) * mask[..., None].to(delta.dtype)
            delta_bias, softplus = None, False
        y, cache.ssm_state = coupled_scan_step(
            cache.ssm_state, u, delta, self.A(), B, C, D=self.D, z=z,
            delta_bias=delta_bias, delta_softplus=softplus, coupling=self.coupling_weights(),
        )
        out = torch.einsum("mde,bme->bmd", self.out_proj_weight, y)
        if self.out_proj_bias is not None:
            out = out + self.out_proj_bias
        return out + x

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_modalities={self.n_modalities}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, d_inner={self.d_inner}, dt_rank={self.dt_rank}, coupling={self.coupling!r}"
        )
