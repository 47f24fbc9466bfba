"""Helpers of the op's tests: tolerances, sizes, couplings, and the fused-vs-reference runner."""
import os
import subprocess
import sys

import torch

from coupled_mamba import coupled_selective_scan
from coupled_mamba.ops import coupled_selective_scan_ref, make_inputs  # noqa: F401  (re-exported)

# (outputs, gradients) relative-error tolerances per input dtype.
TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-4, 1e-3), torch.bfloat16: (1e-2, 3e-2),
       torch.float16: (1e-2, 3e-2)}

SIZES = [  # (Bt, M, D, N, L): odd sizes, N not a multiple of the vector width, M = 1 and M > 3
    (2, 3, 5, 7, 1),
    (1, 1, 3, 5, 7),
    (2, 3, 17, 19, 63),
    (1, 5, 4, 9, 130),
    (1, 2, 2, 3, 2049),
    (2, 2, 40, 16, 20),  # two channel blocks, a whole vector block of states
]
COUPLINGS = ["mean", "sum", "none", "matrix"]


def coupling_for(name, M, seed=1):
    if name == "matrix":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(M, M, generator=g, dtype=torch.float64) * 0.6 - 0.1
    return name


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values where the reference is finite"
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def run_with(fn, inputs, coupling, dout, dlast, cast=None, delta_softplus=True, lengths=None):
    """(out, last, grads) of ``fn`` on ``inputs`` (cast to ``cast``) for the loss
    sum(out * dout) + sum(last * dlast); grads by input name, plus "coupling" for a tensor W."""
    names = list(inputs)
    xs = {k: (v.detach().to(cast) if cast else v.detach().clone()).requires_grad_() for k, v in inputs.items()}
    w = coupling
    if isinstance(coupling, torch.Tensor):
        w = (coupling.detach().to(cast) if cast else coupling.detach().clone()).requires_grad_()
    extra = {} if lengths is None else {"lengths": lengths}
    out, last = fn(**xs, delta_softplus=delta_softplus, coupling=w, return_last_state=True, **extra)
    loss = (out.double() * dout.to(out.device)).sum() + (last.double() * dlast.to(out.device)).sum()
    wrt = [xs[k] for k in names] + ([w] if isinstance(w, torch.Tensor) else [])
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
    else:  # an empty size: nothing depends on the inputs, every gradient is zero
        grads = [torch.zeros_like(t) for t in wrt]
    return out, last, dict(zip(names + ["coupling"], grads))


def run_both(inputs, coupling, delta_softplus=True, lengths=None, fused=coupled_selective_scan):
    """Returns ((out, last, grads) fused, (out, last, grads) reference in float64)."""
    names = list(inputs)
    results = []
    extra = {} if lengths is None else {"lengths": lengths}
    for fn, cast in ((fused, None), (coupled_selective_scan_ref, torch.float64)):
        xs = {k: (v.detach().to(cast) if cast else v.detach().clone()).requires_grad_() for k, v in inputs.items()}
        w = coupling
        if isinstance(coupling, torch.Tensor):
            w = (coupling.detach().to(cast) if cast else coupling.detach().clone()).requires_grad_()
        out, last = fn(**xs, delta_softplus=delta_softplus, coupling=w, return_last_state=True, **extra)
        g = torch.Generator().manual_seed(123)
        dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
        dlast = torch.randn(last.shape, generator=g, dtype=torch.float64).to(out.device)
        loss = (out.double() * dout).sum() + (last.double() * dlast).sum()
        wrt = [xs[k] for k in names] + ([w] if isinstance(w, torch.Tensor) else [])
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
        else:  # an empty size: nothing depends on the inputs, every gradient is zero
            grads = [torch.zeros_like(t) for t in wrt]
        results.append((out, last, dict(zip(names + ["coupling"], grads))))
    return results


def error_under_isa(code: str, isa: str) -> float:
    """Runs ``code`` (which prints coupled_mamba.cpu_isa() and an error) in a subprocess with the
    CPU kernels capped at ``isa``; checks those kernels ran (avx2 may be missing) and returns the
    error."""
    env = dict(os.environ, COUPLED_MAMBA_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    chosen, err = res.stdout.split()
    cpu_has_avx2 = "avx2" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    assert chosen == isa or (isa == "avx2" and not cpu_has_avx2)
    return float(err)
