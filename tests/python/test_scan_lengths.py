"""Per-sample lengths: sample b is scanned over its first lengths[b] steps only. The op must give
what running each sample alone on its truncated inputs gives (float64 oracle), with exact zeros
in the outputs and gradients of the padded steps."""
import pytest
import torch

from coupled_mamba import CoupledSelectiveScanFn, coupled_selective_scan
from coupled_mamba.ops import random_lengths
from scan_helpers import TOL, coupled_selective_scan_ref, coupling_for, make_inputs, rel, run_both, run_with

pytestmark = pytest.mark.usefixtures("poisoned_outputs")

SEQ = ("u", "delta", "B", "C", "z")
SIZES = [(5, 3, 4, 7, 63), (4, 1, 3, 9, 7), (3, 5, 2, 17, 130), (3, 2, 33, 16, 1), (3, 2, 3, 5, 2049)]


def _truncated_runs(x, w, lengths, dout, dlast):
    """(out, last, grads) of each sample alone on its truncated inputs, through the reference,
    with the matching slices of the cotangents."""
    per_sample = []
    for b, n in enumerate(lengths.tolist()):
        xb = {k: (v[b:b + 1, ..., :n] if k in SEQ else v[b:b + 1] if k == "initial_state" else v)
              for k, v in x.items()}
        per_sample.append(run_with(coupled_selective_scan_ref, xb, w, dout[b:b + 1, ..., :n], dlast[b:b + 1],
                                   cast=torch.float64))
    return per_sample


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("coupling", ["mean", "sum", "none", "matrix"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_lengths_match_truncated_samples(size, coupling, dtype):
    Bt, M, D, N, L = size
    if coupling == "sum" and M * L > 300:
        pytest.skip("'sum' grows like M^L; covered at shorter lengths")
    if L > 1000 and (dtype != torch.float64 or coupling not in ("mean", "matrix")):
        pytest.skip("the long size runs for the two kernel paths only, to keep the reference loop short")
    x = make_inputs(*size, dtype=dtype, seed=L + M)
    lengths = random_lengths(Bt, L, seed=L)
    w = coupling_for(coupling, M)
    if isinstance(w, torch.Tensor):
        w = w.to(dtype)
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(Bt, M, D, L, generator=g, dtype=torch.float64)
    dlast = torch.randn(Bt, M, D, N, generator=g, dtype=torch.float64)
    out, last, grads = run_with(coupled_selective_scan, x, w, dout, dlast, lengths=lengths)
    rout, rlast, rgrads = run_with(coupled_selective_scan_ref, x, w, dout, dlast, cast=torch.float64, lengths=lengths)
    tol_out, tol_grad = TOL[dtype]
    assert rel(out, rout) < tol_out and rel(last, rlast) < tol_out
    for k, g in grads.items():
        assert rel(g, rgrads[k]) < tol_grad, k
    # The padded steps: exact zeros in out and every per-step gradient.
    steps = torch.arange(L)
    padded = steps[None, :] >= lengths[:, None]  # (Bt, L)
    assert torch.count_nonzero(out.detach().permute(0, 3, 1, 2)[padded]) == 0
    for k in SEQ:
        assert torch.count_nonzero(grads[k].permute(0, 3, 1, 2)[padded]) == 0, k
    if L > 200:
        return  # the per-sample check below loops the reference once per sample
    # Each sample alone on its truncated inputs: out, last state and its own gradients; the
    # shared parameters' gradients are sums over samples.
    alone = _truncated_runs(x, w, lengths, dout, dlast)
    for b, (ro, rl, rg) in enumerate(alone):
        n = int(lengths[b])
        assert rel(out[b:b + 1, ..., :n], ro) < tol_out if n else True
        assert rel(last[b:b + 1], rl) < tol_out
        for k in SEQ:
            if n:
                assert rel(grads[k][b:b + 1, ..., :n], rg[k]) < tol_grad, (b, k)
        assert rel(grads["initial_state"][b:b + 1], rg["initial_state"]) < tol_grad
    for k in ("A", "D", "delta_bias") + (("coupling",) if isinstance(w, torch.Tensor) else ()):
        total = sum(rg[k] for _, _, rg in alone)
        assert rel(grads[k], total) < tol_grad, k


def test_lengths_full_equals_no_lengths():
    x = make_inputs(3, 3, 5, 7, 40, dtype=torch.float64)
    a = coupled_selective_scan(**x, delta_softplus=True, return_last_state=True)
    b = coupled_selective_scan(**x, delta_softplus=True, return_last_state=True,
                               lengths=torch.full((3,), 40, dtype=torch.int64))
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_gradcheck_with_lengths():
    x = make_inputs(3, 2, 2, 3, 6, dtype=torch.float64)
    names = list(x)
    lengths = torch.tensor([0, 4, 6])
    w = coupling_for("matrix", 2)

    def f(*ts):
        kw = dict(zip(names, ts[:-1]))
        return coupled_selective_scan(**kw, delta_softplus=True, coupling=ts[-1], return_last_state=True,
                                      lengths=lengths)

    tensors = [x[k].requires_grad_() for k in names] + [w.requires_grad_()]
    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_int32_lengths_and_autograd_function():
    x = make_inputs(3, 3, 4, 5, 20, dtype=torch.float64)
    lengths = torch.tensor([20, 0, 9], dtype=torch.int32)
    a = {k: v.clone().requires_grad_() for k, v in x.items()}
    b = {k: v.clone().requires_grad_() for k, v in x.items()}
    out_a, last_a = CoupledSelectiveScanFn.apply(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                                 a["delta_bias"], True, "mean", a["initial_state"], True, lengths)
    out_b, last_b = coupled_selective_scan(**b, delta_softplus=True, return_last_state=True, lengths=lengths.long())
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    (out_a.sum() + last_a.square().sum()).backward()
    (out_b.sum() + last_b.square().sum()).backward()
    for k in x:
        torch.testing.assert_close(a[k].grad, b[k].grad, rtol=0, atol=0)
    torch.testing.assert_close(last_a[1].detach(), x["initial_state"][1], rtol=0, atol=0)  # length 0
    assert torch.count_nonzero(out_a[1].detach()) == 0


@pytest.mark.parametrize("bad, exc, pattern", [
    (torch.tensor([1, 2]), ValueError, r"lengths: expected shape \(Bt,\) = \(3,\), got \(2,\)"),
    (torch.tensor([1.0, 2.0, 3.0]), TypeError, r"lengths: expected dtype in \(torch.int32, torch.int64\), got torch.float32"),
    (torch.tensor([1, 2, 11]), ValueError, r"lengths: expected every length in \[0, L = 10\], got values in \[1, 11\]"),
    (torch.tensor([-1, 2, 3]), ValueError, r"lengths: expected every length in \[0, L = 10\], got values in \[-1, 3\]"),
    (torch.tensor([[1, 2, 3]]), ValueError, r"lengths: expected a 1-D tensor"),
    ([1, 2, 3], TypeError, r"lengths: expected a torch.Tensor, got list"),
    (torch.tensor([1, 2, 3], device="meta"), ValueError, r"lengths: expected a tensor on cpu \(like u\), got one on meta"),
])
def test_bad_lengths(bad, exc, pattern):
    x = make_inputs(3, 2, 2, 3, 10)
    with pytest.raises(exc, match=pattern):
        coupled_selective_scan(**x, lengths=bad)


def test_lengths_under_torch_compile_and_opcheck():
    x = make_inputs(3, 3, 4, 6, 12)
    lengths = torch.tensor([12, 5, 0])

    def block(u, delta, A, B, C, D, z, delta_bias, initial_state, lengths):
        y = coupled_selective_scan(u * 2, delta, A, B, C, D, z, delta_bias, True, "mean", initial_state,
                                   lengths=lengths)
        return torch.tanh(y).sum(dim=-1)

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}
    expected = block(**xs, lengths=lengths)
    got = compiled(**xs, lengths=lengths)
    torch.testing.assert_close(got, expected)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, 0, 1.0 / 3, None,
            x["initial_state"], lengths, True)
    torch.library.opcheck(torch.ops.coupled_mamba.scan_fwd.default, args)
