"""The two custom ops, ``coupled_mamba::scan_fwd`` and ``coupled_mamba::scan_bwd``, their fake
(shape-only) implementations for torch.compile, and the autograd formula of ``scan_fwd``.

Each op fills one typed ``_C.ScanCall`` (tensors as pointers and strides) and calls the compiled
library, which never links libtorch. The coupling arrives as the library's kind code plus the
rank-one weight ``alpha`` and the optional matrix ``W`` (ops/coupling.py makes them).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import library, settings, validation

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
           torch.bfloat16: "bfloat16"}


def _new(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    return settings.poisoned(torch.empty(shape, dtype=dtype, device=device))


def _layout_of(t: Tensor):
    """The strides torch.empty_like(t) gives (the layout every result promises), without allocating."""
    return torch.empty_like(t, device="meta").stride()


def _time_contiguous(t: Tensor) -> bool:
    """Whether torch.empty_like(t), a (Bt, M, R, L) tensor, keeps the time axis contiguous."""
    return t.size(-1) <= 1 or _layout_of(t)[-1] == 1


def _step_major(t: Tensor) -> bool:
    """Whether torch.empty_like(t) is step-major: the R values of each (b, m, step) contiguous and
    the steps apart, as in a (Bt, M, L, R) tensor or a model's (M, batch * L, R) activations."""
    stride = _layout_of(t)
    return t.size(-1) > 1 and t.size(2) > 1 and stride[2] == 1 and stride[-1] != 1


def _writes_strided(u: Tensor) -> bool:
    """Whether the library writes the (Bt, M, R, L) results of this call (out and the sequence
    gradients) in their input's layout through strides: on the CPU, when the input is in the
    compute dtype and torch.empty_like keeps its time axis contiguous or makes it step-major."""
    if u.device.type == "cuda" or u.dtype != validation.compute_dtype(u):
        return False
    return _time_contiguous(u) or _step_major(u)


def _reads_step_major(t: Tensor) -> bool:
    """Whether the library reads and writes t's group of tensors (u, delta, z, out, dout and their
    gradients with u; B, C, dB, dC with B) step-major: on the CPU, when t is written strided and
    torch.empty_like(t) is step-major. Otherwise the group is read with its time axis contiguous."""
    return _writes_strided(t) and _step_major(t)


def _out_like(u: Tensor) -> Tensor:
    """An empty ``out`` as the op returns it: in u's layout when the library writes it so."""
    if _writes_strided(u):
        return torch.empty_like(u)
    return u.new_empty(u.shape)


def _seq_dtype(u: Tensor) -> torch.dtype:
    """dtype the library reads sequence tensors in: the CUDA kernels read float16 / bfloat16
    directly; the CPU kernels read the compute dtype."""
    return u.dtype if u.device.type == "cuda" else validation.compute_dtype(u)


# The results' layouts follow the inputs' (out and the sequence gradients take their input's
# layout, step-major or row-major in time): torch.compile must hand the ops their inputs in the
# strides it traced them with, not in layouts of its own choosing.
_EXACT_STRIDES = tuple(getattr(torch.Tag, name) for name in ("needs_exact_strides",) if hasattr(torch.Tag, name)) or \
    tuple(getattr(torch.Tag, name) for name in ("needs_fixed_stride_order",) if hasattr(torch.Tag, name))


def _seq_of(t: Tensor, steps: bool):
    """The library's view of a (Bt, M, R, L) tensor in its group's layout: step-major (row stride 1,
    the time stride given) or time-contiguous (the row stride given, time stride 1)."""
    stride = t.stride()
    return library.extension().Seq(t.data_ptr(), stride[0], stride[1], 1 if steps else stride[2],
                                   stride[3] if steps else 1)


