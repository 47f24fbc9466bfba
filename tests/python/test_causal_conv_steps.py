"""The step-major fused causal conv + SiLU (causal_conv_silu_steps, x (G, rows, L, C)) against a
float64 reference from torch's conv1d, the row-major op on the same values, gradcheck, opcheck,
torch.compile and its argument errors."""
import pytest
import torch
import torch.nn.functional as F

from coupled_mamba.ops import settings
from coupled_mamba.ops.causal_conv import causal_conv_silu, causal_conv_silu_steps
from scan_helpers import rel

pytestmark = pytest.mark.usefixtures("poisoned_outputs")


def steps_ref(x, weight, bias):
    """silu(causal depthwise conv over L) with conv1d, x (G, rows, L, C), channel g * C + e."""
    G, R, L, C = x.shape
    k = weight.shape[1]
    xc = x.permute(1, 0, 3, 2).reshape(R, G * C, L)  # (rows, channels, L)
    y = F.conv1d(F.pad(xc, (k - 1, 0)), weight[:, None, :], bias, groups=G * C)
    return F.silu(y).reshape(R, G, C, L).permute(1, 0, 3, 2)


def random_problem(G, R, L, C, k, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(G, R, L, C, generator=g, dtype=torch.float64)
    w = 0.5 * torch.randn(G * C, k, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(G * C, generator=g, dtype=torch.float64) if with_bias else None
    dy = torch.randn(G, R, L, C, generator=g, dtype=torch.float64)
    return x, w, b, dy


def leaves(ts, dtype):
    return [t.to(dtype).clone().requires_grad_() if t is not None else None for t in ts]


# (G, rows, L, C, k): channels not a multiple of any vector width, L = 1 and L < k, k = 1 and 16.
SIZES = [(3, 2, 50, 5, 4), (1, 3, 7, 17, 3), (3, 1, 1, 37, 4), (2, 3, 3, 9, 16), (3, 2, 63, 16, 1),
         (1, 1, 20, 40, 5), (3, 4, 2, 33, 4)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_conv1d(size, dtype, with_bias):
    G, R, L, C, k = size
    x, w, b, dy = random_problem(G, R, L, C, k, with_bias, seed=G * 1000 + C * 10 + L)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    fused, ref = leaves((x, w, b), dtype), leaves((x, w, b), torch.float64)
    y = causal_conv_silu_steps(*fused)
    yr = steps_ref(*ref)
    assert y.dtype == dtype and y.shape == (G, R, L, C) and y.is_contiguous()
    assert rel(y, yr) < tol
    y.backward(dy.to(dtype))
    yr.backward(dy)
    for name, a, r in zip(("x", "weight", "bias"), fused, ref):
        if a is not None:
            assert a.grad.dtype == dtype and a.grad.shape == r.grad.shape
            assert rel(a.grad, r.grad) < tol * 10, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_row_major_op(dtype):
    """The same values as the row-major op's (channels, rows, L) input give the same results."""
    G, R, L, C, k = 3, 4, 50, 21, 4
    x, w, b, dy = random_problem(G, R, L, C, k, True, seed=5)
    steps = leaves((x, w, b), dtype)
    rows = leaves((x.permute(0, 3, 1, 2).reshape(G * C, R, L), w, b), dtype)
    y = causal_conv_silu_steps(*steps)
    yr = causal_conv_silu(*rows)
    to_steps = lambda t: t.reshape(G, C, R, L).permute(0, 2, 3, 1)  # noqa: E731
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert rel(y, to_steps(yr)) < tol
    y.backward(dy.to(dtype))
    yr.backward(dy.to(dtype).permute(0, 3, 1, 2).reshape(G * C, R, L))
    assert rel(steps[0].grad, to_steps(rows[0].grad)) < tol
    assert rel(steps[1].grad, rows[1].grad) < tol * 10
    assert rel(steps[2].grad, rows[2].grad) < tol * 10


def test_deterministic_across_threads():
    x, w, b, dy = random_problem(3, 5, 40, 48, 4, True, seed=11)
    out = []
    for n in (1, 3):
        settings.set_num_threads(n)
        try:
            ts = leaves((x, w, b), torch.float32)
            y = causal_conv_silu_steps(*ts)
            y.backward(dy.float())
            out.append([y.detach()] + [t.grad for t in ts])
        finally:
            settings.set_num_threads(None)
    for a, c in zip(*out):
        assert torch.equal(a, c)


def test_non_contiguous_x():
    x, w, b, dy = random_problem(2, 3, 9, 6, 3, True, seed=3)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # (G, R, L, C) view, not contiguous
    assert not xt.is_contiguous()
    a = xt.clone().requires_grad_()
    y = causal_conv_silu_steps(a, w, b)
    assert rel(y, steps_ref(x, w, b)) < 1e-12
    y.backward(dy)
    xr = x.clone().requires_grad_()
    steps_ref(xr, w, b).backward(dy)
    assert rel(a.grad, xr.grad) < 1e-12


def test_gradcheck():
    x, w, b, _ = random_problem(2, 2, 5, 3, 3, True, seed=1)
    ts = [t.clone().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(causal_conv_silu_steps, ts)
    assert torch.autograd.gradcheck(lambda x, w: causal_conv_silu_steps(x, w), ts[:2])


@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck(with_bias):
    x, w, b, dy = random_problem(3, 2, 6, 5, 4, with_bias, seed=2)
    x.requires_grad_()
    w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    torch.library.opcheck(torch.ops.coupled_mamba.causal_conv_silu_steps_fwd.default, (x, w, b))
    torch.library.opcheck(torch.ops.coupled_mamba.causal_conv_silu_steps_bwd.default,
                          (x.detach(), w.detach(), b.detach() if b is not None else None, dy))


def test_torch_compile():
    x, w, b, dy = random_problem(3, 2, 8, 7, 4, True, seed=4)
    fn = torch.compile(lambda x, w, b: causal_conv_silu_steps(x, w, b) * 2.0, fullgraph=True)
    ts = leaves((x, w, b), torch.float64)
    y = fn(*ts)
    (y * dy).sum().backward()
    ref = leaves((x, w, b), torch.float64)
    yr = steps_ref(*ref) * 2.0
    (yr * dy).sum().backward()
    assert rel(y, yr) < 1e-12
    for a, r in zip(ts, ref):
        assert rel(a.grad, r.grad) < 1e-11


def test_rejects_bad_arguments():
    x = torch.randn(3, 2, 5, 4)
    w = torch.randn(12, 4)
    with pytest.raises(ValueError, match=r"x must be a 4-d tensor \(G, rows, L, C\), got shape \(2, 5, 4\)"):
        causal_conv_silu_steps(x[0], w)
    with pytest.raises(ValueError, match=r"weight must be \(G \* C, k\) = \(12, k\) .* got shape \(4, 4\)"):
        causal_conv_silu_steps(x, torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"1 <= k <= 16.* got shape \(12, 17\)"):
        causal_conv_silu_steps(x, torch.randn(12, 17))
    with pytest.raises(ValueError, match=r"got shape \(12, 0\)"):
        causal_conv_silu_steps(x, torch.randn(12, 0))
    with pytest.raises(ValueError, match=r"bias must be \(G \* C,\) = \(12,\) or None, got shape \(4,\)"):
        causal_conv_silu_steps(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="float32 or float64 CPU tensor, got torch.float16"):
        causal_conv_silu_steps(x.half(), w.half())
    with pytest.raises(ValueError, match="weight must be torch.float32 on cpu like x, got torch.float64"):
        causal_conv_silu_steps(x, w.double())
    with pytest.raises(ValueError, match="bias must be torch.float32 on cpu like x, got torch.float64"):
        causal_conv_silu_steps(x, w, torch.randn(12, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dy must have x's shape"):
        torch.ops.coupled_mamba.causal_conv_silu_steps_bwd(x, w, None, torch.randn(3, 2, 5, 3))
