"""The CUDA kernels against the float64 reference: every output and gradient, for each dtype,
coupling mode and the odd sizes of the CPU tests, with NaN-filled output buffers. Skipped, with
the reason, where there is no GPU or the build has no CUDA kernels."""
import zlib

import pytest
import torch

import coupled_mamba
from coupled_mamba import coupled_selective_scan
from coupled_mamba.ops.library import cuda_device_count, cuda_unavailable_reason, has_cuda
from scan_helpers import SIZES, TOL, coupled_selective_scan_ref, coupling_for, make_inputs, rel


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
