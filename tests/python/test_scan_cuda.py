"""The CUDA kernels against the float64 reference: every output and gradient, for each dtype,
coupling mode and the odd sizes of the CPU tests, with NaN-filled output buffers. Skipped, with
the reason, where there is no GPU or the build has no CUDA kernels."""
import zlib

import pytest
import torch

import coupled_mamba
from coupled_mamba import coupled_selective_scan
from coupled_mamba.ops.library import cuda_device_count, cuda_unavailable_reason, has_cuda
from coupled_mamba.ops import random_lengths
from scan_helpers import SIZES, TOL, coupled_selective_scan_ref, coupling_for, make_inputs, rel, run_with


def _skip_reason():
    if not has_cuda():
        return "this build of coupled-mamba has no CUDA kernels (no nvcc at install time)"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None  # a GPU torch sees but the library does not is a failure (test below), not a skip


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
              pytest.mark.usefixtures("poisoned_outputs")]


def test_library_sees_the_gpu_torch_sees():
    assert cuda_device_count() == torch.cuda.device_count(), cuda_unavailable_reason()


def run_cuda_and_reference(inputs, coupling, dtype, delta_softplus=True, seed=123):
    """(out, last, grads) of the CUDA op in `dtype` and of the float64 CPU reference."""
    names = list(inputs)
    g = torch.Generator().manual_seed(seed)
    results = []
    for fn, device, cast in ((coupled_selective_scan, "cuda", None), (coupled_selective_scan_ref, "cpu", torch.float64)):
        xs = {}
        for k, v in inputs.items():
            t = v.detach().to(cast) if cast else v.detach()
            if cast is None and k in ("u", "delta", "B", "C", "z"):
                t = t.to(dtype)
            xs[k] = t.to(device).requires_grad_()
        w = coupling
        if isinstance(coupling, torch.Tensor):
            w = coupling.detach().to(cast or torch.float32).to(device).requires_grad_()
        out, last = fn(**xs, delta_softplus=delta_softplus, coupling=w, return_last_state=True)
        if not results:
            dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
            dlast = torch.randn(last.shape, generator=g, dtype=torch.float64)
        loss = (out.double() * dout.to(device)).sum() + (last.double() * dlast.to(device)).sum()
        wrt = [xs[k] for k in names] + ([w] if isinstance(w, torch.Tensor) else [])
        grads = torch.autograd.grad(loss, wrt)
        results.append((out.cpu(), last.cpu(), {k: v.cpu() for k, v in zip(names + ["coupling"], grads)}))
    return results


