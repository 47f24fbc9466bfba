"""Tests of the Coupled Mamba modules (python/coupled_mamba/modules): shapes and masks, padding
invariance, gradients, the uncoupled layer against independent layers, streaming step against
the full forward, checkpoint round trips, training of every model, autocast and torch.compile.
Sizes are tiny so the suite stays fast with the pure-PyTorch reference scan."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from coupled_mamba.modules import (
    COUPLINGS,
    MODEL_KINDS,
    CoupledMamba,
    CoupledMambaForMultimodal,
    CoupledMambaLayer,
    align_modalities,
    build_model,
    coupled_scan_step,
    resample_to_bins,
)
from coupled_mamba.ops import coupled_selective_scan_ref

DIMS = [5, 3, 4]  # three modalities of different widths
SMALL = dict(d_model=16, n_layers=2, d_state=4, d_conv=3, expand=2, seq_len=8, dropout=0.0, n_heads=2)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(batch=3, lens=(10, 12, 7), dims=DIMS, ragged=True):
    """Random inputs with a different length per modality and, if ragged, per sample."""
    xs = [torch.randn(batch, T, d) for T, d in zip(lens, dims)]
    lengths = None
    if ragged:
        lengths = [torch.randint(1, T + 1, (batch,)) for T in lens]
        for n, T in zip(lengths, lens):
            n[0] = T  # one full-length sample
    return xs, lengths


def garbage_after(xs, lengths):
    """Same inputs with everything past each sample's length replaced by large random values."""
    out = []
    for x, n in zip(xs, lengths):
        pad = torch.arange(x.shape[1])[None, :] >= n[:, None]
        out.append(torch.where(pad[..., None], 100 * torch.randn_like(x), x))
    return out


# ---------------------------------------------------------------------------------- alignment


def test_resample_is_the_exact_mean_over_equal_bins():
    T, d, L = 11, 2, 4
    x = torch.randn(5, T, d, dtype=torch.float64)
    lengths = torch.tensor([11, 8, 3, 1, 0])
    x_garbage = x.clone()
    for b, n in enumerate(lengths.tolist()):
        x_garbage[b, n:] = float("nan")  # past the length may be anything
    got = resample_to_bins(x_garbage, L, lengths)
    for b, n in enumerate(lengths.tolist()):
        for j in range(L):
            lo, hi = j * n / L, (j + 1) * n / L
            if n == 0:
                want = torch.zeros(d, dtype=x.dtype)
            else:  # integrate the piecewise-constant signal over [lo, hi)
                want = sum(max(0.0, min(hi, t + 1) - max(lo, t)) * x[b, t] for t in range(n)) / (hi - lo)
            torch.testing.assert_close(got[b, j], want, rtol=1e-10, atol=1e-10)
    # no lengths and T == L: nothing to do
    y = torch.randn(2, L, d)
    assert resample_to_bins(y, L) is y


def test_pad_alignment_masks_and_zeroes_padding():
    xs, lengths = make_inputs()
    aligned, mask = align_modalities(xs, lengths, mode="pad")
    assert mask.shape == (3, 3, 12) and all(a.shape[:2] == (3, 12) for a in aligned)
    for m, (a, n) in enumerate(zip(aligned, lengths)):
        assert torch.equal(mask[:, m].sum(1), n)
        assert (a[~mask[:, m]] == 0).all()
    # equal lengths and no per-sample lengths: no mask at all
    _, mask = align_modalities([torch.randn(2, 6, d) for d in DIMS], None, mode="pad")
    assert mask is None


# ---------------------------------------------------------------------------- shapes and masks