class _Call:
    """A ScanCall being filled, with the converted tensors it points at kept alive."""

    def __init__(self, u: Tensor, A: Tensor, kind: int, alpha: float, delta_softplus: bool):
        ext = library.extension()
        self.keep = []
        self.device = u.device
        self.cdt = validation.compute_dtype(u)
        self.sdt = _seq_dtype(u)
        c = self.c = ext.ScanCall()
        c.batch, c.modalities, c.channels, c.length = u.shape
        c.state = A.shape[-1]
        c.dtype = getattr(ext.DType, _DTYPES[self.sdt])
        c.coupling = library.kind_from_code(kind)
        c.alpha = float(alpha)
        c.delta_softplus = bool(delta_softplus)
        c.num_threads = settings.get_num_threads()
        if u.device.type == "cuda":
            c.device = u.device.index if u.device.index is not None else torch.cuda.current_device()
            c.stream = torch.cuda.current_stream(u.device).cuda_stream
            c.time_segments = settings.get_cuda_time_segments()

    def seq(self, name: str, t: Optional[Tensor], steps: bool = False) -> None:
        """A (Bt, M, R, L) input in the library's sequence dtype: step-major when ``steps`` (its
        group's layout, _reads_step_major), else with a contiguous time axis; copied only when it
        is not in that layout already."""
        if t is None:
            return
        t = t.to(self.sdt)
        if steps:
            if t.stride(2) != 1:  # R > 1 here: the group is step-major only then
                t = t.transpose(2, 3).contiguous().transpose(2, 3)
        elif t.size(-1) > 1 and t.stride(-1) != 1:
            t = t.contiguous()
        self.keep.append(t)
        setattr(self.c, name, _seq_of(t, steps))

    def param(self, name: str, t: Optional[Tensor], dtype: Optional[torch.dtype] = None) -> None:
        """A contiguous input in the compute dtype (or ``dtype``)."""
        if t is None:
            return
        t = t.to(dtype or self.cdt).contiguous()
        self.keep.append(t)
        setattr(self.c, name, t.data_ptr())

    def output(self, name: str, shape, dtype: Optional[torch.dtype] = None) -> Tensor:
        t = _new(shape, dtype or self.cdt, self.device)
        setattr(self.c, name, t.data_ptr())
        return t

    def seq_result(self, name: str, like: Tensor, steps: bool = False) -> Tensor:
        """A (Bt, M, R, L) result (out, or the gradient of the input ``like``) in its group's layout
        (``steps``: step-major). In like's layout (torch.empty_like's), written there by the library
        through strides, when _writes_strided and that layout is the group's; otherwise a step-major
        tensor for a step-major group, else contiguous, in the compute dtype."""
        if steps and not _step_major(like):
            Bt, M, R, L = like.shape
            t = _new((Bt, M, L, R), self.cdt, self.device).transpose(2, 3)
        elif steps or (_writes_strided(like) and _time_contiguous(like)):
            t = settings.poisoned(torch.empty_like(like, dtype=self.cdt))
        else:
            return self.output(name, like.shape)
        setattr(self.c, name, t.data_ptr())
        setattr(self.c, f"{name}_rows", _seq_of(t, steps))
        return t

    def inputs(self, u, delta, A, B, C, D, z, delta_bias, W, initial_state, lengths) -> None:
        # The two groups' layouts: the channel rows follow u, the state rows follow B.
        self.rows_steps, self.states_steps = _reads_step_major(u), _reads_step_major(B)
        for name, t in (("u", u), ("delta", delta), ("z", z)):
            self.seq(name, t, self.rows_steps)
        for name, t in (("B", B), ("C", C)):
            self.seq(name, t, self.states_steps)
        for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias), ("W", W), ("initial_state", initial_state)):
            self.param(name, t)
        if lengths is not None:
            self.param("lengths", lengths, torch.int64)

    def run(self, direction: str) -> None:
        ext, device = library.extension(), self.device
        if device.type != "cuda":
            getattr(ext, f"{direction}_cpu")(self.c)
            return
        work = _new((max(1, ext.cuda_workspace(self.c, direction == "backward")),), torch.float32, device)
        self.c.workspace = work.data_ptr()
        # torch's device guard as well as the library's own: both runtimes share the current device.
        with torch.cuda.device(device):
            try:
                getattr(ext, f"{direction}_cuda")(self.c)
            except RuntimeError as e:  # say why when the library's runtime sees no GPU at all
                if ext.cuda_device_count() == 0:
                    raise RuntimeError(f"coupled_selective_scan: tensors on {device}, but "
                                       f"{library.cuda_unavailable_reason()}") from e
                raise


@torch.library.custom_op("coupled_mamba::scan_fwd", mutates_args=(), tags=_EXACT_STRIDES)
def scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, coupling: int, alpha: float, W: Optional[Tensor],
    initial_state: Optional[Tensor], lengths: Optional[Tensor], save_checkpoints: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (out in u's dtype, last_state in the compute dtype, checkpoints or an empty tensor)."""
    validation.check_forward(u, delta, A, B, C, D, z, delta_bias, coupling, W, initial_state, lengths)
    validation.check_lengths_values(lengths, u.shape[-1])
    call = _Call(u, A, coupling, alpha, delta_softplus)
    call.inputs(u, delta, A, B, C, D, z, delta_bias, W, initial_state, lengths)
    Bt, M, Dch, L = u.shape
    N = A.shape[-1]
    out = call.seq_result("out", u, call.rows_steps)
    last = call.output("last_state", (Bt, M, Dch, N))
    if save_checkpoints:
        ck = call.output("checkpoints", library.checkpoint_shape(u.device, coupling, Bt, M, Dch, N, L))
    else:
        ck = u.new_empty((0,), dtype=call.cdt)
    call.run("forward")
    return out.to(u.dtype), last, ck


@scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state,
                   lengths, save_checkpoints):
    validation.check_forward(u, delta, A, B, C, D, z, delta_bias, coupling, W, initial_state, lengths,
                             allow_meta=True)
    cdt = validation.compute_dtype(u)
    Bt, M, Dch, L = u.shape
    N = A.shape[-1]
    shape = library.checkpoint_shape(u.device, coupling, Bt, M, Dch, N, L) if save_checkpoints else (0,)
    return _out_like(u), u.new_empty((Bt, M, Dch, N), dtype=cdt), u.new_empty(shape, dtype=cdt)