CUDA_SIZES = SIZES + [(1, 8, 3, 3, 33), (2, 3, 70, 64, 50), (1, 3, 33, 256, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("coupling", ["mean", "sum", "none", "matrix"])
@pytest.mark.parametrize("size", CUDA_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_matches_reference(size, coupling, dtype):
    Bt, M, D, N, L = size
    if coupling == "sum" and M * L > 300:
        pytest.skip("'sum' grows like M^L; covered at shorter lengths")
    inputs = make_inputs(*size, dtype=torch.float64, seed=zlib.crc32(repr((size, coupling)).encode()) % 1000)
    if dtype != torch.float32:  # the reference sees the same rounded sequence inputs
        inputs = {k: v.to(dtype).double() if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    (out, last, grads), (rout, rlast, rgrads) = run_cuda_and_reference(inputs, coupling_for(coupling, M), dtype)
    tol_out, tol_grad = TOL[dtype]
    assert out.dtype == dtype and last.dtype == torch.float32
    assert rel(out, rout) < tol_out
    assert rel(last, rlast) < tol_out
    for k, gr in grads.items():
        assert rel(gr, rgrads[k]) < tol_grad, k


@pytest.mark.parametrize("coupling", ["mean", "matrix", "none"])
def test_cuda_backward_is_bitwise_deterministic(coupling):
    inputs = make_inputs(2, 3, 96, 64, 100, dtype=torch.float32, seed=5)
    first = run_cuda_and_reference(inputs, coupling_for(coupling, 3), torch.float32)[0]
    second = run_cuda_and_reference(inputs, coupling_for(coupling, 3), torch.float32)[0]
    for k in first[2]:
        assert torch.equal(first[2][k], second[2][k]), k


def test_cuda_matches_cpu_kernels():
    x = make_inputs(2, 3, 40, 16, 70, dtype=torch.float32, seed=3)
    cpu = coupled_selective_scan(**x, delta_softplus=True, coupling="mean")
    gpu = coupled_selective_scan(**{k: v.cuda() for k, v in x.items()}, delta_softplus=True, coupling="mean")
    assert rel(gpu.cpu(), cpu) < 1e-5


def test_cuda_strided_inputs_and_lengths_zero_and_one():
    x = make_inputs(2, 2, 5, 7, 9, dtype=torch.float32, seed=4)
    big = {k: (torch.cat([v, v], dim=-1)[..., ::2] if k in ("u", "delta", "z") else v) for k, v in x.items()}
    xs = {k: v.cuda() for k, v in big.items()}
    out = coupled_selective_scan(**xs, delta_softplus=True)
    ref = coupled_selective_scan_ref(**{k: v.double() for k, v in big.items()}, delta_softplus=True)
    assert rel(out.cpu(), ref) < 1e-4
    for L in (0, 1):
        x = {k: v.cuda() for k, v in make_inputs(2, 3, 4, 5, L, dtype=torch.float32, seed=6).items()}
        out, last = coupled_selective_scan(**x, delta_softplus=True, return_last_state=True)
        assert out.shape[-1] == L and torch.isfinite(last).all()
        if L == 0:
            assert torch.equal(last, x["initial_state"])


def test_cuda_nan_propagates():
    x = {k: v.cuda() for k, v in make_inputs(1, 2, 3, 4, 8, dtype=torch.float32, seed=7).items()}
    x["u"][0, 1, 2, 3] = float("nan")
    out = coupled_selective_scan(**x, delta_softplus=True, coupling="none")
    assert torch.isnan(out[0, 1, 2, 3:]).all() and torch.isfinite(out[0, 0]).all()


def test_cuda_rejects_float64_clearly():
    x = {k: v.cuda() for k, v in make_inputs(1, 2, 3, 4, 5, dtype=torch.float64).items()}
    with pytest.raises(TypeError, match="float64"):
        coupled_selective_scan(**x)


def test_cuda_under_torch_compile():
    x = {k: v.cuda().requires_grad_() for k, v in make_inputs(2, 3, 8, 5, 40, dtype=torch.float32, seed=8).items()}

    def f(**kw):
        return coupled_selective_scan(**kw, delta_softplus=True, coupling="mean").square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(**x)
    loss.backward()
    grads = {k: v.grad.clone() for k, v in x.items()}
    for v in x.values():
        v.grad = None
    f(**x).backward()
    for k, v in x.items():
        assert torch.allclose(grads[k], v.grad), k


@pytest.mark.parametrize("segments", [0, 1, 3])
@pytest.mark.parametrize("coupling", ["mean", "none", "matrix"])
def test_cuda_time_segments_match_reference(segments, coupling):
    """Both layouts (one block walking all of L, and time segments) agree with the reference; a
    small grid at long L is where the automatic choice (0) splits."""
    size = (1, 3, 8, 6, 400)
    inputs = make_inputs(*size, dtype=torch.float64, seed=11)
    coupled_mamba.set_cuda_time_segments(segments)
    try:
        (out, last, grads), (rout, rlast, rgrads) = run_cuda_and_reference(inputs, coupling_for(coupling, 3),
                                                                           torch.float32)
    finally:
        coupled_mamba.set_cuda_time_segments(0)
    assert rel(out, rout) < 1e-4 and rel(last, rlast) < 1e-4
    for k, gr in grads.items():
        assert rel(gr, rgrads[k]) < 1e-3, k


# ---- per-sample lengths ----

SEQ = ("u", "delta", "B", "C", "z")


def run_cuda_and_reference_with_lengths(inputs, coupling, dtype, lengths):
    """(out, last, grads) of the CUDA op with `lengths` (on the GPU; its inputs and dout at padded
    steps are NaN, which the kernels must never read) and of the float64 reference on the clean
    inputs (rounded to `dtype` like the op's), on the CPU."""
    if dtype != torch.float32:
        inputs = {k: v.to(dtype).double() if k in SEQ else v for k, v in inputs.items()}
    Bt, M, D, L = inputs["u"].shape
    N = inputs["A"].shape[-1]
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(Bt, M, D, L, generator=g, dtype=torch.float64)
    dlast = torch.randn(Bt, M, D, N, generator=g, dtype=torch.float64)
    padded = torch.arange(L)[None, :] >= lengths[:, None]  # (Bt, L)
    mask = padded[:, None, None, :]
    xg = {k: (v.masked_fill(mask, float("nan")).to(dtype) if k in SEQ else v.float()).cuda() for k, v in inputs.items()}
    w = coupling.float().cuda() if isinstance(coupling, torch.Tensor) else coupling
    got = run_with(coupled_selective_scan, xg, w, dout.masked_fill(mask, float("nan")).cuda(), dlast.cuda(),
                   lengths=lengths.cuda())
    ref = run_with(coupled_selective_scan_ref, inputs, coupling, dout, dlast, cast=torch.float64, lengths=lengths)
    return got, ref, padded


def check_lengths_results(got, ref, padded, dtype):
    (out, last, grads), (rout, rlast, rgrads) = got, ref
    tol_out, tol_grad = TOL[dtype]
    assert out.dtype == dtype and last.dtype == torch.float32
    assert rel(out.cpu(), rout) < tol_out and rel(last.cpu(), rlast) < tol_out
    for k, gr in grads.items():
        assert rel(gr.cpu(), rgrads[k]) < tol_grad, k
    # Exact zeros at the padded steps, in out and every per-step gradient.
    assert torch.count_nonzero(out.detach().cpu().permute(0, 3, 1, 2)[padded]) == 0
    for k in SEQ:
        assert torch.count_nonzero(grads[k].cpu().permute(0, 3, 1, 2)[padded]) == 0, k


LENGTH_SIZES = [(5, 3, 4, 7, 63), (4, 1, 3, 9, 7), (3, 2, 33, 16, 1), (3, 5, 2, 17, 130), (3, 3, 40, 64, 50),
                (3, 8, 3, 3, 33), (3, 3, 33, 256, 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("coupling", ["mean", "sum", "none", "matrix"])
@pytest.mark.parametrize("size", LENGTH_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_lengths_match_reference(size, coupling, dtype):
    """Random lengths with 0, 1 and L among them: the CUDA kernels against the float64 reference."""
    Bt, M, D, N, L = size
    if coupling == "sum" and M * L > 300:
        pytest.skip("'sum' grows like M^L; covered at shorter lengths")
    inputs = make_inputs(*size, dtype=torch.float64, seed=zlib.crc32(repr((size, coupling, "len")).encode()) % 1000)
    lengths = random_lengths(Bt, L, seed=L)
    got, ref, padded = run_cuda_and_reference_with_lengths(inputs, coupling_for(coupling, M), dtype, lengths)
    check_lengths_results(got, ref, padded, dtype)


@pytest.mark.parametrize("segments", [0, 1, 3])
@pytest.mark.parametrize("coupling", ["mean", "none", "matrix"])
def test_cuda_lengths_with_time_segments(segments, coupling):
    """Lengths ending inside, at the end of and before time segments (a small grid at long L)."""
    size = (5, 3, 8, 6, 400)
    inputs = make_inputs(*size, dtype=torch.float64, seed=12)
    lengths = torch.tensor([400, 0, 1, 133, 267])
    coupled_mamba.set_cuda_time_segments(segments)
    try:
        got, ref, padded = run_cuda_and_reference_with_lengths(inputs, coupling_for(coupling, 3), torch.float32,
                                                               lengths)
    finally:
        coupled_mamba.set_cuda_time_segments(0)
    check_lengths_results(got, ref, padded, torch.float32)


def test_cuda_lengths_match_cpu_kernels_and_int32():
    x = make_inputs(4, 3, 40, 16, 70, dtype=torch.float32, seed=3)
    lengths = torch.tensor([70, 0, 1, 38], dtype=torch.int32)
    cpu = coupled_selective_scan(**x, delta_softplus=True, coupling="mean", return_last_state=True, lengths=lengths)
    gpu = coupled_selective_scan(**{k: v.cuda() for k, v in x.items()}, delta_softplus=True, coupling="mean",
                                 return_last_state=True, lengths=lengths.cuda())
    assert rel(gpu[0].cpu(), cpu[0]) < 1e-5 and rel(gpu[1].cpu(), cpu[1]) < 1e-5
    assert torch.equal(gpu[1][1].cpu(), x["initial_state"][1])  # length 0: the initial state


def test_cuda_bad_lengths_are_rejected():
    x = {k: v.cuda() for k, v in make_inputs(3, 2, 2, 3, 10, dtype=torch.float32).items()}
    with pytest.raises(ValueError, match=r"lengths: expected every length in \[0, L = 10\], got values in \[1, 11\]"):
        coupled_selective_scan(**x, lengths=torch.tensor([1, 2, 11], device="cuda"))
    with pytest.raises(ValueError, match=r"lengths: expected a tensor on cuda"):
        coupled_selective_scan(**x, lengths=torch.tensor([1, 2, 3]))


def test_cuda_lengths_under_torch_compile():
    x = {k: v.cuda().requires_grad_() for k, v in make_inputs(3, 3, 8, 5, 40, dtype=torch.float32, seed=8).items()}
    lengths = torch.tensor([40, 0, 17], device="cuda")

    def f(lengths, **kw):
        return coupled_selective_scan(**kw, delta_softplus=True, coupling="mean", lengths=lengths).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    compiled(lengths, **x).backward()
    grads = {k: v.grad.clone() for k, v in x.items()}
    for v in x.values():
        v.grad = None
    f(lengths, **x).backward()
    for k, v in x.items():
        assert torch.allclose(grads[k], v.grad), k
