"""The layer's projection Functions (python/coupled_mamba/modules/projections.py) against plain
autograd: finite differences in float64, the whole layer and stack against their plain-autograd
path, the layouts the Functions promise, and the stack's modality-major residual stream."""
import pytest
import torch
import torch.nn.functional as F

from coupled_mamba.modules import CoupledMamba, CoupledMambaLayer, build_model, masked_mean, projections
from coupled_mamba.modules import layer as layer_module


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def r64(*shape, g):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("with_bias", [True, False])
def test_norm_in_proj_gradcheck(with_bias):
    g = torch.Generator().manual_seed(1)
    M, rows, d, E = 3, 7, 5, 4
    args = (r64(M, rows, d, g=g), 1 + r64(M, d, g=g), r64(M, d, g=g), r64(M, 2 * E, d, g=g),
            r64(M, 2 * E, g=g) if with_bias else None)
    args = tuple(a.requires_grad_() if a is not None else None for a in args)
    assert torch.autograd.gradcheck(lambda *a: projections.NormInProj.apply(*a, 1e-5), args)
    # against LayerNorm + affine + matmul
    x, w, b, W, bias = args
    u, z = projections.NormInProj.apply(*args, 1e-5)
    xn = F.layer_norm(x, (d,), eps=1e-5) * w[:, None] + b[:, None]
    want = xn @ W.transpose(1, 2) + (bias[:, None] if bias is not None else 0)
    assert u.shape == z.shape == (M, rows, E)
    assert rel(torch.cat([u, z], -1), want) < 1e-12
    assert u.is_contiguous() and z.is_contiguous()


@pytest.mark.parametrize("masked", [False, True])
def test_selective_proj_matches_autograd(masked):
    g = torch.Generator().manual_seed(2)
    M, E, Bt, L, R, N = 3, 6, 2, 5, 2, 3
    u, xw, dtw = r64(M, Bt * L, E, g=g), r64(M, R + 2 * N, E, g=g), r64(M, E, R, g=g)
    minus_inf = None
    keep = torch.rand(M, Bt * L, 1, generator=g) > 0.3
    if masked:
        minus_inf = torch.zeros(M, Bt * L, 1, dtype=torch.float64).masked_fill_(~keep, float("-inf"))
    grads_out = [r64(M, Bt * L, E, g=g), r64(M, Bt * L, E, g=g), r64(M, Bt * L, N, g=g), r64(M, Bt * L, N, g=g)]

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (u, xw, dtw)]
        outs = fn(*leaves)
        # the scan's gradient of u arrives as a tensor the Function may accumulate into
        torch.autograd.backward(outs, [t.clone() for t in grads_out])
        return [o.detach() for o in outs], [t.grad for t in leaves]

    def plain(u_, xw_, dtw_):
        x_dbl = u_ @ xw_.transpose(1, 2)
        delta = x_dbl[..., :R] @ dtw_.transpose(1, 2)
        if masked:
            delta = delta.masked_fill(~keep, float("-inf"))
        return u_ * 1.0, delta, x_dbl[..., R:R + N], x_dbl[..., R + N:]

    got_out, got_grads = run(lambda *a: projections.SelectiveProj.apply(*a, minus_inf))
    want_out, want_grads = run(plain)
    for a, b in zip(got_out, want_out):
        assert torch.equal(a.isinf(), b.isinf()) and rel(a.nan_to_num(posinf=0, neginf=0), b.nan_to_num(posinf=0, neginf=0)) < 1e-12
    for a, b in zip(got_grads, want_grads):
        assert rel(a, b) < 1e-12
    if not masked:
        leaves = tuple(t.clone().requires_grad_() for t in (u, xw, dtw))
        assert torch.autograd.gradcheck(lambda *a: projections.SelectiveProj.apply(*a, None), leaves)


@pytest.mark.parametrize("with_bias", [True, False])
def test_out_proj_residual_gradcheck_and_layout(with_bias):
    g = torch.Generator().manual_seed(3)
    M, E, rows, d = 3, 6, 9, 4
    args = (r64(M, rows, E, g=g), r64(M, d, E, g=g), r64(M, d, g=g) if with_bias else None, r64(M, rows, d, g=g))
    args = tuple(a.requires_grad_() if a is not None else None for a in args)
    assert torch.autograd.gradcheck(projections.OutProjResidual.apply, args)
    y, W, bias, res = args
    out = projections.OutProjResidual.apply(*args)
    want = res + y @ W.transpose(1, 2) + (bias[:, None] if bias is not None else 0)
    assert rel(out, want) < 1e-12 and out.is_contiguous()
    (dy,) = torch.autograd.grad(out, y, r64(M, rows, d, g=g))
    assert dy.is_contiguous()


