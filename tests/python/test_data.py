"""Data sources: the embedded synthetic task, the MMSA pickle loader, BasicMotions, the dataset."""
import pickle

import numpy as np
import pytest
import torch

from coupled_mamba.data import (
    DataFileError, MultimodalDataset, TaskInfo, collate, load_basicmotions, load_data, load_mmsa,
    make_synthetic,
)
from mmsa_files import make_mmsa, write_mmsa

SMALL = dict(n_train=300, n_valid=50, n_test=200)


# ----------------------------------------------------------------------------- dataset / collate


def test_dataset_batch_equals_collate_and_dataloader():
    d = make_synthetic(n_train=20, n_valid=5, n_test=5)["train"]
    idx = [3, 0, 7, 7, 19]
    xs, ls, y = d.batch(idx)
    cx, cl, cy = collate([d[i] for i in idx])
    for a, b in zip(xs + ls + [y], cx + cl + [cy]):
        assert torch.equal(a, b)
    loader = torch.utils.data.DataLoader(d, batch_size=8, collate_fn=collate)
    bx, bl, by = next(iter(loader))
    # padded to the batch's own longest recording, within the dataset's padded length
    assert [x.shape for x in bx] == [(8, int(n.max()), w) for n, w in zip(bl, (16, 8, 12))]
    assert all(x.shape[1] <= L for x, L in zip(bx, (24, 64, 40)))
    assert [x.dtype for x in bl] == [torch.int64] * 3 and by.dtype == torch.float32


