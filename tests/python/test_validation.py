"""Every bad input gets an error naming the argument, what was expected and what was given."""
import os

import numpy as np
import pytest
import torch

from coupled_mamba import coupled_selective_scan, set_num_threads

from coupled_mamba.ops import library, make_inputs


def call(**changes):
    x = make_inputs(2, 3, 4, 5, 6)
    coupling = changes.pop("coupling", "mean")
    x.update(changes)
    return coupled_selective_scan(**x, delta_softplus=True, coupling=coupling)


@pytest.mark.parametrize(
    "changes, exc, pattern",
    [
        (dict(u=torch.randn(2, 3, 4)), ValueError, r"u: expected a 4-D tensor, got 3-D"),
        (dict(u=[1.0]), TypeError, r"u: expected a torch.Tensor, got list"),
        (dict(u=torch.randn(2, 3, 4, 6).int()), TypeError, r"u: expected dtype in"),
        (dict(delta=torch.randn(2, 3, 4, 7)), ValueError, r"delta: expected shape \(Bt, M, D, L\) = \(2, 3, 4, 6\), got \(2, 3, 4, 7\)"),
        (dict(delta=torch.randn(2, 3, 4, 6, dtype=torch.float64)), TypeError, r"delta: expected dtype torch.float32 \(like u\)"),
        (dict(A=torch.randn(3, 4)), ValueError, r"A: expected a 3-D tensor"),
        (dict(A=-torch.rand(3, 5, 5)), ValueError, r"A: expected shape \(M, D, N\) = \(3, 4, 5\), got \(3, 5, 5\)"),
        (dict(A=-torch.rand(3, 4, 5).half()), TypeError, r"A: expected dtype in \(torch.float32, torch.float64\)"),
        (dict(B=torch.randn(2, 3, 6, 5)), ValueError, r"B: expected shape \(Bt, M, N, L\) = \(2, 3, 5, 6\), got \(2, 3, 6, 5\)"),
        (dict(C=torch.randn(2, 3, 5, 6).double()), TypeError, r"C: expected dtype torch.float32 \(like u\)"),
        (dict(D=torch.randn(4, 3)), ValueError, r"D: expected shape \(M, D\) = \(3, 4\), got \(4, 3\)"),
        (dict(z=torch.randn(2, 3, 4, 5)), ValueError, r"z: expected shape \(Bt, M, D, L\)"),
        (dict(delta_bias=torch.randn(3)), ValueError, r"delta_bias: expected a 2-D tensor"),
        (dict(initial_state=torch.randn(2, 3, 4, 6)), ValueError, r"initial_state: expected shape \(Bt, M, D, N\) = \(2, 3, 4, 5\)"),
        (dict(coupling="product"), ValueError, r"coupling: expected 'sum', 'mean', 'none' or an \(M, M\) torch.Tensor, got 'product'"),
        (dict(coupling=np.ones((3, 3))), TypeError, r"coupling: expected .* torch.Tensor, got an object of type numpy.ndarray"),
        (dict(coupling=None), TypeError, r"coupling: expected .* got an object of type builtins.NoneType"),
        (dict(A=-torch.rand(3, 4, 5, device="meta")), ValueError, r"A: expected a tensor on cpu \(like u\), got one on meta"),
        (dict(u=torch.randn(2, 3, 4, 6, device="meta")), ValueError, r"delta: expected a tensor on meta \(like u\), got one on cpu"),
        (dict(coupling=torch.rand(3, 2)), ValueError, r"coupling: expected shape \(M, M\) = \(3, 3\), got \(3, 2\)"),
        (dict(coupling=torch.rand(3, 3).half()), TypeError, r"coupling: expected dtype in"),
    ],
)
def test_bad_inputs(changes, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(**changes)


def test_modalities_out_of_range():
    x = make_inputs(1, 9, 2, 3, 4)
    with pytest.raises(ValueError, match=r"u: expected 1 <= M <= 8 modalities \(dim 1\), got M = 9"):
        coupled_selective_scan(**x)
    x = make_inputs(1, 0, 2, 3, 4, optional=False)
    with pytest.raises(ValueError, match=r"got M = 0"):
        coupled_selective_scan(**x)


def test_state_out_of_range():
    x = make_inputs(1, 2, 2, 257, 4, optional=False)
    with pytest.raises(ValueError, match=r"A: expected state size 1 <= N <= 256 \(dim 2\), got N = 257"):
        coupled_selective_scan(**x)


@pytest.mark.parametrize("bad", [0, -1, 2**40, True, 1.0, "2"])
def test_thread_count(bad):
    with pytest.raises(ValueError, match=r"set_num_threads: expected an int in \[1, 4096\] or None, got " + repr(bad)):
        set_num_threads(bad)


def test_meta_tensors_give_shapes_only():
    """All-meta inputs trace shapes (as for any torch op); one meta tensor among CPU ones is an error."""
    x = {k: v.to("meta") for k, v in make_inputs(2, 3, 4, 5, 6).items()}
    out, last = coupled_selective_scan(**x, return_last_state=True)
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 6) and last.shape == (2, 3, 4, 5)


