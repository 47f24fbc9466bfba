"""align="pad": each batch padded only to its own longest recording, capped at seq_len (a longer
recording keeps its first seq_len steps), masks and lengths to match, and padding never changing
an output at a valid step, for every coupling."""
import warnings

import numpy as np
import pytest
import torch

from coupled_mamba.data import MultimodalDataset, collate
from coupled_mamba.modules import COUPLINGS, MODEL_KINDS, align_modalities, build_model

DIMS = [5, 3]
SMALL = dict(d_model=16, n_layers=2, d_state=4, d_conv=3, expand=2, dropout=0.0, n_heads=2, align="pad")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ragged_dataset(lengths_per_modality, padded_to=(40, 30), seed=0):
    """A dataset padded to ``padded_to`` steps per modality, with the given valid lengths; the
    padding holds large random values (it must never be read)."""
    rng = np.random.default_rng(seed)
    feats = []
    for L, d, n in zip(padded_to, DIMS, lengths_per_modality):
        x = rng.standard_normal((len(n), L, d)).astype(np.float32)
        for i, k in enumerate(n):
            x[i, k:] = 1e3 * rng.standard_normal((L - k, d))
        feats.append(x)
    return MultimodalDataset(feats, np.zeros(len(lengths_per_modality[0])), lengths_per_modality)


# ------------------------------------------------------------------------ the batch's padding


def test_batch_is_padded_to_its_longest_recording_not_the_dataset():
    ds = ragged_dataset([[5, 9, 3, 40], [7, 2, 4, 30]])
    for xs, ls, _ in (ds.batch([0, 1, 2]), collate([ds[i] for i in (0, 1, 2)])):
        assert [x.shape[1] for x in xs] == [9, 7]
        assert [n.tolist() for n in ls] == [[5, 9, 3], [7, 2, 4]]
    xs, _, _ = ds.batch([3, 0])
    assert [x.shape[1] for x in xs] == [40, 30]


def test_pad_below_seq_len_is_not_padded_to_seq_len():
    xs = [torch.randn(3, 9, 5), torch.randn(3, 7, 3)]
    lengths = [torch.tensor([5, 9, 3]), torch.tensor([7, 2, 4])]
    aligned, mask = align_modalities(xs, lengths, mode="pad", seq_len=50)
    assert [a.shape for a in aligned] == [(3, 9, 5), (3, 9, 3)] and mask.shape == (3, 2, 9)
    assert mask[:, 0].sum(1).tolist() == [5, 9, 3] and mask[:, 1].sum(1).tolist() == [7, 2, 4]


def test_pad_cuts_longer_recordings_to_their_first_seq_len_steps():
    xs = [torch.randn(3, 20, 5), torch.randn(3, 12, 3)]
    lengths = [torch.tensor([20, 4, 11]), torch.tensor([12, 12, 3])]
    aligned, mask = align_modalities(xs, lengths, mode="pad", seq_len=8)
    assert [a.shape for a in aligned] == [(3, 8, 5), (3, 8, 3)] and mask.shape == (3, 2, 8)
    assert mask[:, 0].sum(1).tolist() == [8, 4, 8] and mask[:, 1].sum(1).tolist() == [8, 8, 3]
    for x, a, m in zip(xs, aligned, mask.unbind(1)):
        torch.testing.assert_close(a[m], x[:, :8][m], rtol=0, atol=0)  # the first steps, unchanged
        assert (a[~m] == 0).all()
    # without lengths: equal cut lengths need no mask
    aligned, mask = align_modalities(xs, None, mode="pad", seq_len=8)
    assert mask is None and [a.shape[1] for a in aligned] == [8, 8]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_steps_past_seq_len_are_never_read(kind):
    model = build_model(kind, DIMS, seq_len=6, **SMALL).eval()
    xs = [torch.randn(2, 6, 5), torch.randn(2, 6, 3)]
    longer = [torch.cat([x, 1e3 * torch.randn(2, 30, x.shape[-1])], 1) for x in xs]
    with torch.no_grad():
        torch.testing.assert_close(model(longer, [torch.tensor([36, 36])] * 2), model(xs), rtol=1e-5, atol=1e-5)


