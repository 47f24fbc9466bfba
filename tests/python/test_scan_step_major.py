"""Step-major sequence tensors on the CPU: (Bt, M, R, L) views whose R values of one step are
contiguous (a (Bt, M, L, R) tensor transposed, or slices of a model's (M, batch * L, width)
activations). The library reads and writes them in place; results come back in each input's
layout. Checked against the float64 reference, forward and every gradient."""
import zlib

import pytest
import torch

import coupled_mamba
from coupled_mamba import coupled_selective_scan
from scan_helpers import COUPLINGS, SIZES, TOL, coupling_for, error_under_isa, make_inputs, rel, run_both

pytestmark = pytest.mark.usefixtures("poisoned_outputs")

SEQ = ("u", "delta", "z", "B", "C")


def step_major(t: torch.Tensor) -> torch.Tensor:
    """The same values, each step's R values contiguous."""
    return t.transpose(2, 3).contiguous().transpose(2, 3)


def check_against_reference(inputs, w, dtype, lengths=None):
    (out, last, grads), (rout, rlast, rgrads) = run_both(inputs, w, lengths=lengths)
    tol_out, tol_grad = TOL[dtype]
    assert rel(out, rout) < tol_out
    assert rel(last, rlast) < tol_out
    for k, g in grads.items():
        assert rel(g, rgrads[k]) < tol_grad, k
        if k in SEQ:  # each gradient in its input's layout
            assert g.stride() == torch.empty_like(inputs[k]).stride(), k
    assert out.stride() == torch.empty_like(inputs["u"]).stride()  # out in u's layout
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_step_major_matches_reference(size, coupling, dtype):
    Bt, M, D, N, L = size
    if coupling == "sum" and M * L > 300:
        pytest.skip("'sum' grows like M^L; covered at shorter lengths")
    inputs = make_inputs(*size, dtype=dtype, seed=zlib.crc32(repr((size, coupling, "steps")).encode()) % 1000)
    inputs = {k: step_major(v) if k in SEQ else v for k, v in inputs.items()}
    w = coupling_for(coupling, M)
    if isinstance(w, torch.Tensor):
        w = w.to(torch.float64 if dtype == torch.float64 else torch.float32)
    check_against_reference(inputs, w, dtype)


@pytest.mark.parametrize("coupling", ["mean", "none", "matrix"])
def test_model_activation_slices_with_lengths(coupling):
    """u, z as the two halves of one (M, Bt * L, 2D) tensor and B, C as slices of one
    (M, Bt * L, R + 2N) tensor (steps apart by the full width), as a layer's projections make them."""
    Bt, M, D, N, L, R = 3, 4, 21, 6, 70, 3
    g = torch.Generator().manual_seed(5)
    xz = torch.randn(M, Bt, L, 2 * D, generator=g, dtype=torch.float64)
    x_dbl = torch.randn(M, Bt, L, R + 2 * N, generator=g, dtype=torch.float64)
    delta = torch.randn(M, Bt, L, D, generator=g, dtype=torch.float64) * 0.5 - 1

    def view(t):  # (M, Bt, L, width) -> (Bt, M, width, L)
        return t.permute(1, 0, 3, 2)

    base = make_inputs(Bt, M, D, N, L, dtype=torch.float64, seed=9)
    inputs = dict(base, u=view(xz[..., :D]), z=view(xz[..., D:]), delta=view(delta),
                  B=view(x_dbl[..., R:R + N]), C=view(x_dbl[..., R + N:]))
    lengths = torch.tensor([L, 1, 33])
    out, grads = check_against_reference(inputs, coupling_for(coupling, M), torch.float64, lengths=lengths)
    assert out.stride() == (L * D, Bt * L * D, 1, D)  # u's slice layout, made dense


def test_mixed_layouts_in_one_call():
    """A group follows its first tensor (u for the channel rows, B for the state rows); the others
    are converted, and every gradient still comes back in its own input's layout."""
    inputs = make_inputs(2, 3, 19, 9, 40, dtype=torch.float64, seed=3)
    for first_steps in (True, False):
        mixed = dict(inputs)
        for k, steps in (("u", first_steps), ("delta", not first_steps), ("z", first_steps),
                         ("B", not first_steps), ("C", first_steps)):
            mixed[k] = step_major(inputs[k]) if steps else inputs[k]
        check_against_reference(mixed, coupling_for("matrix", 3), torch.float64)


