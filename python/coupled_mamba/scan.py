"""The fused coupled selective scan as a PyTorch op.

Two custom ops, ``coupled_mamba::scan_fwd`` and ``coupled_mamba::scan_bwd``, wrap the compiled
library (``coupled_mamba._C``, which never links libtorch: tensors cross as pointers and strides).
They have fake (meta) implementations, so the op traces under torch.compile, and ``scan_fwd`` has
an autograd formula that calls ``scan_bwd``. :func:`coupled_selective_scan` validates the inputs
and calls them; :class:`CoupledSelectiveScanFn` offers the same computation as a
``torch.autograd.Function`` for code written against mamba-ssm's ``SelectiveScanFn``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _validation
from ._extension import checkpoint_chunk, cuda_unavailable_reason, extension

Coupling = Union[str, Tensor]

# Coupling kinds understood by the library (coupled_scan.h: CouplingKind).
RANK_ONE, NONE, GENERAL = 0, 1, 2

_num_threads: Optional[int] = None

# Time segments of the CUDA kernels: 0 automatic, 1 never, n > 1 ask for n (docs/cuda.md).
_cuda_time_segments = 0


def set_cuda_time_segments(n: int = 0) -> None:
    """How the CUDA kernels split long sequences into time segments that run in parallel: 0
    (default) when the grid alone would leave the GPU idle, 1 never, n > 1 into n. For benchmarks."""
    global _cuda_time_segments
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"set_cuda_time_segments: expected an int >= 0, got {n!r}")
    _cuda_time_segments = n


# Tests set this to fill every buffer the kernels write with NaN first, so that an element a
# kernel forgets to write fails the comparison instead of passing with stale memory.
_POISON_OUTPUTS = False


def _new(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if _POISON_OUTPUTS else t


def set_num_threads(n: Optional[int]) -> None:
    """Threads used by the CPU kernels; None (default) follows torch.get_num_threads()."""
    global _num_threads
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads: expected a positive int or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    return _num_threads if _num_threads is not None else torch.get_num_threads()


def resolve_coupling(coupling: Coupling, M: int) -> Tuple[int, float, Optional[Tensor]]:
    """(kind, alpha, W) for the library: rank-one fast path for "sum" and "mean"."""
    if isinstance(coupling, Tensor):
        return GENERAL, 1.0, coupling
    if coupling == "sum":
        return RANK_ONE, 1.0, None
    if coupling == "mean":
        return RANK_ONE, 1.0 / M, None
    if coupling == "none":
        return NONE, 1.0, None
    raise ValueError(
        f"coupled_selective_scan: coupling: expected 'sum', 'mean', 'none' or an (M, M) tensor, got {coupling!r}"
    )


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _seq(t: Optional[Tensor], cdt: torch.dtype):
    """A (Bt, M, R, L) tensor in dtype cdt with a contiguous time axis, and its descriptor."""
    if t is None:
        return None, None
    t = t.to(cdt)
    if t.size(-1) > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    return t, (t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def _param(t: Optional[Tensor], cdt: torch.dtype):
    if t is None:
        return None, None
    t = t.to(cdt).contiguous()
    return t, t.data_ptr()


def _ptr(t: Optional[Tensor]):
    return None if t is None else t.data_ptr()


_DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
                torch.bfloat16: "bfloat16"}


def _seq_dtype(u: Tensor) -> torch.dtype:
    """dtype the library reads sequence tensors in: the CUDA kernels read float16 / bfloat16
    directly; the CPU kernels read the compute dtype."""
    return u.dtype if u.device.type == "cuda" else _compute_dtype(u)


def _num_chunks(L: int, device: torch.device, coupling_kind: int) -> int:
    chunk = checkpoint_chunk(device.type, coupling_kind)
    return (L + chunk - 1) // chunk


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state):
    """Convert inputs for the library; returns (keep-alive tensors, argument dict, compute dtype)."""
    cdt = _compute_dtype(u)
    sdt = _seq_dtype(u)
    Bt, M, Dch, L = u.shape
    keep = {}
    args = {"sizes": (Bt, M, Dch, A.shape[-1], L), "delta_softplus": bool(delta_softplus),
            "coupling": int(coupling), "alpha": float(alpha), "num_threads": get_num_threads()}
    if u.device.type == "cuda":
        args["device"] = u.device.index if u.device.index is not None else torch.cuda.current_device()
        args["stream"] = torch.cuda.current_stream(u.device).cuda_stream
        args["time_segments"] = _cuda_time_segments
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        keep[name], args[name] = _seq(t, sdt)
    for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias), ("W", W), ("initial_state", initial_state)):
        keep[name], args[name] = _param(t, cdt)
    return keep, args, cdt


def _cuda_workspace(args: dict, u: Tensor, backward: bool) -> Tensor:
    n = extension().cuda_workspace(_DTYPE_NAMES[_seq_dtype(u)], args, backward)
    return _new((max(1, n),), torch.float32, u.device)


def _run(direction: str, args: dict, u: Tensor) -> None:
    ext = extension()
    if u.device.type == "cuda":
        if not ext.has_cuda:
            raise RuntimeError(
                f"coupled_selective_scan: tensors on {u.device} need the CUDA kernels, which this build of "
                "coupled-mamba does not contain; reinstall with the CUDA toolkit present (COUPLED_MAMBA_CUDA=ON) "
                "or move the tensors to the CPU")
        # torch's device guard as well as the library's own: both runtimes share the current device.
        with torch.cuda.device(u.device):
            try:
                getattr(ext, f"{direction}_cuda")(_DTYPE_NAMES[_seq_dtype(u)], args)
            except RuntimeError as e:  # say why when the library's runtime sees no GPU at all
                if ext.cuda_device_count() == 0:
                    raise RuntimeError(f"coupled_selective_scan: torch has tensors on {u.device}, but "
                                       f"{cuda_unavailable_reason()}") from e
                raise
    else:
        getattr(ext, f"{direction}_cpu")(_DTYPE_NAMES[_compute_dtype(u)], args)


@torch.library.custom_op("coupled_mamba::scan_fwd", mutates_args=())
def scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, coupling: int, alpha: float, W: Optional[Tensor],
    initial_state: Optional[Tensor], save_checkpoints: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (out in u's dtype, last_state in the compute dtype, checkpoints or an empty tensor)."""
    _validation.check_op_inputs(u, delta, A, B, C, D, z, delta_bias, coupling, W, initial_state)
    keep, args, cdt = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W,
                               initial_state)
    Bt, M, Dch, L = u.shape
    N = A.shape[-1]
    out = _new((Bt, M, Dch, L), cdt, u.device)
    last = _new((Bt, M, Dch, N), cdt, u.device)
    width = extension().checkpoint_width(coupling, M, N)
    ck = (_new((Bt, Dch, _num_chunks(L, u.device, coupling), width), cdt, u.device) if save_checkpoints
          else torch.empty(0, dtype=cdt, device=u.device))
    args.update(out=out.data_ptr(), last_state=last.data_ptr(), checkpoints=_ptr(ck) if save_checkpoints else None)
    if u.device.type == "cuda":
        keep["work"] = _cuda_workspace(args, u, backward=False)
        args["workspace"] = keep["work"].data_ptr()
    _run("forward", args, u)
    return out.to(u.dtype), last, ck


@scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state,
                   save_checkpoints):
    cdt = _compute_dtype(u)
    Bt, M, Dch, L = u.shape
    N = A.shape[-1]
    width = N if coupling == RANK_ONE else M * N
    ck = (u.new_empty((Bt, Dch, _num_chunks(L, u.device, coupling), width), dtype=cdt) if save_checkpoints
          else u.new_empty((0,), dtype=cdt))
    return u.new_empty((Bt, M, Dch, L)), u.new_empty((Bt, M, Dch, N), dtype=cdt), ck


_GRAD_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dW", "dinitial_state")


@torch.library.custom_op("coupled_mamba::scan_bwd", mutates_args=())
def scan_bwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, coupling: int, alpha: float, W: Optional[Tensor],
    initial_state: Optional[Tensor], checkpoints: Optional[Tensor], dout: Tensor, dlast_state: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dW, dinitial_state), each in its input's
    dtype; an absent optional input gets an empty tensor."""
    _validation.check_op_inputs(u, delta, A, B, C, D, z, delta_bias, coupling, W, initial_state)
    M, N = u.shape[1], A.shape[-1]
    _validation.check_backward_inputs(u, A, dout, dlast_state, checkpoints, extension().checkpoint_width(coupling, M, N),
                                      _num_chunks(u.shape[-1], u.device, coupling))
    keep, args, cdt = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W,
                               initial_state)
    keep["dout"], args["dout"] = _seq(dout, _seq_dtype(u))
    keep["dlast"], args["dlast_state"] = _param(dlast_state, cdt)
    if (checkpoints is None or checkpoints.numel() == 0) and u.device.type == "cuda":
        # The CPU library recomputes missing checkpoints itself; on the GPU a forward pass does.
        checkpoints = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W,
                               initial_state, True)[2]
    if checkpoints is not None and checkpoints.numel() > 0:
        keep["ck"], args["checkpoints"] = _param(checkpoints, cdt)
    if u.device.type == "cuda":
        keep["work"] = _cuda_workspace(args, u, backward=True)
        args["workspace"] = keep["work"].data_ptr()
    like = {"du": u, "ddelta": delta, "dA": A, "dB": B, "dC": C, "dD": D, "dz": z, "ddelta_bias": delta_bias,
            "dW": W, "dinitial_state": initial_state}
    grads = {k: None if t is None else _new(t.shape, cdt, u.device) for k, t in like.items()}
    args.update({k: _ptr(v) for k, v in grads.items()})
    _run("backward", args, u)

    def shaped_like(g: Optional[Tensor], t: Optional[Tensor]) -> Tensor:
        # Each gradient takes its input's dtype and strides (what the fake promises, torch.empty_like).
        if g is None:
            return u.new_empty((0,))
        if g.dtype == t.dtype and g.stride() == t.stride():
            return g
        return torch.empty_like(t).copy_(g)

    return tuple(shaped_like(grads[k], like[k]) for k in _GRAD_NAMES)


@scan_bwd.register_fake
def _scan_bwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state,
                   checkpoints, dout, dlast_state):
    def like(t):
        return u.new_empty((0,)) if t is None else torch.empty_like(t)

    return (like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias), like(W),
            like(initial_state))


def _backward(saved, flags, dout: Optional[Tensor], dlast: Optional[Tensor]):
    """Shared by the op's autograd formula and CoupledSelectiveScanFn: returns the 10 gradients,
    None for absent inputs."""
    u, delta, A, B, C, D, z, delta_bias, W, initial_state, ck = saved
    delta_softplus, coupling, alpha = flags
    if dout is None:
        dout = torch.zeros_like(u)
    grads = torch.ops.coupled_mamba.scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state, ck, dout, dlast)
    present = (True, True, True, True, True, D is not None, z is not None, delta_bias is not None,
               W is not None, initial_state is not None)
    return tuple(g if p else None for g, p in zip(grads, present))


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state, _save) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, W, initial_state, output[2])
    ctx.flags = (delta_softplus, coupling, alpha)


def _op_backward(ctx, dout, dlast, _dck):
    du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit = _backward(ctx.saved_tensors, ctx.flags, dout, dlast)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None, None, dW, dinit, None


scan_fwd.register_autograd(_op_backward, setup_context=_setup_context)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
):
    """Fused coupled selective scan (docs/coupled-scan.md).

    Shapes: u, delta, z (Bt, M, D, L); A (M, D, N); B, C (Bt, M, N, L); D, delta_bias (M, D);
    initial_state (Bt, M, D, N). ``coupling`` is "sum" (the paper's Eq. 6; grows like M^L, overflows
    float32 near L = 80 for M = 3 at small dt), "mean" (bounded), "none" (M independent scans) or an
    (M, M) tensor W (gets a gradient). Returns ``out`` (u's dtype), or ``(out, last_state)`` with
    last_state (Bt, M, D, N) in float32 (float64 for float64 inputs) when ``return_last_state``.
    NaN and Inf in the inputs propagate to the outputs; they are not checked for.
    """
    M = _validation.check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, coupling, initial_state)
    kind, alpha, W = resolve_coupling(coupling, M)
    save = _needs_grad(u, delta, A, B, C, D, z, delta_bias, W, initial_state)
    out, last, _ = torch.ops.coupled_mamba.scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), kind, alpha, W, initial_state, save)
    return (out, last) if return_last_state else out


class CoupledSelectiveScanFn(torch.autograd.Function):
    """``CoupledSelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling,
    initial_state, return_last_state)``: the same computation as :func:`coupled_selective_scan`
    (positional arguments in the same order), as an autograd Function."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                coupling="mean", initial_state=None, return_last_state=False):
        M = _validation.check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, coupling, initial_state)
        kind, alpha, W = resolve_coupling(coupling, M)
        out, last, ck = torch.ops.coupled_mamba.scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), kind, alpha, W, initial_state, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, W, initial_state, ck)
        ctx.flags = (bool(delta_softplus), kind, alpha)
        ctx.return_last_state = return_last_state
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, dlast=None):
        du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit = _backward(ctx.saved_tensors, ctx.flags, dout,
                                                                     dlast if ctx.return_last_state else None)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, dW, dinit, None