@pytest.mark.parametrize("coupling", ["mean", "learned", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_layer_equals_its_plain_autograd_path(coupling, bias, masked, monkeypatch):
    """The layer through the Functions and through plain autograd ops (what runs under autocast
    or off the CPU): same output and gradients, float64, fresh random inputs and parameters."""
    torch.manual_seed(4)
    Bt, M, L, d = 3, 3, 23, 12
    layer = CoupledMambaLayer(d, M, d_state=5, d_conv=3, coupling=coupling, bias=bias).double()
    with torch.no_grad():
        for p in layer.parameters():  # away from the initialisation's ones and zeros
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(Bt, M, L, d, dtype=torch.float64)
    mask = None
    if masked:
        lengths = torch.tensor([[23, 11, 4], [17, 23, 0], [9, 2, 23]])
        mask = torch.arange(L)[None, None] < lengths[..., None]
    dout = torch.randn(Bt, M, L, d, dtype=torch.float64)

    def run():
        layer.zero_grad()
        xx = x.clone().requires_grad_()
        out = layer(xx, mask)
        (out * dout).sum().backward()
        return out.detach(), xx.grad, {k: p.grad.clone() for k, p in layer.named_parameters()}

    out, dx, grads = run()
    monkeypatch.setattr(projections, "takes", lambda *a: False)
    monkeypatch.setattr(layer_module, "_masks_with_minus_inf", lambda t: True)
    ref_out, ref_dx, ref_grads = run()
    assert out.is_contiguous()
    assert rel(out, ref_out) < 1e-12 and rel(dx, ref_dx) < 1e-12
    for k in grads:
        assert rel(grads[k], ref_grads[k]) < 1e-10, k


def test_stack_features_by_modality_and_pooling():
    """CoupledMamba.forward is the stack of features_by_modality; the Coupled Mamba model's pooled
    features equal masked_mean of its fuse output."""
    torch.manual_seed(5)
    net = CoupledMamba(8, 3, n_layers=2, d_state=4, d_conv=3)
    x = torch.randn(2, 3, 9, 8)
    mask = torch.rand(2, 3, 9) > 0.3
    with torch.no_grad():
        y = net(x, mask)
        feats = net.features_by_modality(x, mask)
    assert y.shape == x.shape and y.is_contiguous()
    assert all(torch.equal(y[:, m], f) for m, f in enumerate(feats))
    model = build_model("coupled-mean", [5, 3, 4], d_model=8, n_layers=2, d_state=4, seq_len=6, dropout=0.0,
                        align="pad").eval()
    xs = [torch.randn(2, 6, dm) for dm in (5, 3, 4)]
    lengths = [torch.tensor([6, 3]), torch.tensor([2, 6]), torch.tensor([6, 0])]
    with torch.no_grad():
        x, mask = model.frontend(xs, lengths)
        feats, mask = model.fuse(x, mask)
        torch.testing.assert_close(model.fuse_and_pool(x, mask), masked_mean(feats, mask), rtol=0, atol=1e-7)


def test_masked_mean_and_pad_alignment_drop_nan_at_masked_steps():
    """The pooling and the pad alignment select valid steps (NaN and Inf past a length never
    reach the result) and equal the plain mean / copy over them."""
    from coupled_mamba.modules import align_modalities

    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 7, 4, generator=g)
    mask = torch.rand(3, 2, 7, generator=g) > 0.4
    mask[0, 0] = False  # a stream with no valid step pools to zeros
    poisoned = x.masked_fill(~mask[..., None], float("nan"))
    poisoned[1, 1, ~mask[1, 1]] = float("inf")
    got = masked_mean(poisoned, mask)
    for b in range(3):
        for k in range(2):
            want = x[b, k][mask[b, k]].mean(0) if mask[b, k].any() else torch.zeros(4)
            torch.testing.assert_close(got[b, k], want)
    xs = [torch.randn(2, 5, 3, generator=g), torch.randn(2, 4, 2, generator=g)]
    lengths = [torch.tensor([5, 2]), torch.tensor([1, 4])]
    xs[0][1, 2:] = float("nan")
    xs[1][0, 1:] = float("inf")
    aligned, m = align_modalities(xs, lengths, mode="pad", seq_len=5)
    for a, x_, n in zip(aligned, xs, lengths):
        assert a.shape[1] == 5 and torch.isfinite(a).all()
        for b in range(2):
            assert torch.equal(a[b, :n[b]], x_[b, :n[b]]) and (a[b, n[b]:] == 0).all()


@pytest.mark.parametrize("kind, align", [("coupled-mean", "pad"), ("coupled-learned", "resample")])
def test_training_step_under_torch_compile(kind, align):
    # The Functions' backward passes add into and scale the scan's gradients in place; traced by
    # torch.compile they must give eager's output and every parameter gradient.
    torch.manual_seed(0)
    dims = [6, 4, 5]
    model = build_model(kind, dims, d_model=16, n_layers=2, d_state=8, seq_len=12, align=align, dropout=0.0).train()
    xs = [torch.randn(3, 12, d) for d in dims]
    lengths = [torch.tensor([12, 7, 3]), torch.tensor([12, 9, 12]), torch.tensor([12, 12, 5])]

    def step(m):
        model.zero_grad(set_to_none=True)
        out = m(xs, lengths)
        (out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    want_out, want = step(model)
    got_out, got = step(torch.compile(model, backend="aot_eager"))
    torch.testing.assert_close(got_out, want_out, rtol=1e-6, atol=1e-6)
    assert got.keys() == want.keys() and all(g is not None for g in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
