"""The .npz data format: writing, reading, drawn splits and folds, standardisation, every error."""
import io
import zipfile

import numpy as np
import pytest
import torch

from coupled_mamba.data.dataset import SPLITS
from coupled_mamba.data.mmsa import DataFileError
from coupled_mamba.data.npz import from_arrays, load_npz, load_npz_folds, read_npz, save_npz
from coupled_mamba.data.splits import (
    Standardizer, cross_validation_splits, kfold, partition, train_valid_test_split,
)

N, GROUPS, CLASSES = 48, 8, 3
# modality -> (shortest, longest sequence, features): three rates, three widths
RATES = {"accel": (20, 60, 3), "gyro": (10, 30, 2), "audio": (3, 8, 5)}


def make_arrays(seed=0, n=N):
    """Sequences of unequal lengths per modality, balanced classes, GROUPS subjects."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    rng.shuffle(labels)
    mods = {}
    for name, (lo, hi, f) in RATES.items():
        mods[name] = [rng.normal(loc=3.0 + y, scale=2.0, size=(int(rng.integers(lo, hi + 1)), f))
                      for y in labels]
    groups = np.array([f"subject{i % GROUPS}" for i in range(n)])
    return mods, labels.astype(np.int64), groups


@pytest.fixture
def data_file(tmp_path):
    mods, labels, groups = make_arrays()
    path = tmp_path / "data.npz"
    save_npz(path, mods, labels, groups=groups, class_names=["rest", "walk", "run"])
    return path, mods, labels, groups


def unpadded(ds, m, j):
    return ds.features[m][j, : int(ds.lengths[m][j])].numpy()


# ----------------------------------------------------------------------------- round trips


def test_save_load_round_trip(data_file):
    path, mods, labels, groups = data_file
    data = read_npz(path)
    assert data.modalities == list(RATES) and data.task == "classification" and data.num_classes == 3
    assert data.class_names == ["rest", "walk", "run"]
    np.testing.assert_array_equal(data.labels, labels)
    np.testing.assert_array_equal(data.groups, groups)
    splits = load_npz(path, standardize=False)
    idx = train_valid_test_split(N, (0.7, 0.1, 0.2), groups=groups, seed=0)
    assert sorted(np.concatenate(idx).tolist()) == list(range(N))
    for s, part in zip(SPLITS, idx):
        ds = splits[s]
        assert len(ds) == len(part) and ds.modalities == list(RATES)
        assert ds.input_dims == [f for _, _, f in RATES.values()]
        np.testing.assert_array_equal(ds.labels.numpy(), labels[part])
        for m, name in enumerate(RATES):
            assert ds.seq_lens[m] == max(len(mods[name][i]) for i in part)  # padded per part
            for j, i in enumerate(part):
                np.testing.assert_array_equal(unpadded(ds, m, j), mods[name][i].astype(np.float32))
                assert not ds.features[m][j, len(mods[name][i]):].any()


def test_from_arrays_equals_file(data_file):
    path, mods, labels, groups = data_file
    a = from_arrays(mods, labels, groups=groups, class_names=["rest", "walk", "run"])
    b = load_npz(path)
    for s in SPLITS:
        for fa, fb in zip(a[s].features, b[s].features):
            assert torch.equal(fa, fb)
        assert torch.equal(a[s].labels, b[s].labels)
    assert a["train"].info.source["name"] == "arrays" and b["train"].info.source["name"] == "npz"
    assert a["train"].info.class_names == ["rest", "walk", "run"]


def test_modalities_argument_selects_and_orders(data_file):
    path = data_file[0]
    ds = load_npz(path, modalities=["audio", "accel"])["train"]
    assert ds.modalities == ["audio", "accel"] and ds.input_dims == [5, 3]
    with pytest.raises(ValueError, match="'video'"):
        load_npz(path, modalities=["video"])


def test_task_from_dtype_and_override(tmp_path):
    mods, labels, _ = make_arrays()
    reg = from_arrays(mods, labels.astype(np.float64) * 0.5)
    assert reg["train"].info.task == "regression" and reg["train"].labels.dtype == torch.float32
    assert reg["train"].info.num_classes == 1
    as_reg = from_arrays(mods, labels, task="regression")
    assert as_reg["test"].info.task == "regression"
    as_cls = from_arrays(mods, labels.astype(np.float32), task="classification")
    assert as_cls["train"].info.task == "classification" and as_cls["train"].labels.dtype == torch.int64


def test_split_key_is_used_and_valid_drawn_from_train(tmp_path):
    mods, labels, groups = make_arrays()
    split = np.array(["train"] * 30 + ["valid"] * 6 + ["test"] * 12)
    got = from_arrays(mods, labels, split=split, standardize=False)
    np.testing.assert_array_equal(got["valid"].labels.numpy(), labels[30:36])
    np.testing.assert_array_equal(got["test"].labels.numpy(), labels[36:])
    no_valid = np.where(split == "valid", "train", split)
    got = from_arrays(mods, labels, split=no_valid, groups=groups, standardize=False)
    assert len(got["train"]) + len(got["valid"]) == 36 and len(got["valid"]) > 0
    np.testing.assert_array_equal(got["test"].labels.numpy(), labels[36:])


def test_bytes_strings_are_read(tmp_path):
    mods, labels, groups = make_arrays()
    arrays = {"accel": np.concatenate(mods["accel"]), "accel_lengths": np.array([len(s) for s in mods["accel"]]),
              "labels": labels, "split": np.array([b"train"] * 36 + [b"test"] * 12), "groups": groups.astype("S")}
    path = tmp_path / "bytes.npz"
    np.savez(path, **arrays)
    got = load_npz(path)
    assert len(got["test"]) == 12


# ----------------------------------------------------------------------------- splits


def group_sets(groups, parts):
    return [set(groups[p].tolist()) for p in parts]


def test_folds_never_share_a_group():
    _, labels, groups = make_arrays()
    folds = cross_validation_splits(N, 4, 0.2, groups=groups, classes=labels, seed=3)
    tests = np.concatenate([te for _, _, te in folds])
    assert sorted(tests.tolist()) == list(range(N))  # every sample tested exactly once
    for tr, va, te in folds:
        gtr, gva, gte = group_sets(groups, (tr, va, te))
        assert not (gtr & gva) and not (gtr & gte) and not (gva & gte)
        assert len(tr) and len(va) and len(te)
        assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(N))


def test_grouped_split_is_group_aware_and_near_fractions():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 40, size=1000)
    tr, va, te = train_valid_test_split(1000, (0.7, 0.1, 0.2), groups=groups, seed=5)
    gtr, gva, gte = group_sets(groups, (tr, va, te))
    assert not (gtr & gva) and not (gtr & gte) and not (gva & gte)
    assert abs(len(tr) / 1000 - 0.7) < 0.05 and abs(len(va) / 1000 - 0.1) < 0.05 and abs(len(te) / 1000 - 0.2) < 0.05


def test_stratified_folds_keep_class_proportions():
    labels = np.repeat([0, 1, 2], [50, 30, 7])  # unbalanced classes
    folds = kfold(len(labels), 5, classes=labels, seed=2)
    for k in range(3):
        per_fold = [int(np.sum(labels[te] == k)) for te in folds]
        n_k = int(np.sum(labels == k))
        assert sum(per_fold) == n_k and set(per_fold) <= {n_k // 5, -(-n_k // 5)}
    for tr, va, te in cross_validation_splits(len(labels), 5, 0.2, classes=labels, seed=2):
        for k in range(3):
            n_rest = np.sum(labels[np.r_[tr, va]] == k)
            assert abs(np.sum(labels[va] == k) - 0.2 * n_rest) <= 1.5
            assert np.sum(labels[tr] == k) > 0


def test_stratified_split_keeps_every_class_in_train():
    labels = np.array([0] * 40 + [1] * 20 + [2])  # class 2 has a single sample
    tr, va, te = train_valid_test_split(len(labels), (0.7, 0.1, 0.2), classes=labels, seed=0)
    assert set(labels[tr].tolist()) == {0, 1, 2}
    for k, n_k in ((0, 40), (1, 20)):
        assert abs(np.sum(labels[te] == k) - 0.2 * n_k) <= 1 and abs(np.sum(labels[va] == k) - 0.1 * n_k) <= 1


def test_splits_are_deterministic_and_seeded():
    _, labels, groups = make_arrays()
    for kw in ({}, {"groups": groups}, {"classes": labels}):
        a = cross_validation_splits(N, 3, 0.2, seed=7, **kw)
        b = cross_validation_splits(N, 3, 0.2, seed=7, **kw)
        c = cross_validation_splits(N, 3, 0.2, seed=8, **kw)
        assert all(np.array_equal(x, y) for fa, fb in zip(a, b) for x, y in zip(fa, fb))
        assert not all(np.array_equal(x, y) for fa, fc in zip(a, c) for x, y in zip(fa, fc))


def test_every_part_gets_a_group_when_there_are_enough():
    for n_groups in (3, 4, 5):
        groups = np.arange(n_groups * 10) % n_groups
        parts = train_valid_test_split(len(groups), (0.7, 0.1, 0.2), groups=groups, seed=0)
        assert all(len(p) for p in parts)
    sub = partition(np.array([3, 5, 7, 9]), (0.5, 0.5), seed=1)
    assert sorted(np.concatenate(sub).tolist()) == [3, 5, 7, 9]


def test_split_argument_errors():
    with pytest.raises(ValueError, match="folds: 5 folds need at least 5 groups"):
        kfold(20, 5, groups=np.arange(20) % 4)
    with pytest.raises(ValueError, match="folds"):
        kfold(20, 1)
    with pytest.raises(ValueError, match="groups: expected one entry per sample"):
        train_valid_test_split(10, groups=np.arange(9))
    with pytest.raises(ValueError, match="valid_fraction"):
        cross_validation_splits(10, 2, 1.5)


def test_load_npz_folds(data_file):
    path, _, labels, groups = data_file
    folds = load_npz_folds(path, 4, seed=1)
    assert len(folds) == 4 and sum(len(f["test"]) for f in folds) == N
    for k, f in enumerate(folds):
        assert f["train"].info.source["fold"] == k and f["train"].info.source["folds"] == 4
        one = load_npz(path, folds=4, fold=k, seed=1)
        assert torch.equal(one["test"].features[0], f["test"].features[0])


# ----------------------------------------------------------------------------- standardisation


def test_standardisation_uses_train_statistics_and_reloads(data_file):
    path = data_file[0]
    splits = load_npz(path)
    train = splits["train"]
    for x, ln in zip(train.features, train.lengths):
        valid = torch.arange(x.shape[1])[None, :] < ln[:, None]
        rows = x[valid].double()
        assert torch.allclose(rows.mean(0), torch.zeros(rows.shape[1], dtype=torch.float64), atol=1e-5)
        assert torch.allclose(rows.std(0, unbiased=False), torch.ones(rows.shape[1], dtype=torch.float64), atol=1e-4)
        assert not x[~valid].any()  # padding stays 0
    source = train.info.source
    stats = Standardizer.from_dict(source["standardize"])
    raw = load_npz(path, standardize=False)
    for s in SPLITS:
        manual = stats.apply(raw[s])
        again = load_npz(**source)[s]  # the source rebuilds the same data with stored statistics
        for a, b, c in zip(splits[s].features, manual.features, again.features):
            assert torch.equal(a, b) and torch.equal(a, c)
    buf = io.BytesIO()
    torch.save({"standardize": stats.to_dict()}, buf)
    buf.seek(0)
    back = Standardizer.from_dict(torch.load(buf, weights_only=True)["standardize"])
    assert back.to_dict() == stats.to_dict()


def test_unstandardised_data_reloads_unstandardised(data_file):
    raw = load_npz(data_file[0], standardize=False)
    source = raw["train"].info.source
    assert source["standardize"] is False
    again = load_npz(**source)
    for s in SPLITS:
        assert all(torch.equal(a, b) for a, b in zip(raw[s].features, again[s].features))


def test_split_options_errors(data_file):
    path = data_file[0]
    with pytest.raises(ValueError, match="fold: expected an int in \\[0, 3\\)"):
        load_npz(path, folds=3)
    with pytest.raises(ValueError, match="fractions"):
        load_npz(path, fractions=(0.8, 0.2))
    with pytest.raises(ValueError, match="task"):
        load_npz(path, task="ranking")


def test_drawn_split_without_groups_is_stratified():
    mods, labels, _ = make_arrays(n=90)
    got = from_arrays(mods, labels, standardize=False)
    for s, f in zip(SPLITS, (0.7, 0.1, 0.2)):
        counts = np.bincount(got[s].labels.numpy(), minlength=CLASSES)
        assert np.all(np.abs(counts - f * 30) <= 1.5), (s, counts)


def test_standardizer_constant_feature_and_batch_transform():
    x = torch.zeros(2, 4, 2)
    x[..., 0] = 5.0  # constant: only centred
    x[0, :, 1] = torch.tensor([1.0, 2.0, 3.0, 99.0])
    x[1, :, 1] = torch.tensor([4.0, 5.0, 99.0, 99.0])
    from coupled_mamba.data.dataset import MultimodalDataset
    ds = MultimodalDataset([x], [0, 1], [torch.tensor([3, 2])])
    st = Standardizer.fit(ds)
    np.testing.assert_allclose(st.mean[0], [5.0, 3.0])
    np.testing.assert_allclose(st.std[0], [1.0, np.sqrt(2.0)])
    (out,) = st.transform([x], [torch.tensor([3, 2])])
    assert out[0, 3].abs().sum() == 0 and out[1, 2:].abs().sum() == 0
    assert torch.allclose(out[0, :3, 1], (torch.tensor([1.0, 2.0, 3.0]) - 3) / np.sqrt(2.0))
    with pytest.raises(ValueError, match="features"):
        st.transform([torch.zeros(1, 3, 4)], [torch.tensor([3])])


# ----------------------------------------------------------------------------- malformed files


def good_arrays():
    mods, labels, groups = make_arrays()
    arrays = {}
    for name, seqs in mods.items():
        arrays[name] = np.concatenate(seqs).astype(np.float32)
        arrays[name + "_lengths"] = np.array([len(s) for s in seqs], dtype=np.int64)
    arrays.update(labels=labels, groups=groups, class_names=np.array(["rest", "walk", "run"]))
    return arrays


def _drop(key):
    return lambda a: a.pop(key)


def _set(key, fn):
    def edit(a):
        a[key] = fn(a[key]) if callable(fn) else fn
    return edit


def _nan_at(value):
    def fn(x):
        x = x.copy()
        x[77, 1] = value
        return x
    return fn


def _bump_first(x):
    x = x.copy()
    x[0] += 1
    return x


def _zero_first(x):
    x = x.copy()
    x[0] = 0
    return x


def _only_modality_keys_dropped(a):
    for name in RATES:
        a.pop(name + "_lengths")
        a[name + "_steps"] = a.pop(name)[:, 0]  # 1-D: not a modality, not an error by itself


def _one_class(a):
    a["labels"] = a["labels"] * 0
    a.pop("class_names")


def _split_without_test(a):
    a["split"] = np.array(["train"] * 40 + ["valid"] * 8)


def _class_only_in_test(a):
    a["labels"] = np.where(np.arange(N) == 47, 3, a["labels"])
    a["class_names"] = np.array(["rest", "walk", "run", "jump"])
    a["split"] = np.array(["train"] * 36 + ["valid"] * 4 + ["test"] * 8)


# (case, edit of the good arrays, key the message must name, words it must contain)
MALFORMED = [
    ("missing lengths", _drop("gyro_lengths"), "gyro", "'gyro_lengths'"),
    ("lengths without features", _drop("gyro"), "gyro_lengths", "no feature array"),
    ("lengths not summing to rows", _set("gyro_lengths", _bump_first), "gyro_lengths", "sum to"),
    ("zero length", _set("gyro_lengths", _zero_first), "gyro_lengths", ">= 1"),
    ("lengths count", _set("gyro_lengths", lambda x: x[:-1]), "gyro_lengths", "one length per label"),
    ("float lengths", _set("gyro_lengths", lambda x: x.astype(np.float32)), "gyro_lengths", "int"),
    ("NaN features", _set("accel", _nan_at(np.nan)), "accel", "non-finite"),
    ("inf features", _set("audio", _nan_at(np.inf)), "audio", "non-finite"),
    ("1-D features", _set("accel", lambda x: x[:, 0]), "accel", "(total_steps, features)"),
    ("string features", _set("accel", lambda x: x.astype(str)), "accel", "float"),
    ("no modality", _only_modality_keys_dropped, None, "no modality"),
    ("missing labels", _drop("labels"), "labels", "missing key"),
    ("labels out of range", _set("labels", lambda y: np.where(y == 2, 3, y)), "labels", "out of range"),
    ("negative labels", _set("labels", lambda y: y - 1), "labels", "0..K-1"),
    ("labels wrong shape", _set("labels", lambda y: y[:, None]), "labels", "(n,)"),
    ("string labels", _set("labels", lambda y: y.astype(str)), "labels", "(n,)"),
    ("labels count", _set("labels", lambda y: y[:-2]), "accel_lengths", "one length per label"),
    ("one class", _one_class, "labels", "at least 2 classes"),
    ("class_names for regression", _set("labels", lambda y: y + 0.5), "class_names", "regression"),
    ("repeated class names", _set("class_names", np.array(["a", "a", "b"])), "class_names", "distinct"),
    ("class absent from train", _class_only_in_test, "labels", "training part"),
    ("empty split", _split_without_test, "split", "'test'"),
    ("unknown split names", _set("split", np.array(["train", "val", "test"] * 16)), "split", "'val'"),
    ("split wrong length", _set("split", np.array(["train", "test"] * 10)), "split", "(48,)"),
    ("groups wrong length", _set("groups", lambda g: g[:10]), "groups", "one group per sample"),
    ("float groups", _set("groups", np.linspace(0, 1, N)), "groups", "ints or strings"),
]


@pytest.mark.parametrize("case,edit,key,words", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_file_error(tmp_path, case, edit, key, words):
    arrays = good_arrays()
    edit(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataFileError) as err:
        load_npz(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg
    if key is not None:
        assert f"key {key!r}" in msg


def test_empty_drawn_part_names_the_file(tmp_path):
    mods, labels, _ = make_arrays()
    path = tmp_path / "two_groups.npz"
    save_npz(path, mods, labels, groups=np.arange(N) % 2)
    with pytest.raises(DataFileError, match=r"two_groups\.npz.*'valid' part is empty \(2 groups\)"):
        load_npz(path)


class _Touch:
    """Unpickling this creates a file: the test checks that reading never unpickles."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_object_array_is_refused_without_unpickling(tmp_path):
    sentinel = tmp_path / "unpickled"
    arrays = good_arrays()
    arrays["notes"] = np.array([_Touch(str(sentinel))], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)  # numpy pickles object arrays when writing
    assert not sentinel.exists()
    with pytest.raises(DataFileError) as err:
        load_npz(path)
    msg = str(err.value)
    assert str(path) in msg and "key 'notes'" in msg and "object array" in msg
    assert not sentinel.exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_npz(tmp_path / "absent.npz")
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(DataFileError, match="not a readable .npz"):
        load_npz(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DataFileError, match="single array"):
        load_npz(single)
    odd = tmp_path / "odd.npz"
    np.savez(odd, **good_arrays())
    with zipfile.ZipFile(odd, "a") as zf:
        zf.writestr("notes.txt", "free text")
    with pytest.raises(DataFileError, match="key 'notes.txt': not a numpy array"):
        load_npz(odd)


