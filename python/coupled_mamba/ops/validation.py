"""Input checks of the coupled selective scan, made once per call by the op itself (its kernel
and its fake run the same checks, so eager calls, raw ``torch.ops`` calls and torch.compile
tracing all fail the same way). Every error names the argument, what was expected and what was
given, before any pointer reaches the compiled library."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import library

SEQ_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PARAM_DTYPES = (torch.float32, torch.float64)
LENGTH_DTYPES = (torch.int32, torch.int64)
_FN = "coupled_selective_scan"


def _fail(exc, name: str, msg: str):
    raise exc(f"{_FN}: {name}: {msg}")


def _tensor(name: str, t, dims: int):
    if not isinstance(t, Tensor):
        _fail(TypeError, name, f"expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        _fail(ValueError, name, f"expected a {dims}-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}")


def _shape(name: str, t: Tensor, expected: tuple, labels: str):
    if tuple(t.shape) != expected:
        _fail(ValueError, name, f"expected shape {labels} = {expected}, got {tuple(t.shape)}")


def _dtype(name: str, t: Tensor, allowed, like: Optional[Tensor] = None, like_name: str = "u"):
    if like is not None and t.dtype != like.dtype:
        _fail(TypeError, name, f"expected dtype {like.dtype} (like {like_name}), got {t.dtype}")
    if t.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        _fail(TypeError, name, f"expected dtype in ({names}), got {t.dtype}")


def compute_dtype(u: Tensor) -> torch.dtype:
    """The dtype the kernels accumulate in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def check_u(u) -> int:
    """u is a (Bt, M, D, L) tensor of a supported dtype with 1 <= M <= the library's limit; returns M."""
    _tensor("u", u, 4)
    _dtype("u", u, SEQ_DTYPES)
    M, limit = u.shape[1], library.max_modalities()
    if not 1 <= M <= limit:
        _fail(ValueError, "u", f"expected 1 <= M <= {limit} modalities (dim 1), got M = {M}")
    return M


def check_tensor_types(**named) -> None:
    """Given arguments are tensors: the op's schema would refuse anything else with a cast error
    that does not say which argument is wrong."""
    for name, t in named.items():
        if t is not None and not isinstance(t, Tensor):
            _fail(TypeError, name, f"expected a torch.Tensor, got {type(t).__name__}")


def _devices(named, u: Tensor, allow_meta: bool) -> None:
    for name, t in named:
        if t is not None and t.device != u.device:
            _fail(ValueError, name, f"expected a tensor on {u.device} (like u), got one on {t.device}")
    kinds = ("cpu", "cuda", "meta") if allow_meta else ("cpu", "cuda")
    if u.device.type not in kinds:
        _fail(ValueError, "u", f"expected CPU or CUDA tensors, got tensors on {u.device}")
    if u.device.type == "cuda":
        if not library.has_cuda():
            _fail(RuntimeError, "u", f"tensors on {u.device} need the CUDA kernels, but {library.cuda_unavailable_reason()}")
        if u.dtype == torch.float64:
            _fail(TypeError, "u", "expected float32, float16 or bfloat16 on CUDA (the CUDA kernels compute in "
                  "float32), got torch.float64; use float64 on the CPU (e.g. for gradcheck)")


def check_forward(u, delta, A, B, C, D, z, delta_bias, kind: int, W, initial_state, lengths,
                  allow_meta: bool = False) -> None:
    """Every forward input. ``kind`` is the library's coupling code; ``allow_meta`` lets the fake
    accept all-meta tensors (shape inference), never a meta tensor among real ones."""
    check_u(u)
    Bt, M, Dch, L = u.shape
    code = library.kind_from_code(kind) if isinstance(kind, int) and not isinstance(kind, bool) else None
    if code is None:
        _fail(TypeError, "coupling", f"expected the library's integer kind code, got {kind!r}")
    general = int(code.value) == library.kind_code("general")
    if general != (W is not None):
        _fail(ValueError, "W", "expected an (M, M) tensor exactly when the coupling kind is general")
    _tensor("A", A, 3)
    _dtype("A", A, PARAM_DTYPES)
    N, limit = A.shape[-1], library.max_state()
    if not 1 <= N <= limit:
        _fail(ValueError, "A", f"expected state size 1 <= N <= {limit} (dim 2), got N = {N}")
    _shape("A", A, (M, Dch, N), "(M, D, N)")
    _tensor("delta", delta, 4)
    _shape("delta", delta, (Bt, M, Dch, L), "(Bt, M, D, L)")
    _dtype("delta", delta, SEQ_DTYPES, like=u)
    for name, t in (("B", B), ("C", C)):
        _tensor(name, t, 4)
        _shape(name, t, (Bt, M, N, L), "(Bt, M, N, L)")
        _dtype(name, t, SEQ_DTYPES, like=u)
    if z is not None:
        _tensor("z", z, 4)
        _shape("z", z, (Bt, M, Dch, L), "(Bt, M, D, L)")
        _dtype("z", z, SEQ_DTYPES, like=u)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _tensor(name, t, 2)
            _shape(name, t, (M, Dch), "(M, D)")
            _dtype(name, t, PARAM_DTYPES)
    if initial_state is not None:
        _tensor("initial_state", initial_state, 4)
        _shape("initial_state", initial_state, (Bt, M, Dch, N), "(Bt, M, D, N)")
        _dtype("initial_state", initial_state, PARAM_DTYPES)
    if W is not None:
        _tensor("coupling", W, 2)
        _shape("coupling", W, (M, M), "(M, M)")
        _dtype("coupling", W, PARAM_DTYPES)
    if lengths is not None:
        _tensor("lengths", lengths, 1)
        _shape("lengths", lengths, (Bt,), "(Bt,)")
        _dtype("lengths", lengths, LENGTH_DTYPES)
    _devices([("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
              ("delta_bias", delta_bias), ("initial_state", initial_state), ("coupling", W), ("lengths", lengths)],
             u, allow_meta)


def check_lengths_values(lengths: Optional[Tensor], L: int) -> None:
    """0 <= lengths[b] <= L (needs the values, so only the kernel path calls it, not the fake)."""
    if lengths is None or lengths.numel() == 0:
        return
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > L:
        _fail(ValueError, "lengths", f"expected every length in [0, L = {L}], got values in [{lo}, {hi}]")


def check_backward(u, A, kind: int, checkpoints, dout, dlast_state, allow_meta: bool = False) -> None:
    """The backward op's own inputs (the forward inputs are checked by check_forward)."""
    Bt, M, Dch, L = u.shape
    N = A.shape[-1]
    cdt = compute_dtype(u)
    _tensor("dout", dout, 4)
    _shape("dout", dout, (Bt, M, Dch, L), "(Bt, M, D, L)")
    _dtype("dout", dout, SEQ_DTYPES, like=u)
    if dlast_state is not None:
        _tensor("dlast_state", dlast_state, 4)
        _shape("dlast_state", dlast_state, (Bt, M, Dch, N), "(Bt, M, D, N)")
        _dtype("dlast_state", dlast_state, (cdt,))
    if checkpoints is not None and checkpoints.numel() > 0:
        expected = library.checkpoint_shape(u.device, kind, Bt, M, Dch, N, L)
        _tensor("checkpoints", checkpoints, 4)
        _shape("checkpoints", checkpoints, expected, "(Bt, D, chunks, width)")
        _dtype("checkpoints", checkpoints, (cdt,))
    _devices([("dout", dout), ("dlast_state", dlast_state), ("checkpoints", checkpoints)], u, allow_meta)
