"""The fused op against the float64 reference: forward, last state and every gradient."""
import os
import subprocess
import sys
import zlib

import pytest
import torch

import coupled_mamba
from coupled_mamba import CoupledSelectiveScanFn, coupled_selective_scan
from scan_helpers import (COUPLINGS, SIZES, TOL, coupled_selective_scan_ref, coupling_for, error_under_isa, make_inputs,
                          rel, run_both)

pytestmark = pytest.mark.usefixtures("poisoned_outputs")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(size, coupling, dtype):
    Bt, M, D, N, L = size
    if coupling == "sum" and M * L > 300:
        pytest.skip("'sum' grows like M^L; covered at shorter lengths")
    inputs = make_inputs(*size, dtype=dtype, seed=zlib.crc32(repr((size, coupling)).encode()) % 1000)
    w = coupling_for(coupling, M)
    if isinstance(w, torch.Tensor):
        w = w.to(torch.float64 if dtype == torch.float64 else torch.float32)
    (out, last, grads), (rout, rlast, rgrads) = run_both(inputs, w)
    tol_out, tol_grad = TOL[dtype]
    assert out.dtype == dtype and last.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel(out, rout) < tol_out
    assert rel(last, rlast) < tol_out
    for k, g in grads.items():
        assert g.dtype == (inputs[k].dtype if k != "coupling" else w.dtype)
        assert rel(g, rgrads[k]) < tol_grad, k


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_without_optional_inputs_and_softplus(coupling):
    inputs = make_inputs(2, 3, 6, 11, 40, dtype=torch.float64, optional=False, dt_shift=0.5)
    inputs["delta"] = inputs["delta"].abs() + 0.01  # dt used as given: keep it positive
    (out, last, grads), (rout, rlast, rgrads) = run_both(inputs, coupling_for(coupling, 3), delta_softplus=False)
    assert rel(out, rout) < 1e-10 and rel(last, rlast) < 1e-10
    for k in grads:
        assert rel(grads[k], rgrads[k]) < 1e-9, k