def test_sum_coupling_scans_at_most_seq_len_steps():
    # 3 modalities summed over 300 steps would overflow float32 (3^300); the cut keeps 40 steps,
    # below the horizon (about 81 steps), so no warning and a finite output.
    dims = [4, 3, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model("coupled-sum", dims, seq_len=40, **SMALL).eval()
    xs = [torch.randn(2, 300, d) for d in dims]
    with torch.no_grad():
        assert torch.isfinite(model(xs, [torch.tensor([300, 250])] * 3)).all()
    with pytest.warns(RuntimeWarning, match="overflow"):
        build_model("coupled-sum", dims, seq_len=200, **SMALL)


# ---------------------------------------------------- padding never changes a valid output


def _valid_features(model, xs, lengths):
    """The fused per-step features and their mask (eval mode)."""
    x, mask = model.frontend(xs, lengths)
    feats, fmask = model.fuse(x, mask)
    return feats, fmask


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_batch_equals_per_sample_runs_at_every_valid_step(coupling):
    torch.manual_seed(3)
    seq_len = 12
    lens = [[3, 12, 17, 7], [5, 9, 4, 20]]  # some below seq_len, some cut to it
    ds = ragged_dataset(lens)
    model = build_model(f"coupled-{coupling}", DIMS, seq_len=seq_len, **SMALL).eval()
    with torch.no_grad():
        xs, ls, _ = ds.batch(range(4))
        feats, _ = _valid_features(model, xs, ls)
        pred = model(xs, ls)
        assert torch.isfinite(feats).all()
        for i in range(4):
            xi, li, _ = ds.batch([i])
            fi, _ = _valid_features(model, xi, li)
            for m in range(2):
                n = min(lens[m][i], seq_len)
                torch.testing.assert_close(feats[i, m, :n], fi[0, m, :n], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pred[i], model(xi, li)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_predicts_a_sample_alike_alone_and_in_a_batch(kind):
    seq_len = 10
    ds = ragged_dataset([[3, 12, 17, 7], [5, 9, 4, 20]], seed=1)
    model = build_model(kind, DIMS, seq_len=seq_len, **SMALL).eval()
    with torch.no_grad():
        batch = model(*ds.batch(range(4))[:2])
        # the dataset's full padding (40 and 30 steps) gives the same predictions as the batch's own
        full = model([f for f in ds.features], ds.lengths)
        torch.testing.assert_close(full, batch, rtol=1e-5, atol=1e-5)
        for i in range(4):
            torch.testing.assert_close(model(*ds.batch([i])[:2])[0], batch[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_long_padding_within_seq_len_changes_no_valid_output(coupling):
    # 20 valid steps padded to 300 with seq_len 300: the padded tail is scanned by nobody (sum
    # coupling would overflow over it) and changes no prediction.
    xs = [torch.randn(2, 20, 5), torch.randn(2, 20, 3)]
    lengths = [torch.tensor([20, 13]), torch.tensor([20, 17])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # coupled-sum past its horizon
        model = build_model(f"coupled-{coupling}", DIMS, seq_len=300, **SMALL).eval()
    padded = [torch.cat([x, 1e3 * torch.randn(2, 280, x.shape[-1])], dim=1) for x in xs]
    with torch.no_grad():
        y, y_padded = model(xs, lengths), model(padded, lengths)
        _, mask = model.frontend(padded, lengths)
    assert mask.shape[-1] == 300
    assert torch.isfinite(y).all() and torch.isfinite(y_padded).all()
    torch.testing.assert_close(y_padded, y, rtol=1e-5, atol=1e-5)