@pytest.mark.parametrize("align", ["resample", "pad"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_shapes_and_padding_invariance(kind, align):
    xs, lengths = make_inputs()
    model = build_model(kind, DIMS, **SMALL, align=align).eval()
    cls_model = build_model(kind, DIMS, task="classification", num_classes=5, **SMALL, align=align).eval()
    with torch.no_grad():
        y = model(xs, lengths)
        assert y.shape == (3,) and torch.isfinite(y).all()
        assert cls_model(xs, lengths).shape == (3, 5)
        assert model(xs).shape == (3,)  # lengths are optional
        # whatever sits past a sample's length, and however much of it, the output is the same
        torch.testing.assert_close(model(garbage_after(xs, lengths), lengths), y, rtol=1e-5, atol=1e-5)
        longer = [torch.cat([x, torch.randn(3, 5, x.shape[-1])], dim=1) for x in xs]
        torch.testing.assert_close(model(longer, lengths), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_masked_steps_never_change_valid_steps(coupling):
    # Directly on the stack: garbage at one modality's masked steps must not leak into any valid
    # step of any modality, although coupling mixes the modalities' states at every step.
    Bt, M, L, d = 2, 3, 9, 8
    net = CoupledMamba(d, M, n_layers=2, d_state=4, d_conv=3, coupling=coupling)
    x = torch.randn(Bt, M, L, d)
    mask = torch.ones(Bt, M, L, dtype=torch.bool)
    mask[0, 1, 4:] = False
    mask[1, 0, 2:] = False
    mask[1, 2, 7:] = False
    x2 = torch.where(mask[..., None], x, 50 * torch.randn_like(x))
    with torch.no_grad():
        y, y2 = net(x, mask), net(x2, mask)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y2[mask], y[mask], rtol=1e-5, atol=1e-5)
    # and masking steps that are valid anyway changes nothing
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.ones_like(mask)), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_long_padding_changes_no_valid_output(coupling):
    """20 valid steps padded to 300: with "sum" the padded steps (dt = 0, so a = 1) would grow the
    summed state like M^t; the op's lengths stop each sample at its last valid step instead."""
    torch.manual_seed(1)
    xs = [torch.randn(2, 20, 5), torch.randn(2, 20, 3)]
    lengths = [torch.tensor([20, 13]), torch.tensor([20, 17])]
    model = build_model(f"coupled-{coupling}", [5, 3], **dict(SMALL, align="pad")).eval()
    with torch.no_grad():
        y = model(xs, lengths)
        padded = [torch.cat([x, 1e3 * torch.randn(2, 280, x.shape[-1])], dim=1) for x in xs]
        y_padded = model(padded, lengths)
    assert torch.isfinite(y).all() and torch.isfinite(y_padded).all()
    torch.testing.assert_close(y_padded, y, rtol=1e-5, atol=1e-5)


def test_empty_modality_is_masked_out():
    xs, lengths = make_inputs()
    lengths[1][2] = 0
    for align in ("resample", "pad"):
        model = build_model("coupled-mean", DIMS, **SMALL, align=align).eval()
        with torch.no_grad():
            y = model(xs, lengths)
            xs2 = [x.clone() for x in xs]
            xs2[1][2] = 1e3 * torch.randn_like(xs2[1][2])
            assert torch.isfinite(y).all()
            torch.testing.assert_close(model(xs2, lengths), y, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- parameters


def test_mamba_initialisation():
    layer = CoupledMambaLayer(16, 3, d_state=8, coupling="learned")
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    assert layer.dt_rank == 1  # ceil(d_state / 8)
    torch.testing.assert_close(layer.A(), -torch.arange(1.0, 9.0).expand(3, 32, 8))
    assert (layer.D == 1).all()
    dt = F.softplus(layer.dt_proj_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    torch.testing.assert_close(layer.coupling_weights(), torch.full((3, 3), 1 / 3))
    assert CoupledMambaForMultimodal(DIMS).backbone.layers[0].coupling == "mean"  # bounded default


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_gradients_reach_every_parameter(kind):
    xs, lengths = make_inputs(lens=(6, 8, 5))
    model = build_model(kind, DIMS, task="classification", num_classes=3, **{**SMALL, "seq_len": 6})
    F.cross_entropy(model(xs, lengths), torch.tensor([0, 1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_learned_coupling_starts_at_mean_and_learns():
    x = torch.randn(2, 3, 7, 8)
    mean = CoupledMambaLayer(8, 3, d_state=4, coupling="mean")
    learned = CoupledMambaLayer(8, 3, d_state=4, coupling="learned")
    learned.load_state_dict(mean.state_dict(), strict=False)
    torch.testing.assert_close(learned(x), mean(x), rtol=1e-6, atol=1e-6)
    learned(x).square().sum().backward()
    assert learned.coupling_logits.grad.abs().sum() > 0


def test_uncoupled_layer_equals_independent_layers():
    # coupling "none": the M blocks are M independent single-modality Mamba layers.
    Bt, M, L, d = 2, 3, 9, 8
    layer = CoupledMambaLayer(d, M, d_state=4, d_conv=3, coupling="none")
    x = torch.randn(Bt, M, L, d)
    with torch.no_grad():
        y = layer(x)
        for m in range(M):
            single = CoupledMambaLayer(d, 1, d_state=4, d_conv=3, coupling="mean")  # M = 1: any mode
            single.load_state_dict({k: v[m : m + 1] for k, v in layer.state_dict().items()})
            torch.testing.assert_close(single(x[:, m : m + 1]), y[:, m : m + 1], rtol=1e-5, atol=1e-6)
    # while a coupled layer with the same parameters differs
    coupled = CoupledMambaLayer(d, M, d_state=4, d_conv=3, coupling="mean")
    coupled.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert rel_err(coupled(x) - x, y - x) > 1e-3  # compare the residual branches


# ------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("coupling", ["mean", "sum", "none", "learned", "tensor"])
def test_scan_step_matches_reference(coupling):
    Bt, M, Dc, N, L = 2, 3, 5, 4, 6
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, delta, z, B, C = r(Bt, M, Dc, L), r(Bt, M, Dc, L), r(Bt, M, Dc, L), r(Bt, M, N, L), r(Bt, M, N, L)
    A, Dp, bias = -torch.rand(M, Dc, N, generator=g, dtype=torch.float64) - 0.1, r(M, Dc), r(M, Dc)
    W = torch.softmax(r(M, M), -1) if coupling in ("learned", "tensor") else coupling
    h0 = r(Bt, M, Dc, N)
    want, want_h = coupled_selective_scan_ref(u, delta, A, B, C, Dp, z, bias, True, W, h0, True)
    h = h0
    for t in range(L):
        y, h = coupled_scan_step(h, u[..., t], delta[..., t], A, B[..., t], C[..., t], Dp, z[..., t], bias, True, W)
        torch.testing.assert_close(y, want[..., t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, want_h, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_step_equals_forward_at_every_step(coupling):
    Bt, M, L, d = 2, 3, 8, 8
    net = CoupledMamba(d, M, n_layers=2, d_state=4, d_conv=3, coupling=coupling).eval()
    if coupling == "learned":  # move away from the mean initialisation
        for layer in net.layers:
            layer.coupling_logits.data.normal_()
    x = torch.randn(Bt, M, L, d)
    mask = torch.ones(Bt, M, L, dtype=torch.bool)
    mask[1, 2, 5:] = False  # one modality of one sample ends early
    with torch.no_grad():
        full, full_masked = net(x), net(x, mask)
        cache, cache_m = net.allocate_cache(Bt), net.allocate_cache(Bt)
        for t in range(L):
            torch.testing.assert_close(net.step(x[:, :, t], cache), full[:, :, t], rtol=1e-4, atol=1e-5)
            y_m = net.step(x[:, :, t], cache_m, mask[:, :, t])
            valid = mask[:, :, t]
            torch.testing.assert_close(y_m[valid], full_masked[:, :, t][valid], rtol=1e-4, atol=1e-5)
        assert cache.seqlen_offset == L
        # chunked forward through the cache: prefill 5 steps, then 3, then step
        cache = net.allocate_cache(Bt)
        first, second = net(x[:, :, :5], cache=cache), net(x[:, :, 5:7], cache=cache)
        torch.testing.assert_close(torch.cat([first, second], 2), full[:, :, :7], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(net.step(x[:, :, 7], cache), full[:, :, 7], rtol=1e-4, atol=1e-5)


def test_model_step_equals_forward_on_every_prefix():
    # The streaming prediction after t frames is the padded model's prediction on the prefix,
    # also when one modality's stream ends early (a per-step mask against lengths).
    Bt, L = 2, 6
    model = build_model("coupled-learned", DIMS, **{**SMALL, "align": "pad"}).eval()
    xs = [torch.randn(Bt, L, d) for d in DIMS]
    lengths = [torch.tensor([L, L]), torch.tensor([L, 3]), torch.tensor([L, L])]
    cache, cache_m = model.allocate_cache(Bt), model.allocate_cache(Bt)
    with torch.no_grad():
        for t in range(L):
            frames = [x[:, t] for x in xs]
            prefix = [x[:, : t + 1] for x in xs]
            torch.testing.assert_close(model.step(frames, cache), model(prefix), rtol=1e-4, atol=1e-5)
            valid = torch.stack([t < n for n in lengths], dim=1)
            want = model(prefix, [n.clamp(max=t + 1) for n in lengths])
            torch.testing.assert_close(model.step(frames, cache_m, valid), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- checkpoints and training


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_state_dict_round_trip(kind):
    xs, lengths = make_inputs()
    model = build_model(kind, DIMS, **SMALL).eval()
    if kind == "coupled-learned":
        for layer in model.backbone.layers:
            layer.coupling_logits.data.normal_()
    buf = io.BytesIO()
    torch.save({"config": model.config, "state_dict": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    torch.manual_seed(123)  # a different initialisation, to be overwritten
    rebuilt = build_model(**ckpt["config"])
    rebuilt.load_state_dict(ckpt["state_dict"])
    rebuilt.eval()
    assert rebuilt.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(xs, lengths), model(xs, lengths), rtol=0, atol=0)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_trains(kind):
    Bt = 16
    xs, lengths = make_inputs(batch=Bt, lens=(8, 10, 6))
    target = torch.tanh(xs[0][:, :4, 0].mean(1) + xs[1][:, :4, :].mean((1, 2)))  # learnable signal
    model = build_model(kind, DIMS, **{**SMALL, "seq_len": 6, "n_layers": 1})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.l1_loss(model(xs, lengths), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


def test_build_model_options():
    with pytest.raises(TypeError):
        build_model("coupled-mean", DIMS, d_modle=16)
    with pytest.raises(ValueError):
        build_model("coupled-banana", DIMS)
    # one option set for every kind: unused options are ignored, not recorded
    t = build_model("transformer", DIMS, **SMALL)
    assert "d_state" not in t.config and t.config["n_heads"] == 2
    assert build_model("coupled-mean", DIMS, **SMALL).config["dt_rank"] == 1


# ---------------------------------------------------------------------- autocast and compile


@pytest.mark.parametrize("kind", ["coupled-mean", "cross-attention"])
def test_autocast_bf16(kind):
    xs, lengths = make_inputs()
    model = build_model(kind, DIMS, **SMALL, align="pad").eval()
    with torch.no_grad():
        want = model(xs, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(xs, lengths)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(got).all()
    assert rel_err(got.float(), want) < 5e-2


def test_torch_compile():
    xs, lengths = make_inputs()
    model = build_model("coupled-learned", DIMS, **{**SMALL, "n_layers": 1, "seq_len": 4}).eval()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(xs, lengths), model(xs, lengths), rtol=1e-5, atol=1e-5)