def test_step_major_and_row_major_agree():
    """The same values in either layout: results within float32 rounding of each other."""
    x = make_inputs(2, 3, 40, 16, 130, seed=4)
    a = coupled_selective_scan(**x, delta_softplus=True, coupling="mean")
    b = coupled_selective_scan(**{k: step_major(v) if k in SEQ else v for k, v in x.items()},
                               delta_softplus=True, coupling="mean")
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("coupling", ["matrix", "mean", "none"])
def test_step_major_backward_is_deterministic_across_threads(coupling):
    x = make_inputs(3, 3, 70, 16, 150)
    x = {k: step_major(v) if k in SEQ else v for k, v in x.items()}
    w = coupling_for(coupling, 3)
    grads = []
    for threads in (1, 2):
        coupled_mamba.set_num_threads(threads)
        try:
            xs = {k: v.clone().requires_grad_() for k, v in x.items()}
            wt = w.float().clone().requires_grad_() if isinstance(w, torch.Tensor) else w
            out, last = coupled_selective_scan(**xs, delta_softplus=True, coupling=wt, return_last_state=True)
            (out.square().sum() + last.sum()).backward()
            grads.append([out, last] + [xs[k].grad for k in x] + ([wt.grad] if isinstance(w, torch.Tensor) else []))
        finally:
            coupled_mamba.set_num_threads(None)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_opcheck_step_major():
    """The fake (shape-only) op promises the strides the real one returns, for step-major inputs."""
    x = make_inputs(2, 3, 4, 5, 9)
    x = {k: step_major(v) if k in SEQ else v for k, v in x.items()}
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, 0, 1.0 / 3, None,
            x["initial_state"], None, True)
    torch.library.opcheck(torch.ops.coupled_mamba.scan_fwd.default, args)


def test_opcheck_backward_step_major_and_mixed():
    """scan_bwd's fake promises each gradient in its input's layout, step-major or mixed."""
    x = make_inputs(2, 3, 4, 5, 9)
    for steps in (SEQ, ("u", "z", "C")):
        y = {k: step_major(v) if k in steps else v for k, v in x.items()}
        ck = torch.ops.coupled_mamba.scan_fwd(y["u"], y["delta"], y["A"], y["B"], y["C"], y["D"], y["z"],
                                              y["delta_bias"], True, 0, 1.0 / 3, None, y["initial_state"], None,
                                              True)[2]
        dout = step_major(torch.randn_like(x["u"])) if "u" in steps else torch.randn_like(x["u"])
        args = (y["u"], y["delta"], y["A"], y["B"], y["C"], y["D"], y["z"], y["delta_bias"], True, 0, 1.0 / 3, None,
                y["initial_state"], None, ck, dout, None)
        torch.library.opcheck(torch.ops.coupled_mamba.scan_bwd.default, args,
                              test_utils=("test_schema", "test_faketensor"))
        grads = torch.ops.coupled_mamba.scan_bwd(*args)
        for name, g in zip(("u", "delta", "A", "B", "C", "D", "z"), grads):
            assert g.stride() == torch.empty_like(y[name]).stride(), name


def test_no_channel_gives_zero_step_major_state_gradients():
    """D = 0: no channel feeds B or C, so dB and dC are zero everywhere (poisoned outputs would show
    any element left unwritten)."""
    x = make_inputs(2, 3, 0, 5, 9, dtype=torch.float64)
    x = {k: step_major(v) if k in ("B", "C") else v for k, v in x.items()}
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}
    out, last = coupled_selective_scan(**xs, delta_softplus=True, coupling="mean", return_last_state=True)
    (out.sum() + last.sum()).backward()
    for k in ("B", "C"):
        assert xs[k].grad.stride() == x[k].stride() and torch.equal(xs[k].grad, torch.zeros_like(x[k])), k


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_step_major_on_every_cpu_instruction_set(isa):
    code = (
        "import torch, coupled_mamba as cm\n"
        "from coupled_mamba.ops import coupled_selective_scan_ref as ref\n"
        "torch.manual_seed(0)\n"
        "s=lambda t: t.transpose(2,3).contiguous().transpose(2,3)\n"
        "x=dict(u=torch.randn(2,3,21,70), delta=torch.randn(2,3,21,70)*.5-1, A=-torch.rand(3,21,13)-.5,\n"
        "       B=torch.randn(2,3,13,70), C=torch.randn(2,3,13,70), z=torch.randn(2,3,21,70))\n"
        "xs={k:(s(v) if k!='A' else v).detach().requires_grad_() for k,v in x.items()}\n"
        "xr={k:v.double().requires_grad_() for k,v in x.items()}\n"
        "o=cm.coupled_selective_scan(**xs,delta_softplus=True); r=ref(**xr,delta_softplus=True)\n"
        "o.sum().backward(); r.sum().backward()\n"
        "e=max([float((o.double()-r).norm()/r.norm())]+[float((xs[k].grad.double()-xr[k].grad).norm()/xr[k].grad.norm()) for k in x])\n"
        "assert xs['u'].grad.stride()==xs['u'].stride()\n"
        "print(cm.cpu_isa(), e)\n"
    )
    assert error_under_isa(code, isa) < 1e-3