def test_dataset_validation_and_lengths():
    x = [np.zeros((4, 5, 2), np.float64), np.ones((4, 3, 1), np.float32)]
    d = MultimodalDataset(x, [0.1, 0.2, 0.3, 0.4], [[0, 2, 9, 5], None])
    assert d.features[0].dtype == torch.float32
    assert d.lengths[0].tolist() == [1, 2, 5, 5]  # clamped to [1, L]
    assert d.lengths[1].tolist() == [3] * 4  # default: full length
    assert d.input_dims == [2, 1] and d.seq_lens == [5, 3] and len(d) == 4
    sub = d.select([1])
    assert sub.input_dims == [1] and sub.lengths[0].tolist() == [3] * 4
    with pytest.raises(ValueError, match="samples"):
        MultimodalDataset([np.zeros((4, 5, 2)), np.zeros((3, 5, 2))], np.zeros(4))
    with pytest.raises(ValueError, match=r"\(N, L, d\)"):
        MultimodalDataset([np.zeros((4, 5))], np.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        MultimodalDataset([np.zeros((4, 5, 2))], np.zeros(3))
    info = TaskInfo("t", "classification", 3, "classification", ["m"])
    assert MultimodalDataset([np.zeros((2, 1, 1))], [0, 2], info=info).labels.dtype == torch.int64


# ----------------------------------------------------------------------------- synthetic task


def test_synthetic_deterministic_shapes_and_lengths():
    a = make_synthetic(seed=3, **SMALL)
    b = make_synthetic(seed=3, **SMALL)
    c = make_synthetic(seed=4, **SMALL)
    for s in ("train", "valid", "test"):
        for m in range(3):
            assert torch.equal(a[s].features[m], b[s].features[m])
            assert torch.equal(a[s].lengths[m], b[s].lengths[m])
        assert torch.equal(a[s].labels, b[s].labels)
    assert not torch.equal(a["train"].labels, c["train"].labels)
    tr = a["train"]
    assert tr.input_dims == [16, 8, 12] and tr.seq_lens == [24, 64, 40]
    assert [len(a[s]) for s in ("train", "valid", "test")] == [300, 50, 200]
    assert tr.modalities == ["a", "b", "c"] and tr.info.metrics == "mosi"
    for f, ln, L in zip(tr.features, tr.lengths, tr.seq_lens):
        assert ln.min() >= int(np.ceil(0.6 * L)) and ln.max() <= L
        assert len(set(ln.tolist())) > 3  # lengths vary per sample
        steps = torch.arange(L)[None, :]
        pad = steps >= ln[:, None]
        assert torch.all(f[pad] == 0) and torch.all(f[~pad].abs().sum(-1) > 0)
    y = tr.labels
    assert y.dtype == torch.float32 and y.abs().max() <= 3.0 and 1.3 < y.std() < 2.0
    # the test split does not depend on the training set's size
    d = make_synthetic(seed=3, n_train=10, n_valid=50, n_test=200)
    assert torch.equal(d["test"].labels, a["test"].labels)


def test_synthetic_classification_and_errors():
    d = make_synthetic(task="classification", **SMALL)
    y = d["train"].labels
    assert y.dtype == torch.int64 and d["train"].info.num_classes == 3
    counts = torch.bincount(y, minlength=3).float() / len(y)
    assert counts.min() > 0.2  # roughly balanced negative / neutral / positive
    with pytest.raises(ValueError, match="task"):
        make_synthetic(task="ranking")
    with pytest.raises(ValueError, match="3 widths"):
        make_synthetic(widths=(4, 4))


def _time_bins(ds, m, bins=12):
    """Modality m's valid part averaged into `bins` equal bins of the common time line."""
    x, ln = ds.features[m].numpy().astype(np.float64), ds.lengths[m].numpy()
    t = (np.arange(x.shape[1])[None, :] + 0.5) / ln[:, None]  # (N, L) time of each step
    onehot = (np.floor(t * bins)[:, :, None] == np.arange(bins)[None, None, :]) & (t < 1)[:, :, None]
    sums = np.einsum("nlb,nld->nbd", onehot.astype(np.float64), x)
    return sums / np.maximum(onehot.sum(1), 1)[:, :, None]


def _sign_track(train_bins, other_bins):
    """Project each bin on the modality's main direction (the first principal component)."""
    flat = train_bins.reshape(-1, train_bins.shape[-1])
    v = np.linalg.svd(flat - flat.mean(0), full_matrices=False)[2][0]
    return train_bins @ v, other_bins @ v


def _ridge_mae(F_train, y_train, F_test, y_test, lam=1.0):
    mu, sd = F_train.mean(0), F_train.std(0) + 1e-8
    A, B = (F_train - mu) / sd, (F_test - mu) / sd
    A1 = np.hstack([A, np.ones((len(A), 1))])
    w = np.linalg.solve(A1.T @ A1 + lam * np.eye(A1.shape[1]), A1.T @ (y_train - y_train.mean()))
    pred = np.hstack([B, np.ones((len(B), 1))]) @ w + y_train.mean()
    return float(np.mean(np.abs(pred - y_test)))


def test_synthetic_needs_fusion_over_time():
    """The label is a function of the modalities' joint behaviour over time: a quadratic model on
    the three time-aligned modalities predicts it well; the same model on any one modality scores
    far worse, and on modality b alone no better than a constant."""
    d = make_synthetic(seed=0, n_train=1500, n_valid=10, n_test=500)
    tr, te = d["train"], d["test"]
    ytr, yte = tr.labels.numpy().astype(np.float64), te.labels.numpy().astype(np.float64)
    const_mae = float(np.mean(np.abs(yte - np.median(ytr))))
    tracks = [_sign_track(_time_bins(tr, m), _time_bins(te, m)) for m in range(3)]

    def quad(parts):  # the features and all products of pairs of them
        F = np.concatenate(parts, axis=1)
        iu = np.triu_indices(F.shape[1])
        return np.hstack([F, (F[:, :, None] * F[:, None, :])[:, iu[0], iu[1]]])

    single = [_ridge_mae(quad([t[0]]), ytr, quad([t[1]]), yte, lam=100.0) for t in tracks]
    # all modalities: each one, and the products of b with the others at the same moment
    f_tr = np.hstack([tracks[0][0], tracks[2][0], tracks[1][0] * tracks[0][0], tracks[1][0] * tracks[2][0]])
    f_te = np.hstack([tracks[0][1], tracks[2][1], tracks[1][1] * tracks[0][1], tracks[1][1] * tracks[2][1]])
    fused = _ridge_mae(f_tr, ytr, f_te, yte)
    assert fused < 0.3 * const_mae, (fused, const_mae)
    assert single[1] > 0.95 * const_mae, (single, const_mae)  # b alone: no information
    for m, s in enumerate(single):
        assert fused < 0.4 * s, (m, fused, s)


# ----------------------------------------------------------------------------- MMSA pickles


@pytest.mark.parametrize("kind", ["mosei_aligned", "mosei_unaligned", "mosi_unaligned", "sims_unaligned"])
def test_mmsa_real_structure(tmp_path, kind):
    raw = make_mmsa(kind)
    path = write_mmsa(tmp_path / f"{kind}.pkl", raw)
    name = {"mosei": "mosei", "mosi": "mosi", "sims": "sims"}[kind.split("_")[0]]
    d = load_mmsa(path, dataset=name)
    (Lt, dt), (La, da), (Lv, dv) = __import__("mmsa_files").SHAPES[kind]
    for split, n in zip(("train", "valid", "test"), (6, 3, 4)):
        ds = d[split]
        r = raw[split]
        assert len(ds) == n
        assert ds.input_dims == [dt, da, dv] and ds.seq_lens == [Lt, La, Lv]
        assert all(f.dtype == torch.float32 for f in ds.features)
        assert torch.isfinite(ds.features[1]).all()
        assert ds.features[1][0, 1, :3].eq(0).all()  # -inf became 0
        # text lengths from the text_bert attention mask
        assert ds.lengths[0].tolist() == r["text_bert"][:, 1].sum(1).astype(int).tolist()
        if "unaligned" in kind:
            assert ds.lengths[1].tolist() == list(r["audio_lengths"])
            assert ds.lengths[2].tolist() == list(r["vision_lengths"])
        else:
            assert ds.lengths[1].tolist() == [La] * n
        assert ds.labels.dtype == torch.float32
        np.testing.assert_allclose(ds.labels.numpy(), r["regression_labels"].astype(np.float32))
        np.testing.assert_allclose(ds.features[2].numpy(), r["vision"].astype(np.float32))
    assert d["train"].info.metrics == ("sims" if name == "sims" else "mosi")
    assert d["train"].modalities == ["text", "audio", "vision"]


def test_mmsa_variants(tmp_path):
    # float32 arrays, numpy lengths, no -inf, no text_bert: full text length
    raw = make_mmsa("mosei_unaligned", float64=False, lengths_as_list=False, neg_inf=False)
    for s in raw.values():
        del s["text_bert"]
    d = load_mmsa(write_mmsa(tmp_path / "a.pkl", raw), dataset="mosei")
    assert d["test"].lengths[0].tolist() == [50] * 4
    # labels stored as (N, 1); audio lengths of 0 and beyond L are clamped
    raw = make_mmsa("mosei_unaligned")
    for s in raw.values():
        s["regression_labels"] = s["regression_labels"][:, None]
    raw["train"]["audio_lengths"][0] = 0
    raw["train"]["audio_lengths"][1] = 900
    d = load_mmsa(write_mmsa(tmp_path / "b.pkl", raw), dataset="mosei", modalities=["audio", "text"])
    assert d["train"].lengths[0][:2].tolist() == [1, 500]
    assert d["train"].input_dims == [74, 768] and d["train"].modalities == ["audio", "text"]


def test_mmsa_classification_labels(tmp_path):
    raw = make_mmsa("mosei_aligned")
    path = write_mmsa(tmp_path / "c.pkl", raw)
    d = load_mmsa(path, dataset="mosei", task="classification")
    y = raw["train"]["regression_labels"]
    assert d["train"].labels.dtype == torch.int64
    assert d["train"].labels.tolist() == np.where(y < 0, 0, np.where(y > 0, 2, 1)).tolist()
    assert d["train"].info.metrics == "sentiment3" and d["train"].info.num_classes == 3
    # a file's own classification labels win
    raw = make_mmsa("mosei_aligned", classification=True)
    raw["train"]["classification_labels"][:] = 1
    d = load_mmsa(write_mmsa(tmp_path / "d.pkl", raw), dataset="mosei", task="classification")
    assert d["train"].labels.tolist() == [1] * 6
    # SIMS: derived with the 3-class bins, neutral = (-0.1, 0.1]
    raw = make_mmsa("sims_unaligned")
    raw["train"]["regression_labels"][:6] = [-0.2, -0.1, 0.0, 0.1, 0.2, 1.0]
    d = load_mmsa(write_mmsa(tmp_path / "e.pkl", raw), dataset="sims", task="classification")
    assert d["train"].labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_mmsa_through_load_data(tmp_path):
    path = write_mmsa(tmp_path / "f.pkl", make_mmsa("sims_unaligned"))
    d = load_data("simsv2", path=path, modalities=["vision"])
    assert d["valid"].input_dims == [709] and d["valid"].info.source["path"] == str(path)
    again = load_data(**d["valid"].info.source)
    assert torch.equal(again["valid"].features[0], d["valid"].features[0])
    with pytest.raises(ValueError, match="--data"):
        load_data("mosi")


def _expect(tmp_path, data, *patterns, raw_bytes=None, dataset="mosei"):
    path = tmp_path / "bad.pkl"
    if raw_bytes is not None:
        path.write_bytes(raw_bytes)
    else:
        write_mmsa(path, data)
    with pytest.raises(DataFileError) as e:
        load_mmsa(path, dataset=dataset)
    msg = str(e.value)
    assert str(path) in msg, msg
    for p in patterns:
        assert p in msg, (p, msg)
    return msg


def test_mmsa_errors_name_file_key_and_expectation(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_mmsa(tmp_path / "nope.pkl")
    _expect(tmp_path, None, "could not be read as a pickle", raw_bytes=b"not a pickle at all")
    good = pickle.dumps(make_mmsa("mosei_aligned", sizes=(2, 2, 2)))
    _expect(tmp_path, None, "could not be read as a pickle", raw_bytes=good[: len(good) // 2])  # truncated
    _expect(tmp_path, [1, 2, 3], "top level", "expected a dict with keys 'train', 'valid', 'test'")

    def broken(fn):
        raw = make_mmsa("mosei_unaligned", sizes=(3, 2, 2))
        fn(raw)
        return raw

    _expect(tmp_path, broken(lambda r: r.pop("valid")), "missing key 'valid'")
    _expect(tmp_path, broken(lambda r: r.__setitem__("test", [1, 2])), "['test']", "expected a dict")
    _expect(tmp_path, broken(lambda r: r["test"].pop("audio")), "['test']", "missing key 'audio'", "(N, L, d)")
    _expect(tmp_path, broken(lambda r: r["train"].__setitem__("vision", r["train"]["vision"][:, :, 0])),
            "['train']['vision']", "(N, L, d)", "(3, 500)")
    _expect(tmp_path, broken(lambda r: r["train"].__setitem__("audio", [np.zeros((5, 74)), np.zeros((4, 74))])),
            "['train']['audio']", "(N, L, d)")
    _expect(tmp_path, broken(lambda r: r["train"].__setitem__("audio", np.array([["a"]]))),
            "['train']['audio']", "numeric array")
    _expect(tmp_path, broken(lambda r: r["valid"].__setitem__("audio", r["valid"]["audio"][:1])),
            "['valid']['audio']", "1 samples", "'text' has 2")
    _expect(tmp_path, broken(lambda r: r["train"].__setitem__("audio_lengths", [3, 4])),
            "['train']['audio_lengths']", "2 lengths, expected N = 3")
    _expect(tmp_path, broken(lambda r: r["train"].__setitem__("vision_lengths", [1.5, 2, 3])),
            "['train']['vision_lengths']", "integer")
    _expect(tmp_path, broken(lambda r: r["train"].pop("regression_labels")),
            "['train']", "missing key 'regression_labels'")
    _expect(tmp_path, broken(lambda r: r["test"].__setitem__("regression_labels", np.zeros(5))),
            "['test']['regression_labels']", "5 values, expected N = 2")
    _expect(tmp_path, broken(lambda r: r["test"].__setitem__("regression_labels", np.array([0.1, np.nan]))),
            "['test']['regression_labels']", "finite")
    _expect(tmp_path, broken(lambda r: r["test"].__setitem__("text_bert", np.zeros((2, 2, 50)))),
            "['test']['text_bert']", "(2, 3, L_t)")
    _expect(tmp_path, broken(lambda r: r["test"].__setitem__("vision", np.zeros((2, 500, 36)))),
            "['test']", "widths", "'vision': 36", "'vision': 35")


def test_mmsa_sims_label_range_warning(tmp_path):
    path = write_mmsa(tmp_path / "g.pkl", make_mmsa("mosei_aligned"))
    with pytest.warns(UserWarning, match="outside \\[-1, 1\\]"):
        load_mmsa(path, dataset="sims")


# ----------------------------------------------------------------------------- BasicMotions


def test_basicmotions_missing_sktime_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sktime" else real(name, *a))
    with pytest.raises(ImportError, match=r"coupled-mamba\[basicmotions\]"):
        load_basicmotions()


def test_read_ts(tmp_path):
    from coupled_mamba.data.basicmotions import read_ts

    p = tmp_path / "x.ts"
    p.write_text("#comment\n@problemName X\n@data\n1,2,3:4,5,6:walk\n0,0,1:1,1,1:run\n")
    X, y = read_ts(str(p))
    assert X.shape == (2, 2, 3) and y.tolist() == ["walk", "run"] and X[0, 1, 2] == 6
    p.write_text("@data\n1,2:3:walk\n")
    with pytest.raises(ValueError, match="unequal"):
        read_ts(str(p))


def test_basicmotions_offline():
    import importlib.util

    if importlib.util.find_spec("sktime") is None:
        pytest.skip("sktime (the basicmotions extra) is not installed")
    d = load_basicmotions(seed=0)
    assert [len(d[s]) for s in ("train", "valid", "test")] == [32, 8, 40]
    tr = d["train"]
    assert tr.modalities == ["accelerometer", "gyroscope"]
    assert tr.input_dims == [3, 3] and tr.seq_lens == [100, 100]
    assert tr.info.task == "classification" and tr.info.num_classes == 4
    assert tr.info.class_names == ["badminton", "running", "standing", "walking"]
    assert torch.bincount(d["valid"].labels).tolist() == [2, 2, 2, 2]
    assert torch.bincount(d["test"].labels).tolist() == [10, 10, 10, 10]
    x = torch.cat([f.reshape(-1, 3) for f in tr.features], 1)
    assert torch.allclose(x.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(x.std(0), torch.ones(6), atol=1e-2)


# ----------------------------------------------------------------------------- pickles never run code


class _RunsCode:
    """Unpickling this object calls ``fn(*args)``: what a malicious pickle does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmsa_pickle_that_runs_code_is_refused_without_running(tmp_path, protocol, capsys):
    import os

    marker = tmp_path / "ran"
    cases = {
        "os.system" if os.name != "nt" else "nt.system": _RunsCode(os.system, f"touch {marker}"),
        "builtins.print": _RunsCode(print, "the pickle ran print"),
        "builtins.eval": _RunsCode(eval, "1 + 1"),
    }
    for name, payload in cases.items():
        for where in ("top", "nested"):
            raw = make_mmsa("mosei_aligned", sizes=(2, 2, 2))
            data = payload if where == "top" else raw
            if where == "nested":
                raw["train"]["id"] = payload
            path = tmp_path / f"evil-{protocol}.pkl"
            path.write_bytes(pickle.dumps(data, protocol=protocol))
            with pytest.raises(DataFileError) as e:
                load_mmsa(path, dataset="mosei")
            msg = str(e.value)
            assert str(path) in msg and "refused" in msg and name.split(".")[-1] in msg, msg
            assert "docs/data.md" in msg
    assert not marker.exists()
    assert "the pickle ran" not in capsys.readouterr().out


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmsa_pickle_of_plain_data_loads_with_every_protocol(tmp_path, protocol):
    raw = make_mmsa("mosi_unaligned", sizes=(3, 2, 2))
    raw["train"]["extra"] = {"nested": (1, 2.5, 3 + 4j, b"bytes", None, True), "scalar": np.float32(1.5)}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=protocol))
    d = load_mmsa(path, dataset="mosi")
    np.testing.assert_allclose(d["test"].features[2].numpy(), raw["test"]["vision"].astype(np.float32))
    assert d["train"].lengths[1].tolist() == list(raw["train"]["audio_lengths"])


def test_safe_pickle_refuses_other_numpy_functions(tmp_path):
    from coupled_mamba.data.safe_pickle import RefusedPickle, load_data_pickle
    import io

    # numpy.load can open other files; it is a numpy global but not one that rebuilds an array
    data = pickle.dumps(_RunsCode(np.load, str(tmp_path / "x.npy")), protocol=4)
    with pytest.raises(RefusedPickle, match="load"):
        load_data_pickle(io.BytesIO(data))
