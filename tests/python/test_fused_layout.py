"""The CPU paths that skip copies around the scan: the fused causal conv + SiLU against PyTorch's
conv in float64, and the scan's gradients written straight into strided layouts."""
import pytest
import torch
import torch.nn.functional as F

from coupled_mamba.ops.causal_conv import causal_conv_silu
from scan_helpers import coupled_selective_scan_ref, coupling_for, rel
from coupled_mamba import coupled_selective_scan

pytestmark = pytest.mark.usefixtures("poisoned_outputs")


def conv_silu_ref(x, weight, bias):
    """silu(causal depthwise conv) with torch.nn.functional.conv1d, x (C, R, L)."""
    C, R, L = x.shape
    k = weight.shape[1]
    xr = F.pad(x.permute(1, 0, 2), (k - 1, 0))  # (R, C, L + k - 1)
    y = F.conv1d(xr, weight[:, None, :], bias, groups=C)
    return F.silu(y).permute(1, 0, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [(5, 3, 37, 4), (7, 2, 3, 4), (3, 1, 1, 3), (6, 4, 19, 1), (9, 3, 70, 6)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_silu_matches_conv1d(size, dtype, with_bias):
    C, R, L, k = size
    g = torch.Generator().manual_seed(C * 100 + L)
    x = torch.randn(C, R, L, generator=g, dtype=torch.float64)
    w = torch.randn(C, k, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64) if with_bias else None
    dy = torch.randn(C, R, L, generator=g, dtype=torch.float64)
    tol = 1e-12 if dtype == torch.float64 else 1e-5

    fused = [t.to(dtype).clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = causal_conv_silu(*fused)
    yr = conv_silu_ref(*ref)
    assert y.dtype == dtype and y.shape == (C, R, L)
    assert rel(y, yr) < tol
    y.backward(dy.to(dtype))
    yr.backward(dy)
    for name, a, r in zip(("x", "weight", "bias"), fused, ref):
        if a is not None:
            assert a.grad.dtype == dtype
            assert rel(a.grad, r.grad) < tol * 10, name


def test_conv_silu_rejects_bad_arguments():
    x = torch.randn(4, 2, 5)
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv_silu(x, torch.randn(3, 4))
    with pytest.raises(ValueError, match="bias must be"):
        causal_conv_silu(x, torch.randn(4, 4), torch.randn(5))
    with pytest.raises(ValueError, match="float32 or float64"):
        causal_conv_silu(x.half(), torch.randn(4, 4).half())


@pytest.mark.parametrize("coupling", ["mean", "none", "matrix"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_in_the_layout_of_strided_inputs(coupling, dtype):
    """Inputs as the layer passes them, views of (M, channels, Bt, L) tensors (some sliced out of
    bigger ones), get an output and gradients equal to the reference's and laid out like
    torch.empty_like of the input (the output like u's)."""
    Bt, M, D, N, L = 3, 3, 11, 7, 37
    g = torch.Generator().manual_seed(7)

    def seq(rows, extra=0):  # (Bt, M, rows, L) view of an (M, rows + extra, Bt, L) tensor
        t = torch.randn(M, rows + extra, Bt, L, generator=g, dtype=torch.float64)
        return t[:, extra:].permute(2, 0, 1, 3)

    u, z = seq(D), seq(D, extra=D)
    delta = seq(D) * 0.5 - 1.0
    B, C = seq(N, extra=2), seq(N, extra=N + 2)
    A = -torch.rand(M, D, N, generator=g, dtype=torch.float64) - 0.5
    Dskip, bias = torch.randn(M, D, generator=g, dtype=torch.float64), torch.randn(M, D, generator=g, dtype=torch.float64)
    inputs = dict(u=u, delta=delta, A=A, B=B, C=C, D=Dskip, z=z, delta_bias=bias)
    w = coupling_for(coupling, M)
    dout = torch.randn(Bt, M, D, L, generator=g, dtype=torch.float64)

    grads = {}
    for fn, cast in ((coupled_selective_scan, dtype), (coupled_selective_scan_ref, torch.float64)):
        xs = {k: v.detach().to(cast).requires_grad_() for k, v in inputs.items()}
        if dtype != torch.float64 and fn is coupled_selective_scan:  # keep the strides through the cast
            xs = {k: torch.empty_like(v.detach(), dtype=cast).copy_(v).requires_grad_() for k, v in inputs.items()}
        ww = w.to(cast) if isinstance(w, torch.Tensor) else w
        out = fn(**xs, delta_softplus=True, coupling=ww)
        # autograd.grad returns the op's gradients as they are (.grad of a non-dense leaf is made contiguous)
        grads[fn] = dict(zip(xs, torch.autograd.grad((out.double() * dout).sum(), list(xs.values()))))
        if fn is coupled_selective_scan:
            assert out.stride() == torch.empty_like(xs["u"]).stride()  # out shares u's layout
            for k, v in xs.items():
                assert grads[fn][k].stride() == torch.empty_like(v).stride(), k
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    for k in inputs:
        assert rel(grads[coupled_selective_scan][k], grads[coupled_selective_scan_ref][k]) < tol, k


def test_masked_steps_as_minus_inf_equal_dt_zero(monkeypatch):
    """The CPU layer's masked path (token-major Functions, delta = -inf into the kernel's bias +
    softplus) gives the outputs and gradients of the explicit one (plain autograd ops, softplus in
    PyTorch, dt = 0 at masked steps)."""
    from coupled_mamba.modules import layer as layer_module
    from coupled_mamba.modules import projections

    torch.manual_seed(0)
    layer = layer_module.CoupledMambaLayer(16, 3, d_state=8)
    x = torch.randn(3, 3, 37, 16)
    lengths = torch.tensor([[37, 20, 5], [11, 37, 30], [0, 9, 25]])
    mask = torch.arange(37)[None, None] < lengths[..., None]
    results = []
    takes = projections.takes
    for fused in (True, False):
        monkeypatch.setattr(projections, "takes", takes if fused else (lambda *a: False))
        monkeypatch.setattr(layer_module, "_masks_with_minus_inf", lambda t: fused)
        layer.zero_grad()
        xx = x.clone().requires_grad_()
        out = layer(xx, mask) * mask[..., None]
        out.square().sum().backward()
        results.append((out.detach(), xx.grad, {k: p.grad.clone() for k, p in layer.named_parameters()}))
    (out, dx, grads), (ref_out, ref_dx, ref_grads) = results
    assert rel(out, ref_out) < 1e-6 and rel(dx, ref_dx) < 1e-6
    for k in grads:
        assert rel(grads[k], ref_grads[k]) < 1e-5, k


@pytest.mark.parametrize("d_conv", [1, 4, 17])
def test_layer_fused_conv_matches_the_pytorch_conv_path(d_conv, monkeypatch):
    """The layer's fused CPU conv and its PyTorch conv path give the same output and gradients;
    a kernel wider than the library takes (17 > 16) runs on the PyTorch path instead of failing."""
    from coupled_mamba.modules import CoupledMambaLayer
    from coupled_mamba.ops import causal_conv

    torch.manual_seed(3)
    layer = CoupledMambaLayer(12, 3, d_state=5, d_conv=d_conv, coupling="mean").double()
    x = torch.randn(2, 3, 19, 12, dtype=torch.float64)

    def run():
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        out = layer(xi)
        out.sum().backward()
        return out.detach(), xi.grad, layer.conv_weight.grad.clone()

    fused = run()
    monkeypatch.setattr(causal_conv, "supports", lambda *a, **k: False)
    plain = run()
    for a, b in zip(fused, plain):
        assert rel(a, b) < 1e-10
