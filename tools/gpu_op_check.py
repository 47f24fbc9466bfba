"""The CUDA op against the float64 reference through the Python API, without pytest (for GPU
machines whose image lacks it; tests/python/test_scan_cuda.py is the full suite), with and without
per-sample lengths (then also exact zeros at the padded steps). Exit 1 on failure."""
import sys

import torch

from coupled_mamba import coupled_selective_scan
from coupled_mamba.ops import coupled_selective_scan_ref, make_inputs, random_lengths, settings

TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (1e-2, 3e-2), torch.float16: (1e-2, 3e-2)}
SEQ = ("u", "delta", "B", "C", "z")


def inputs(Bt, M, D, N, L, seed):
    return make_inputs(Bt, M, D, N, L, dtype=torch.float64, seed=seed)


def run(fn, x, coupling, device, dtype, lengths=None):
    xs = {k: (v.to(dtype) if (k in SEQ and dtype) else v).to(device).requires_grad_() for k, v in x.items()}
    w = coupling.to(device).requires_grad_() if isinstance(coupling, torch.Tensor) else coupling
    extra = {} if lengths is None else {"lengths": lengths.to(device)}
    out, last = fn(**xs, delta_softplus=True, coupling=w, return_last_state=True, **extra)
    g = torch.Generator().manual_seed(1)
    loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)).sum() + \
        (last.double() * torch.randn(last.shape, generator=g, dtype=torch.float64).to(device)).sum()
    wrt = list(xs.values()) + ([w] if isinstance(w, torch.Tensor) else [])
    return [out, last] + list(torch.autograd.grad(loss, wrt))


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float("inf") if not torch.isfinite(a).all() else float((a - b).norm() / b.norm().clamp_min(1e-300))


def padded_nonzeros(results, lengths):
    """Nonzero elements of out and of the per-step gradients (u, delta, B, C, z) at padded steps."""
    padded = torch.arange(results[0].shape[-1])[None, :] >= lengths[:, None]
    seq = [results[0]] + [results[2 + i] for i in (0, 1, 3, 4, 6)]  # out, du, ddelta, dB, dC, dz
    return sum(int(torch.count_nonzero(t.detach().cpu().permute(0, 3, 1, 2)[padded])) for t in seq)


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
            for dtype, with_lengths in ((torch.float32, False), (torch.bfloat16, False), (torch.float16, False),
                                        (torch.float32, True), (torch.bfloat16, True)):
                # Per-sample lengths with 0, 1 and L among them where the batch has 3 samples.
                Bt, L = (max(size[0], 3), size[4]) if with_lengths else (size[0], size[4])
                lengths = random_lengths(Bt, L, seed=L) if with_lengths else None
                x = inputs(Bt, *size[1:], seed=sum(size))
                x = {k: (v.to(dtype).double() if k in SEQ else v) for k, v in x.items()}
                ref = run(coupled_selective_scan_ref, x, coupling, "cpu", None, lengths)
                got = run(coupled_selective_scan, {k: v.float() for k, v in x.items()},
                          coupling.float() if isinstance(coupling, torch.Tensor) else coupling, "cuda", dtype, lengths)
                errs = [rel(a, b) for a, b in zip(got, ref)]
                tol_out, tol_grad = TOL[dtype]
                ok = errs[0] < tol_out and errs[1] < tol_out and all(e < tol_grad for e in errs[2:])
                zeros = padded_nonzeros(got, lengths) if with_lengths else 0
                ok = ok and zeros == 0
                passed, failed = passed + ok, failed + (not ok)
                if not ok:
                    print(f"FAILED {size} {cname} {dtype} lengths {lengths}: rel errors "
                          f"{[f'{e:.2e}' for e in errs]}, {zeros} nonzeros at padded steps")
    print(f"op check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