# The backward's results, in this order; an absent optional input gets an empty tensor.
GRAD_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dW", "dinitial_state")
# Those of the (Bt, M, R, L) sequence inputs, which the CPU library writes in their input's layout.
_SEQ_GRADS = ("du", "ddelta", "dB", "dC", "dz")


@torch.library.custom_op("coupled_mamba::scan_bwd", mutates_args=(), tags=_EXACT_STRIDES)
def scan_bwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, coupling: int, alpha: float, W: Optional[Tensor],
    initial_state: Optional[Tensor], lengths: Optional[Tensor], checkpoints: Optional[Tensor], dout: Tensor,
    dlast_state: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dW, dinitial_state), each in its input's
    dtype and strides; an absent optional input gets an empty tensor."""
    validation.check_forward(u, delta, A, B, C, D, z, delta_bias, coupling, W, initial_state, lengths)
    validation.check_backward(u, A, coupling, checkpoints, dout, dlast_state)
    validation.check_lengths_values(lengths, u.shape[-1])
    call = _Call(u, A, coupling, alpha, delta_softplus)
    call.inputs(u, delta, A, B, C, D, z, delta_bias, W, initial_state, lengths)
    call.seq("dout", dout, call.rows_steps)
    call.param("dlast_state", dlast_state)
    if checkpoints is not None and checkpoints.numel() > 0:  # without them the library recomputes them
        call.param("checkpoints", checkpoints)
    like = dict(zip(GRAD_NAMES, (u, delta, A, B, C, D, z, delta_bias, W, initial_state)))
    steps = dict(du=call.rows_steps, ddelta=call.rows_steps, dz=call.rows_steps, dB=call.states_steps,
                 dC=call.states_steps)
    grads = {k: None if t is None else call.seq_result(k, t, steps[k]) if k in _SEQ_GRADS else call.output(k, t.shape)
             for k, t in like.items()}
    call.run("backward")

    def shaped_like(k: str) -> Tensor:
        # Each gradient takes its input's dtype and layout (what the fake promises, torch.empty_like).
        g, t = grads[k], like[k]
        if g is None:
            return u.new_empty((0,))
        if g.dtype == t.dtype and g.stride() == _layout_of(t):
            return g
        return torch.empty_like(t).copy_(g)

    return tuple(shaped_like(k) for k in GRAD_NAMES)


@scan_bwd.register_fake
def _scan_bwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state,
                   lengths, checkpoints, dout, dlast_state):
    validation.check_forward(u, delta, A, B, C, D, z, delta_bias, coupling, W, initial_state, lengths,
                             allow_meta=True)
    validation.check_backward(u, A, coupling, checkpoints, dout, dlast_state, allow_meta=True)

    def like(t):
        return u.new_empty((0,)) if t is None else torch.empty_like(t)

    return tuple(like(t) for t in (u, delta, A, B, C, D, z, delta_bias, W, initial_state))


def backward(saved, flags, dout: Optional[Tensor], dlast: Optional[Tensor]):
    """Shared by the op's autograd formula and CoupledSelectiveScanFn: the 10 gradients, None for
    absent inputs."""
    u, delta, A, B, C, D, z, delta_bias, W, initial_state, lengths, ck = saved
    delta_softplus, coupling, alpha = flags
    if dout is None:
        dout = torch.zeros_like(u)
    grads = torch.ops.coupled_mamba.scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state, lengths, ck,
        dout, dlast)
    present = (True, True, True, True, True, D is not None, z is not None, delta_bias is not None,
               W is not None, initial_state is not None)
    return tuple(g if p else None for g, p in zip(grads, present))


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, coupling, alpha, W, initial_state, lengths,
     _save) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, W, initial_state, lengths, output[2])
    ctx.flags = (delta_softplus, coupling, alpha)
    # An unused output (last_state, checkpoints) gets None instead of a zero-filled gradient.
    ctx.set_materialize_grads(False)


def _op_backward(ctx, dout, dlast, _dck):
    du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit = backward(ctx.saved_tensors, ctx.flags, dout, dlast)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None, None, dW, dinit, None, None


scan_fwd.register_autograd(_op_backward, setup_context=_setup_context)