def test_raw_ops_check_their_inputs():
    """torch.ops.coupled_mamba.* called directly must not pass bad shapes or codes to the library."""
    x = make_inputs(1, 1, 1, 8, 16)
    args = [x["u"], x["delta"], x["A"], x["B"], x["C"], None, None, None, True, 0, 1.0, None, None, None, False]
    bad_B = list(args)
    bad_B[3] = torch.randn(1, 1, 1, 4096)
    with pytest.raises(ValueError, match=r"B: expected shape"):
        torch.ops.coupled_mamba.scan_fwd(*bad_B)
    bad_kind = list(args)
    bad_kind[9] = 7
    with pytest.raises(ValueError, match=r"coupling: expected a kind code among 0 \(rank_one\), 1 \(none\), 2 \(general\), got 7"):
        torch.ops.coupled_mamba.scan_fwd(*bad_kind)
    no_w = list(args)
    no_w[9] = 2
    with pytest.raises(ValueError, match=r"W: expected an \(M, M\) tensor exactly when the coupling kind is general"):
        torch.ops.coupled_mamba.scan_fwd(*no_w)
    out, last, ck = torch.ops.coupled_mamba.scan_fwd(*args[:-1], True)
    bwd = args[:14] + [ck, torch.randn(1, 1, 1, 15), None]
    with pytest.raises(ValueError, match=r"dout: expected shape"):
        torch.ops.coupled_mamba.scan_bwd(*bwd)
    bwd = args[:14] + [ck[..., :4], torch.randn(1, 1, 1, 16), None]
    with pytest.raises(ValueError, match=r"checkpoints: expected shape"):
        torch.ops.coupled_mamba.scan_bwd(*bwd)
    for i, bad, pattern in ((15, torch.randn(1, 1, 1, 16, dtype=torch.complex64), r"dout: expected dtype torch.float32 \(like u\), got torch.complex64"),
                            (15, torch.randn(1, 1, 1, 16, dtype=torch.float64), r"dout: expected dtype torch.float32 \(like u\)"),
                            (14, ck.double(), r"checkpoints: expected dtype in \(torch.float32\), got torch.float64"),
                            (16, torch.randn(1, 1, 1, 8).half(), r"dlast_state: expected dtype in \(torch.float32\)")):
        bwd = args[:14] + [ck, torch.randn(1, 1, 1, 16), None]
        bwd[i] = bad
        with pytest.raises(TypeError, match=pattern):
            torch.ops.coupled_mamba.scan_bwd(*bwd)


def test_raw_ops_refuse_a_meta_tensor_among_cpu_tensors():
    """The dispatcher sends a call with any meta tensor to the fake; it must check devices too."""
    x = make_inputs(1, 2, 3, 4, 5)
    args = [x["u"], x["delta"], x["A"].to("meta"), x["B"], x["C"], None, None, None, True, 0, 0.5, None, None, None, True]
    with pytest.raises(ValueError, match=r"A: expected a tensor on cpu \(like u\), got one on meta"):
        torch.ops.coupled_mamba.scan_fwd(*args)
    out, last, ck = torch.ops.coupled_mamba.scan_fwd(*(args[:2] + [x["A"]] + args[3:]))
    bwd = args[:2] + [x["A"]] + args[3:14] + [ck, torch.randn_like(out).to("meta"), None]
    with pytest.raises(ValueError, match=r"dout: expected a tensor on cpu \(like u\), got one on meta"):
        torch.ops.coupled_mamba.scan_bwd(*bwd)


def test_cuda_build_state_is_reported_without_a_gpu():
    """Importing works with or without CUDA kernels and with or without a GPU; a build with the
    kernels on a machine without a GPU reports zero devices instead of failing."""
    import shutil

    assert isinstance(library.has_cuda(), bool) and library.cuda_device_count() >= 0
    if not torch.cuda.is_available():
        assert library.cuda_device_count() == 0
    if os.environ.get("COUPLED_MAMBA_CUDA") == "ON":  # CI with nvcc: the kernels must be in the build
        assert shutil.which("nvcc") and library.has_cuda()
        assert library.extension().num_checkpoints(library.extension().CouplingKind.rank_one, 32, True) == 2


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, 2**40])
def test_set_cuda_time_segments_rejects_bad_values(bad):
    import coupled_mamba

    with pytest.raises(ValueError, match=r"set_cuda_time_segments: expected an int in \[0, 1048576\]"):
        coupled_mamba.set_cuda_time_segments(bad)
