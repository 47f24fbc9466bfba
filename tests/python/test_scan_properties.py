"""Property-based tests of the op against the float64 reference (hypothesis).

Shapes are drawn with every zero size allowed (batch, channels, length), M from 1 to the
library's limit, N and L at the edges of the SIMD vector width and of the checkpoint chunk,
optional inputs present or absent, every coupling and both CPU dtypes, with NaN-poisoned output
buffers. The default profile runs in about a minute; COUPLED_MAMBA_HYPOTHESIS=long runs many more
examples.
"""
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from coupled_mamba.ops import library  # noqa: E402
from scan_helpers import TOL, coupling_for, make_inputs, rel, run_both  # noqa: E402

_LONG = os.environ.get("COUPLED_MAMBA_HYPOTHESIS") == "long"
settings.register_profile("coupled-mamba", max_examples=600 if _LONG else 60, deadline=None, derandomize=not _LONG,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("coupled-mamba")

pytestmark = pytest.mark.usefixtures("poisoned_outputs")

# Edges of the vector width (8 / 16 floats) and of the checkpoint chunk (32 or 64 steps on the CPU).
STATES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65]
LENGTHS = [0, 1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]


@st.composite
def problems(draw):
    M = draw(st.integers(1, library.max_modalities()))
    size = dict(Bt=draw(st.integers(0, 3)), M=M, D=draw(st.sampled_from([0, 1, 2, 3, 5, 9, 33])),
                N=draw(st.sampled_from(STATES)), L=draw(st.sampled_from(LENGTHS)))
    coupling = draw(st.sampled_from(["mean", "sum", "none", "matrix"]))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    optional = draw(st.booleans())
    initial_state = draw(st.booleans())
    softplus = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return size, coupling, dtype, optional, initial_state, softplus, seed


@given(problems())
def test_op_matches_reference(problem):
    size, coupling, dtype, optional, initial_state, softplus, seed = problem
    Bt, M, D, N, L = size.values()
    # The sum coupling grows like M^L: keep it where float32 stays finite.
    assume(coupling != "sum" or M == 1 or M * L <= 150)
    assume(Bt * M * max(D, 1) * N * max(L, 1) <= 400_000)  # keep the Python-loop reference quick
    x = make_inputs(Bt, M, D, N, L, dtype=dtype, optional=optional, initial_state=initial_state, seed=seed)
    if not softplus:
        x["delta"] = x["delta"].abs() + 0.01  # dt used as given: keep it positive
    w = coupling_for(coupling, M, seed=seed)
    if isinstance(w, torch.Tensor):
        w = w.to(dtype)
    (out, last, grads), (rout, rlast, rgrads) = run_both(x, w, delta_softplus=softplus)
    tol_out, tol_grad = TOL[dtype]
    assert out.shape == (Bt, M, D, L) and last.shape == (Bt, M, D, N)
    assert rel(out, rout) < tol_out and rel(last, rlast) < tol_out
    for k, g in grads.items():
        assert g.shape == rgrads[k].shape, k
        assert rel(g, rgrads[k]) < tol_grad, k
        if g.numel() and rgrads[k].abs().max() == 0:  # an empty size: exact zeros, never stale memory
            assert torch.count_nonzero(g) == 0, k