@pytest.mark.parametrize("softplus", [True, False])
def test_float32_decay_overflow_is_inf(softplus):
    """exp(dt A) past float32's range is +inf, not garbage. The CPU kernels leave out the upper
    clamp of their exp only where every dt A <= 0 (dt from the softplus and every A <= 0), so an
    A > 0, or a dt < 0 without the softplus, must keep it. Channel 0 of modality 0 overflows
    (dt A = 120 at every step); the other modalities (coupling "none") match the reference."""
    x = make_inputs(2, 3, 9, 13, 5, dtype=torch.float32, seed=3, initial_state=True)
    with torch.no_grad():
        if softplus:
            x["delta"][:, 0, 0] = 3.0 - x["delta_bias"][0, 0]  # dt = softplus(3) ~ 3.05
            x["A"][0, 0] = 120.0 / float(torch.nn.functional.softplus(torch.tensor(3.0)))
        else:
            x["delta"] = x["delta"].abs() + 0.01
            x["delta"][:, 0, 0] = -3.0
            x["A"][0, 0] = -40.0
    out, last = coupled_selective_scan(**x, delta_softplus=softplus, coupling="none", return_last_state=True)
    ref_out, ref_last = coupled_selective_scan_ref(**{k: v.double() for k, v in x.items()}, delta_softplus=softplus,
                                                   coupling="none", return_last_state=True)
    assert not torch.isfinite(last[:, 0, 0]).any()
    assert (ref_last[:, 0, 0].abs() > 3.4e38).all()  # the reference overflows float32 too
    assert rel(out[:, 1:], ref_out[:, 1:]) < TOL[torch.float32][0]
    assert rel(last[:, 1:], ref_last[:, 1:]) < TOL[torch.float32][0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    inputs = make_inputs(2, 3, 8, 16, 50, dtype=dtype)
    (out, last, grads), (rout, rlast, rgrads) = run_both(inputs, "mean")
    assert out.dtype == dtype and last.dtype == torch.float32
    assert rel(out, rout) < 1e-2 and rel(last, rlast) < 1e-2
    for k, g in grads.items():
        assert rel(g, rgrads[k]) < 3e-2, k


@pytest.mark.parametrize("coupling", ["mean", "sum", "none", "matrix"])
def test_gradcheck_float64(coupling):
    x = make_inputs(1, 3, 2, 3, 5, dtype=torch.float64)
    names = list(x)
    w = coupling_for(coupling, 3)
    tensors = [x[k].requires_grad_() for k in names]
    if isinstance(w, torch.Tensor):
        tensors.append(w.requires_grad_())

    def f(*ts):
        kw = dict(zip(names, ts))
        return coupled_selective_scan(**kw, delta_softplus=True, coupling=ts[-1] if isinstance(w, torch.Tensor) else w,
                                      return_last_state=True)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_none_equals_separate_single_modality_scans():
    x = make_inputs(2, 4, 6, 10, 33, dtype=torch.float64)
    out, last = coupled_selective_scan(**x, delta_softplus=True, coupling="none", return_last_state=True)
    for m in range(4):
        xm = {k: (v[:, m:m + 1] if v.dim() == 4 else v[m:m + 1]) for k, v in x.items()}
        om, lm = coupled_selective_scan(**xm, delta_softplus=True, coupling="none", return_last_state=True)
        torch.testing.assert_close(out[:, m:m + 1], om, rtol=0, atol=0)
        torch.testing.assert_close(last[:, m:m + 1], lm, rtol=0, atol=0)


def test_sum_overflows_float32_where_mean_stays_finite():
    # Small dt: exp(dt A) ~ 1, so the summed state grows like 3^t and overflows float32 near L = 80.
    x = make_inputs(1, 3, 4, 8, 200, dtype=torch.float32, optional=False, dt_shift=-7.0)
    out_sum = coupled_selective_scan(**x, delta_softplus=True, coupling="sum")
    out_mean = coupled_selective_scan(**x, delta_softplus=True, coupling="mean")
    assert not torch.isfinite(out_sum).all()
    first_bad = int((~torch.isfinite(out_sum)).nonzero()[:, -1].min())
    assert 60 <= first_bad <= 100, first_bad
    assert torch.isfinite(out_mean).all()
    # The reference agrees where sum is still finite.
    ref = coupled_selective_scan_ref(**{k: v.double() for k, v in x.items()}, delta_softplus=True, coupling="sum")
    assert rel(out_sum[..., :50], ref[..., :50]) < 1e-4


def test_nan_propagates():
    x = make_inputs(1, 2, 3, 5, 10)
    x["u"][0, 0, 1, 4] = float("nan")
    out = coupled_selective_scan(**x, delta_softplus=True, coupling="mean")
    assert torch.isnan(out[0, 0, 1, 4:]).all()
    assert torch.isnan(out[0, 1, 1, 5:]).all()  # the other modality through the coupled state at t + 1
    assert torch.isfinite(out[0, :, :, :4]).all() and torch.isfinite(out[0, 1, 1, 4]) and torch.isfinite(out[0, :, 0]).all()


@pytest.mark.parametrize("coupling", ["mean", "none", "W"])
def test_nan_in_A_propagates_through_exp(coupling):
    # A NaN in A reaches the output only through the kernels' exponential exp(dt A) (whose input is
    # clamped by min / max instructions): it must come out NaN, not 0 or inf, from the first step on.
    x = make_inputs(1, 2, 3, 5, 10)
    with torch.no_grad():
        x["A"][0, 1, 2] = float("nan")
    c = torch.tensor([[0.7, 0.3], [0.4, 0.6]]) if coupling == "W" else coupling
    out = coupled_selective_scan(**x, delta_softplus=True, coupling=c)
    assert torch.isnan(out[0, 0, 1]).all()
    if coupling != "none":  # the other modality through the coupled state from t = 1
        assert torch.isnan(out[0, 1, 1, 1:]).all() and torch.isfinite(out[0, 1, 1, 0])
    else:
        assert torch.isfinite(out[0, 1]).all()
    assert torch.isfinite(out[0, :, 0]).all() and torch.isfinite(out[0, :, 2]).all()


def test_non_contiguous_inputs():
    x = make_inputs(2, 3, 5, 7, 20, dtype=torch.float64)
    strided = {}
    for k, v in x.items():
        if v.dim() == 4:  # time axis not contiguous, and a sliced batch axis
            strided[k] = v.transpose(-1, -2).contiguous().transpose(-1, -2)
        else:
            strided[k] = v.transpose(0, -1).contiguous().transpose(0, -1)
    wide = torch.randn(4, *x["u"].shape[1:], dtype=x["u"].dtype)
    wide[::2] = x["u"]
    strided["u"] = wide[::2]  # stride 2 over the batch
    torch.testing.assert_close(strided["u"], x["u"])
    a = coupled_selective_scan(**strided, delta_softplus=True, coupling="mean")
    b = coupled_selective_scan(**x, delta_softplus=True, coupling="mean")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_length_zero_and_one():
    x = make_inputs(2, 3, 4, 5, 0, dtype=torch.float64)
    xs = {k: v.requires_grad_() for k, v in x.items()}
    out, last = coupled_selective_scan(**xs, delta_softplus=True, coupling="mean", return_last_state=True)
    assert out.shape == (2, 3, 4, 0)
    torch.testing.assert_close(last, x["initial_state"])
    dlast = torch.randn_like(last)
    (last * dlast).sum().backward()
    torch.testing.assert_close(xs["initial_state"].grad, dlast)
    assert xs["A"].grad.abs().sum() == 0

    x1 = make_inputs(2, 3, 4, 5, 1, dtype=torch.float64)
    (o, l, g), (ro, rl, rg) = run_both(x1, "mean")
    assert rel(o, ro) < 1e-10 and rel(l, rl) < 1e-10
    for k in g:
        assert rel(g[k], rg[k]) < 1e-9


def test_autograd_function_matches_op():
    x = make_inputs(2, 3, 5, 7, 20, dtype=torch.float64)
    a = {k: v.clone().requires_grad_() for k, v in x.items()}
    b = {k: v.clone().requires_grad_() for k, v in x.items()}
    out_a, last_a = CoupledSelectiveScanFn.apply(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                                 a["delta_bias"], True, "mean", a["initial_state"], True)
    out_b, last_b = coupled_selective_scan(**b, delta_softplus=True, coupling="mean", return_last_state=True)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    (out_a.sum() + last_a.square().sum()).backward()
    (out_b.sum() + last_b.square().sum()).backward()
    for k in x:
        torch.testing.assert_close(a[k].grad, b[k].grad, rtol=0, atol=0)
    single = CoupledSelectiveScanFn.apply(a["u"], a["delta"], a["A"], a["B"], a["C"])
    torch.testing.assert_close(single, coupled_selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"]))


@pytest.mark.parametrize("coupling", ["matrix", "mean", "none"])
def test_backward_is_deterministic_across_runs_and_threads(coupling):
    x = make_inputs(3, 3, 70, 16, 150)
    w = coupling_for(coupling, 3)
    grads = []
    for threads in (1, 2, 2):
        coupled_mamba.set_num_threads(threads)
        try:
            xs = {k: v.clone().requires_grad_() for k, v in x.items()}
            wt = w.float().clone().requires_grad_() if isinstance(w, torch.Tensor) else w
            out, last = coupled_selective_scan(**xs, delta_softplus=True, coupling=wt, return_last_state=True)
            (out.square().sum() + last.sum()).backward()
            grads.append([out, last] + [xs[k].grad for k in x] + ([wt.grad] if isinstance(w, torch.Tensor) else []))
        finally:
            coupled_mamba.set_num_threads(None)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("coupling", ["mean", "matrix"])
def test_infinite_dt_leaves_earlier_gradients_finite(coupling):
    """dt = +inf at t = 4 zeroes exp(dt A): gradients before it stay finite, as in the reference
    (N = 5 leaves padding lanes in the kernels' vector blocks, which must not turn into NaN)."""
    x = make_inputs(1, 3, 3, 5, 10, dtype=torch.float64)
    x["delta"][0, 1, 2, 4] = float("inf")
    w = coupling_for(coupling, 3)
    grads = []
    for fn in (coupled_selective_scan, coupled_selective_scan_ref):
        xs = {k: v.clone().requires_grad_() for k, v in x.items()}
        out = fn(**xs, delta_softplus=True, coupling=w)
        dout = torch.ones_like(out)
        dout[..., 4:] = 0  # the loss ignores the infinite outputs
        out.backward(dout)
        grads.append({k: xs[k].grad for k in ("u", "delta", "B", "C", "z")})
    for k, g in grads[0].items():
        assert torch.isfinite(g[..., :4]).all(), k
        torch.testing.assert_close(g[..., :4], grads[1][k][..., :4], rtol=1e-9, atol=1e-12)


def test_opcheck():
    x = make_inputs(2, 3, 4, 5, 9)
    for coupling, w in ((0, None), (1, None), (2, torch.rand(3, 3))):
        args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, coupling,
                1.0 / 3, w, x["initial_state"], None, True)
        torch.library.opcheck(torch.ops.coupled_mamba.scan_fwd.default, args)
        args_ng = args[:-1] + (False,)
        torch.library.opcheck(torch.ops.coupled_mamba.scan_fwd.default, args_ng,
                              test_utils=("test_schema", "test_faketensor"))


def test_torch_compile():
    x = make_inputs(2, 3, 4, 6, 12)

    def block(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y = coupled_selective_scan(u * 2, delta, A, B, C, D, z, delta_bias, True, "mean", initial_state)
        return torch.tanh(y).sum(dim=-1)

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}
    expected = block(**xs)
    got = compiled(**xs)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    g_compiled = xs["u"].grad.clone()
    xs["u"].grad = None
    expected.sum().backward()
    torch.testing.assert_close(g_compiled, xs["u"].grad)


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_cpu_instruction_set(isa):
    """The dispatcher picks the widest kernels; the narrower ones must agree with the reference too."""
    code = (
        "import torch, coupled_mamba as cm\n"
        "from coupled_mamba.ops import coupled_selective_scan_ref as ref\n"
        "torch.manual_seed(0)\n"
        "u=torch.randn(2,3,5,70); dl=torch.randn(2,3,5,70)*.5-1; A=-torch.rand(3,5,13)-.5\n"
        "B=torch.randn(2,3,13,70); C=torch.randn(2,3,13,70)\n"
        "o=cm.coupled_selective_scan(u,dl,A,B,C,delta_softplus=True)\n"
        "r=ref(u.double(),dl.double(),A.double(),B.double(),C.double(),delta_softplus=True)\n"
        "print(cm.cpu_isa(), float((o.double()-r).norm()/r.norm()))\n"
    )
    assert error_under_isa(code, isa) < 1e-4


def test_unknown_cpu_instruction_set_is_reported_and_ignored():
    code = "import torch, coupled_mamba as cm; cm.coupled_selective_scan(*[torch.randn(1, 1, 2, 3)] * 2, " \
           "-torch.rand(1, 2, 4), torch.randn(1, 1, 4, 3), torch.randn(1, 1, 4, 3)); print(cm.cpu_isa())"
    env = dict(os.environ, COUPLED_MAMBA_CPU_ISA="avx9000")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "COUPLED_MAMBA_CPU_ISA=avx9000 is not baseline, avx2 or avx512; ignoring it" in res.stderr
    assert res.stdout.strip() in ("avx512", "avx2", "baseline")


def test_torch_compile_inductor_backward_with_strided_inputs():
    """Inductor checks the fake op's output strides against the real ones: both contiguous."""
    x = make_inputs(2, 3, 4, 6, 12)
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}

    def block(u, delta, A, B, C, D, z, delta_bias, initial_state):
        u = u.transpose(-1, -2).contiguous().transpose(-1, -2)  # a strided input to the op
        return coupled_selective_scan(u, delta, A, B, C, D, z, delta_bias, True, "mean", initial_state).sum()

    torch._dynamo.reset()
    loss = torch.compile(block, backend="inductor")(**xs)
    loss.backward()
    expected = {k: v.clone().requires_grad_() for k, v in x.items()}
    block(**expected).backward()
    for k in x:
        torch.testing.assert_close(xs[k].grad, expected[k].grad, rtol=1e-5, atol=1e-6)


def test_backward_from_several_threads_at_once():
    """The CPU backward keeps its partial-sum buffers per calling thread (cpp/src/cpu/workspace.h)
    and reuses them across calls: calls from several Python threads at once, of different sizes,
    give the same bits as the same calls one after another."""
    import threading

    sizes = [(2, 3, 19, 13, 37), (3, 2, 40, 9, 70), (1, 4, 33, 17, 5)]
    problems = []
    for i, size in enumerate(sizes):
        x = make_inputs(*size, dtype=torch.float32, seed=40 + i)
        dout = torch.randn(size[0], size[1], size[2], size[4], generator=torch.Generator().manual_seed(i))
        problems.append((x, dout))

    def grads(x, dout):
        xs = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
        out = coupled_selective_scan(**xs, delta_softplus=True, coupling="mean")
        return torch.autograd.grad((out * dout).sum(), list(xs.values()))

    expected = [grads(*p) for p in problems]
    results, errors = {}, []

    def worker(w):
        try:
            for r in range(4):
                i = (w + r) % len(problems)
                results[(w, r)] = (i, grads(*problems[i]))
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 12
    for i, got in results.values():
        for g, e in zip(got, expected[i]):
            assert torch.equal(g, e)