def test_in_memory_errors_name_the_origin(tmp_path):
    mods, labels, _ = make_arrays()
    ragged = dict(mods)
    ragged["gyro"] = list(mods["gyro"])
    ragged["gyro"][5] = np.zeros((4, 7))
    with pytest.raises(DataFileError, match=r"from_arrays: key \"modalities\['gyro'\]\[5\]\": ragged feature counts"):
        from_arrays(ragged, labels)
    path = tmp_path / "never.npz"
    with pytest.raises(DataFileError, match="never.npz.*ragged feature counts"):
        save_npz(path, ragged, labels)
    assert not path.exists()  # checked before anything is written
    with pytest.raises(DataFileError, match="key 'labels'"):
        save_npz(path, mods, labels[:, None])
    with pytest.raises(DataFileError, match="modality name 'labels'"):
        from_arrays({"labels": mods["gyro"]}, labels)
    with pytest.raises(DataFileError, match="key 'groups'"):
        from_arrays(mods, labels, groups=[None] * N)
    with pytest.raises(DataFileError, match="key 'labels'"):
        from_arrays(mods, [[0, 1], [2]] + [0] * (N - 2))


def test_basicmotions_converts_to_an_npz_file(tmp_path):
    import importlib.util

    if importlib.util.find_spec("sktime") is None:
        pytest.skip("sktime (the basicmotions extra) is not installed")
    from coupled_mamba.data import load_basicmotions
    from coupled_mamba.data.basicmotions_npz import main

    path = tmp_path / "bm.npz"
    assert main([str(path)]) == 0
    data = read_npz(path)
    assert data.modalities == ["accelerometer", "gyroscope"] and len(data) == 80
    assert data.class_names == ["badminton", "running", "standing", "walking"]
    assert np.bincount(data.labels).tolist() == [20] * 4
    assert all((np.diff(off) == 100).all() for off in data.offsets)
    # the file's clips are the bundled ones, train then test, unstandardised
    from coupled_mamba.data.basicmotions import _bundled_file, read_ts

    X = np.concatenate([read_ts(_bundled_file(s))[0] for s in ("train", "test")]).transpose(0, 2, 1)
    np.testing.assert_array_equal(data.steps[0].reshape(80, 100, 3), X[..., 0:3])
    np.testing.assert_array_equal(data.steps[1].reshape(80, 100, 3), X[..., 3:6])
    assert load_basicmotions()["train"].info.class_names == data.class_names
    folds = load_npz_folds(path, 5)
    assert sorted(np.concatenate([f["test"].labels.numpy() for f in folds]).tolist()) == sorted(data.labels.tolist())
