"""The CUDA op against the float64 reference through the Python API, without pytest (for GPU
machines whose image lacks it; tests/python/test_scan_cuda.py is the full suite). Exit 1 on failure."""
import sys

import torch

from coupled_mamba import coupled_selective_scan
from coupled_mamba.ops import coupled_selective_scan_ref, make_inputs, settings

TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (1e-2, 3e-2), torch.float16: (1e-2, 3e-2)}
SEQ = ("u", "delta", "B", "C", "z")


def inputs(Bt, M, D, N, L, seed):
    return make_inputs(Bt, M, D, N, L, dtype=torch.float64, seed=seed)


def run(fn, x, coupling, device, dtype):
    xs = {k: (v.to(dtype) if (k in SEQ and dtype) else v).to(device).requires_grad_() for k, v in x.items()}
    w = coupling.to(device).requires_grad_() if isinstance(coupling, torch.Tensor) else coupling
    out, last = fn(**xs, delta_softplus=True, coupling=w, return_last_state=True)
    g = torch.Generator().manual_seed(1)
    loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)).sum() + \
        (last.double() * torch.randn(last.shape, generator=g, dtype=torch.float64).to(device)).sum()
    wrt = list(xs.values()) + ([w] if isinstance(w, torch.Tensor) else [])
    return [out, last] + list(torch.autograd.grad(loss, wrt))


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float("inf") if not torch.isfinite(a).all() else float((a - b).norm() / b.norm().clamp_min(1e-300))


def main():
    settings.POISON_OUTPUTS = True
    failed = passed = 0
    sizes = [(2, 3, 5, 7, 1), (1, 1, 3, 5, 7), (2, 3, 17, 19, 63), (1, 2, 2, 3, 2049), (2, 3, 70, 64, 50),
             (1, 8, 3, 3, 33), (1, 3, 33, 256, 9)]
    for size in sizes:
        for cname in ("mean", "sum", "none", "matrix"):
            if cname == "sum" and size[1] * size[4] > 300:
                continue
            M = size[1]
            coupling = torch.rand(M, M, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.6 - 0.1 \
                if cname == "matrix" else cname
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                x = inputs(*size, seed=sum(size))
                x = {k: (v.to(dtype).double() if k in SEQ else v) for k, v in x.items()}
                ref = run(coupled_selective_scan_ref, x, coupling, "cpu", None)
                got = run(coupled_selective_scan, {k: v.float() for k, v in x.items()},
                          coupling.float() if isinstance(coupling, torch.Tensor) else coupling, "cuda", dtype)
                errs = [rel(a, b) for a, b in zip(got, ref)]
                tol_out, tol_grad = TOL[dtype]
                ok = errs[0] < tol_out and errs[1] < tol_out and all(e < tol_grad for e in errs[2:])
                passed, failed = passed + ok, failed + (not ok)
                if not ok:
                    print(f"FAILED {size} {cname} {dtype}: rel errors {[f'{e:.2e}' for e in errs]}")
    print(f"op check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
