"""Input checks for the coupled selective scan. Every error names the argument, what was
expected and what was given, before any pointer reaches the compiled library."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

MAX_MODALITIES = 8
MAX_STATE = 256
SEQ_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PARAM_DTYPES = (torch.float32, torch.float64)
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


def _dtype(name: str, t: Tensor, allowed, like: Optional[Tensor] = None):
    if like is not None and t.dtype != like.dtype:
        _fail(TypeError, name, f"expected dtype {like.dtype} (like u), got {t.dtype}")
    if t.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        _fail(TypeError, name, f"expected dtype in ({names}), got {t.dtype}")


def check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, coupling, initial_state) -> int:
    """Validate every input of coupled_selective_scan; returns M."""
    _tensor("u", u, 4)
    _dtype("u", u, SEQ_DTYPES)
    Bt, M, Dch, L = u.shape
    if not 1 <= M <= MAX_MODALITIES:
        _fail(ValueError, "u", f"expected 1 <= M <= {MAX_MODALITIES} modalities (dim 1), got M = {M}")
    _tensor("A", A, 3)
    _dtype("A", A, PARAM_DTYPES)
    N = A.shape[-1]
    if not 1 <= N <= MAX_STATE:
        _fail(ValueError, "A", f"expected state size 1 <= N <= {MAX_STATE} (dim 2), got N = {N}")
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
    if isinstance(coupling, Tensor):
        _tensor("coupling", coupling, 2)
        _shape("coupling", coupling, (M, M), "(M, M)")
        _dtype("coupling", coupling, PARAM_DTYPES)
    elif coupling not in ("sum", "mean", "none"):
        _fail(ValueError, "coupling", f"expected 'sum', 'mean', 'none' or an (M, M) tensor, got {coupling!r}")
    named = [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
             ("delta_bias", delta_bias), ("initial_state", initial_state)]
    if isinstance(coupling, Tensor):
        named.append(("coupling", coupling))
    for name, t in named:
        if t is not None and t.device != u.device:
            _fail(ValueError, name, f"expected a tensor on {u.device} (like u), got one on {t.device}")
    if u.device.type not in ("cpu", "cuda"):
        _fail(ValueError, "u", f"expected a CPU or CUDA tensor, got one on {u.device}")
    if u.device.type == "cuda":
        from ._extension import has_cuda

        if not has_cuda():
            _fail(RuntimeError, "u",
                  "CUDA tensors need the CUDA kernels, and this build of coupled-mamba has none; "
                  "rebuild on a machine with the CUDA toolkit: COUPLED_MAMBA_CUDA=ON pip install . "
                  "(or move the tensors to the CPU)")
        if u.dtype == torch.float64:
            _fail(TypeError, "u",
                  "expected float32, float16 or bfloat16 on CUDA (the CUDA kernels compute in float32), got "
                  "torch.float64; use float64 on the CPU (e.g. for gradcheck)")
    return M


def check_op_inputs(u, delta, A, B, C, D, z, delta_bias, coupling_kind, W, initial_state) -> int:
    """The checks of check_scan_inputs for the raw ops (coupling given as the library's kind code),
    so that calling torch.ops.coupled_mamba.* directly cannot pass bad memory to the library."""
    if coupling_kind not in (0, 1, 2):
        _fail(ValueError, "coupling", f"expected kind 0 (rank one), 1 (none) or 2 (general), got {coupling_kind!r}")
    if (coupling_kind == 2) != (W is not None):
        _fail(ValueError, "W", "expected an (M, M) tensor exactly when the coupling kind is 2 (general)")
    coupling = W if coupling_kind == 2 else ("mean" if coupling_kind == 0 else "none")
    return check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, coupling, initial_state)


def check_backward_inputs(u, A, dout, dlast_state, checkpoints, width: int, chunks: int) -> None:
    """Shapes of the backward op's extra inputs."""
    Bt, M, Dch, L = u.shape
    N = A.shape[-1]
    _tensor("dout", dout, 4)
    _shape("dout", dout, (Bt, M, Dch, L), "(Bt, M, D, L)")
    if dlast_state is not None:
        _tensor("dlast_state", dlast_state, 4)
        _shape("dlast_state", dlast_state, (Bt, M, Dch, N), "(Bt, M, D, N)")
    if checkpoints is not None and checkpoints.numel() > 0:
        _shape("checkpoints", checkpoints, (Bt, Dch, chunks, width), "(Bt, D, chunks, width)")
    for name, t in (("dout", dout), ("dlast_state", dlast_state), ("checkpoints", checkpoints)):
        if t is not None and t.device != u.device:
            _fail(ValueError, name, f"expected a tensor on {u.device} (like u), got one on {t.device}")
