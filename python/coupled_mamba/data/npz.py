"""Your own data as an ``.npz`` file (or arrays in memory), read without ever unpickling.

The format (docs/data-npz.md), for ``n`` samples:

* per modality NAME: ``NAME`` float ``(total_steps, features)``, every sample's sequence one after
  another, and ``NAME_lengths`` int ``(n,)``, each sample's number of steps (>= 1). Modalities may
  differ in length and rate. The modalities are the keys with a ``_lengths`` twin, in file order.
* ``labels`` ``(n,)``: integers 0..K-1 (classification) or floats (regression).
* optional ``class_names`` ``(K,)`` strings; ``split`` ``(n,)`` strings among "train", "valid",
  "test"; ``groups`` ``(n,)`` ints or strings (subject, session, speaker).
* other keys are ignored, except a 2-D numeric array without its ``_lengths`` twin (an error).

The file is opened with ``np.load(..., allow_pickle=False)``: an object array is refused, never
unpickled. Every problem raises one :class:`DataFileError` naming the file, the key and what was
expected. :func:`load_npz` / :func:`from_arrays` return the split dict of
:class:`MultimodalDataset`; without a ``split`` key the split is drawn by :mod:`.splits`
(group-aware; stratified by class without groups), or K-fold cross-validation with ``folds``.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .dataset import SPLITS, MultimodalDataset, TaskInfo, check_splits
from .mmsa import DataFileError
from .splits import Standardizer, cross_validation_splits, partition, train_valid_test_split

__all__ = ["load_npz", "load_npz_folds", "read_npz", "from_arrays", "save_npz", "make_splits", "SequenceData"]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
_RESERVED = ("labels", "class_names", "split", "groups")

# ---------------------------------------------------------------------------------- the contents


@dataclass
class SequenceData:
    """Checked contents of a file: per modality the concatenated steps and each sample's offset."""

    origin: str  # the file (or "from_arrays"), for messages
    modalities: List[str]
    steps: List[np.ndarray]  # (total_steps, F_m) float32
    offsets: List[np.ndarray]  # (n + 1,) int64: sample i is steps[offsets[i]:offsets[i + 1]]
    labels: np.ndarray  # (n,) int64 classes or float32 targets
    task: str
    num_classes: int  # 1 for regression
    class_names: Optional[List[str]] = None
    split: Optional[np.ndarray] = None  # (n,) str
    groups: Optional[np.ndarray] = None  # (n,) ints or str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def part(self, index: np.ndarray, info: TaskInfo) -> MultimodalDataset:
        """Samples ``index`` right-padded with zeros to their longest sequence, per modality."""
        index = np.asarray(index, dtype=np.int64)
        feats, lens = [], []
        for steps, off in zip(self.steps, self.offsets):
            start, ln = off[index], off[index + 1] - off[index]
            out = np.zeros((len(index), int(ln.max()) if len(index) else 1, steps.shape[1]), np.float32)
            row = np.repeat(np.arange(len(index)), ln)
            t = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)
            out[row, t] = steps[np.repeat(start, ln) + t]
            feats.append(out)
            lens.append(ln)
        return MultimodalDataset(feats, self.labels[index], lens, info)


def _fail(origin: str, key: Optional[str], msg: str):
    raise DataFileError(f"{origin}: key {key!r}: {msg}" if key else f"{origin}: {msg}")


def _kind(a: np.ndarray) -> str:
    return f"shape {a.shape} and dtype {a.dtype}"


def _strings(origin: str, key: str, a: np.ndarray, n: Optional[int], what: str) -> np.ndarray:
    if a.ndim != 1 or (n is not None and a.shape[0] != n) or a.dtype.kind not in "US":
        shape = f"({n},)" if n is not None else "(K,)"
        _fail(origin, key, f"expected {shape} strings ({what}), got {_kind(a)}")
    return np.char.decode(a, "utf-8") if a.dtype.kind == "S" else a.astype(str)


def parse_arrays(origin: str, arrays: Mapping[str, np.ndarray], modalities: Optional[Sequence[str]] = None,
                 task: Optional[str] = None) -> SequenceData:
    """Check a file's arrays (in file order) and return their contents; one DataFileError otherwise."""
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task: expected 'classification' or 'regression', got {task!r}")
    keys = list(arrays)
    found = f"keys present: {keys}"
    names = [k for k in keys if k + "_lengths" in arrays and k not in _RESERVED]
    for k in keys:
        a = arrays[k]
        if k.endswith("_lengths") and k[: -len("_lengths")] not in arrays:
            _fail(origin, k, f"has no feature array {k[: -len('_lengths')]!r} beside it; {found}")
        if k not in names and k not in _RESERVED and not k.endswith("_lengths") and a.ndim == 2 \
                and a.dtype.kind in "biuf":
            _fail(origin, k, f"a (total_steps, features) array without its lengths {k + '_lengths'!r} "
                  f"(expected int (n,), the number of steps of each sample)")
    if not names:
        _fail(origin, None, "no modality: expected a float (total_steps, features) array NAME with an int (n,) "
              f"NAME_lengths beside it; {found}")
    if isinstance(modalities, str):
        modalities = [modalities]
    if modalities:
        for m in modalities:
            if m not in names:
                raise ValueError(f"modalities: {m!r} is not in {origin}, which has {names}")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities: {list(modalities)} repeats a name")
        names = list(modalities)
    if "labels" not in arrays:
        _fail(origin, None, f"missing key 'labels' (expected (n,) integer classes or float targets); {found}")
    y = arrays["labels"]
    if y.ndim != 1 or y.shape[0] == 0 or y.dtype.kind not in "biuf":
        _fail(origin, "labels", f"expected (n,) integers 0..K-1 (classification) or floats (regression), "
              f"n >= 1, got {_kind(y)}")
    n = y.shape[0]
    kind = task or ("regression" if y.dtype.kind == "f" else "classification")
    steps, offsets = [], []
    for m in names:
        x, ln = _modality(origin, m, arrays[m], arrays[m + "_lengths"], n)
        steps.append(x)
        offsets.append(np.r_[0, np.cumsum(ln)].astype(np.int64))
    class_names = None
    if "class_names" in arrays:
        if kind != "classification":
            _fail(origin, "class_names", "given for a regression task (float labels); expected integer labels")
        class_names = _strings(origin, "class_names", arrays["class_names"], None, "one name per class").tolist()
        if len(set(class_names)) != len(class_names) or not class_names:
            _fail(origin, "class_names", f"expected distinct names, got {class_names}")
    if not np.all(np.isfinite(y.astype(np.float64))):
        _fail(origin, "labels", "expected finite values, found NaN or inf")
    if kind == "classification":
        yf = y.astype(np.float64)
        if np.any(yf != np.round(yf)) or yf.min() < 0:
            _fail(origin, "labels", "expected integer classes 0..K-1 (or float labels for regression), got "
                  f"values from {yf.min():g} to {yf.max():g}")
        k = len(class_names) if class_names is not None else int(yf.max()) + 1
        if yf.max() >= k:
            _fail(origin, "labels", f"class {int(yf.max())} out of range: 'class_names' names {k} classes 0..{k - 1}")
        if k < 2:
            _fail(origin, "labels", "only class 0: classification needs at least 2 classes")
        labels, num_classes = yf.astype(np.int64), k
    else:
        labels, num_classes = y.astype(np.float32), 1
    split = None
    if "split" in arrays:
        split = _strings(origin, "split", arrays["split"], n, 'each "train", "valid" or "test"')
        unknown = sorted(set(split.tolist()) - set(SPLITS))
        if unknown:
            _fail(origin, "split", f"unknown split names {unknown}; expected each of 'train', 'valid', 'test'")
    groups = None
    if "groups" in arrays:
        g = arrays["groups"]
        if g.ndim != 1 or g.shape[0] != n or g.dtype.kind not in "iuUS":
            _fail(origin, "groups", f"expected ({n},) ints or strings, one group per sample, got {_kind(g)}")
        groups = np.char.decode(g, "utf-8") if g.dtype.kind == "S" else g
    return SequenceData(origin, list(names), steps, offsets, labels, kind, num_classes, class_names, split, groups)


def _modality(origin: str, m: str, x: np.ndarray, ln: np.ndarray, n: int):
    key = m + "_lengths"
    if x.ndim != 2 or x.shape[1] < 1 or x.dtype.kind not in "iuf":
        _fail(origin, m, f"expected a float (total_steps, features) array, features >= 1, got {_kind(x)}")
    if ln.ndim != 1 or ln.shape[0] != n or ln.dtype.kind not in "iu":
        _fail(origin, key, f"expected int ({n},) (one length per label), got {_kind(ln)}")
    ln = ln.astype(np.int64)
    if ln.min() < 1:
        i = int(np.argmin(ln))
        _fail(origin, key, f"sample {i} has length {ln[i]}; expected every length >= 1")
    if int(ln.sum()) != x.shape[0]:
        _fail(origin, key, f"lengths sum to {int(ln.sum())} steps, but {m!r} has {x.shape[0]} rows; expected "
              "the lengths to add up to the rows (each sample's steps one after another)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        sample = int(np.searchsorted(np.cumsum(ln), row, side="right"))
        _fail(origin, m, f"{int(bad.sum())} non-finite values (NaN or inf, or beyond float32), the first in "
              f"sample {sample} (row {row}); expected finite features")
    return x, ln


def stack_sequences(origin: str, name: str, seqs) -> tuple:
    """A list of n (T_i, F) arrays as the file's (total_steps, F) steps and (n,) lengths."""
    where = f"modalities[{name!r}]"
    if isinstance(seqs, np.ndarray) and seqs.dtype != object:
        seqs = list(seqs)  # a padded (n, T, F) array: every sample uses all T steps
    try:
        seqs = [np.asarray(s) for s in seqs]
    except TypeError:
        _fail(origin, where, f"expected a list of (T_i, F) arrays, got {type(seqs).__name__}")
    if not seqs:
        _fail(origin, where, "expected a list of (T_i, F) arrays, one per sample, got none")
    width = None
    for i, s in enumerate(seqs):
        if s.ndim != 2 or s.shape[0] < 1 or s.dtype.kind not in "iuf":
            _fail(origin, f"{where}[{i}]", f"expected a numeric (T_i, F) array with T_i >= 1, got {_kind(s)}")
        if width is None:
            width = s.shape[1]
        elif s.shape[1] != width:
            _fail(origin, f"{where}[{i}]", f"ragged feature counts: {s.shape[1]} features, sample 0 has {width}; "
                  "expected the same F for every sample of a modality")
    lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    return np.concatenate([s.astype(np.float32, copy=False) for s in seqs], axis=0), lengths


def read_npz(path, modalities: Optional[Sequence[str]] = None, task: Optional[str] = None) -> SequenceData:
    """The checked contents of an ``.npz`` file in this format (no split drawn yet)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (expected an .npz file, see docs/data-npz.md)")
    if os.path.isdir(path):
        raise DataFileError(f"{path}: is a directory, expected an .npz file")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataFileError(f"{path}: holds a single array, expected an .npz archive of named arrays "
                            "(write it with coupled_mamba.data.save_npz or numpy.savez)")
    arrays: Dict[str, np.ndarray] = {}
    with z:
        for key in z.files:
            try:
                value = z[key]
            except ValueError as e:
                if "allow_pickle" in str(e) or "Object arrays" in str(e):
                    raise DataFileError(
                        f"{path}: key {key!r}: an object array (pickled Python objects), refused without "
                        "being unpickled because unpickling can run code; expected numeric arrays, and "
                        "text as fixed-width strings (e.g. np.array(names, dtype=str))") from None
                raise DataFileError(f"{path}: key {key!r}: could not be read ({e})") from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise DataFileError(f"{path}: key {key!r}: could not be read ({type(e).__name__}: {e})") from None
            if not isinstance(value, np.ndarray):  # a zip member that is not a .npy file
                raise DataFileError(f"{path}: key {key!r}: not a numpy array (.npy) inside the archive")
            arrays[key] = value
    return parse_arrays(path, arrays, modalities, task)


def _fraction_check(fractions: Sequence[float]) -> tuple:
    f = tuple(float(v) for v in fractions)
    if len(f) != 3 or any(not np.isfinite(v) or v <= 0 for v in f):
        raise ValueError(f"fractions: expected three positive numbers (train, valid, test), got {list(fractions)}")
    return f


def _indices(data: SequenceData, folds, fold, seed: int, fractions) -> tuple:
    """(train, valid, test) index arrays of the split that ``folds``/``fold`` and the file say."""
    fr = _fraction_check(fractions)
    valid_share = fr[1] / (fr[0] + fr[1])  # the valid part's share of a training part
    classes = data.labels if data.task == "classification" else None
    if folds is not None:
        if fold is None or not (0 <= int(fold) < int(folds)):
            raise ValueError(f"fold: expected an int in [0, {folds}) with folds={folds}, got {fold!r}")
        if data.split is not None:
            warnings.warn(f"{data.origin}: key 'split' is not used: cross-validation draws its own folds "
                          "over all samples", stacklevel=3)
        return cross_validation_splits(len(data), int(folds), valid_share, data.groups, classes, seed)[int(fold)]
    if data.split is None:
        return train_valid_test_split(len(data), fr, data.groups, classes, seed)
    tr, va, te = (np.flatnonzero(data.split == s) for s in SPLITS)
    for name, part in (("train", tr), ("test", te)):
        if len(part) == 0:
            raise DataFileError(f"{data.origin}: key 'split': no sample is marked {name!r}; expected "
                                "train and test samples (valid ones are drawn from train when absent)")
    if len(va) == 0:
        tr, va = partition(tr, (1.0 - valid_share, valid_share), data.groups, classes, seed)
    return tr, va, te


def make_splits(data: SequenceData, folds: Optional[int] = None, fold: Optional[int] = None, seed: int = 0,
                fractions: Sequence[float] = DEFAULT_FRACTIONS, standardize: Union[bool, Mapping] = True,
                source: Optional[Dict] = None) -> Dict[str, MultimodalDataset]:
    """The split dict of ``data``: the file's ``split``, else drawn; fold ``fold`` of ``folds``.

    ``standardize``: True fits a :class:`Standardizer` on the train part and applies it to every
    part; a dict (``Standardizer.to_dict()``) applies stored statistics; False leaves features as
    they are. The statistics used are recorded in ``info.source["standardize"]``.
    """
    where = f" (fold {fold} of {folds})" if folds is not None else ""
    idx = _indices(data, folds, fold, int(seed), fractions)
    for name, part in zip(SPLITS, idx):
        if len(part) == 0:
            units = f"{len(np.unique(data.groups))} groups" if data.groups is not None else f"{len(data)} samples"
            raise DataFileError(f"{data.origin}: the {name!r} part{where} is empty ({units}); use more "
                                "samples or groups, other fractions, or a 'split' key")
    if data.task == "classification":
        absent = np.setdiff1d(np.arange(data.num_classes), data.labels[idx[0]])
        if len(absent):
            names = [f"{c} ({data.class_names[c]!r})" if data.class_names else str(c) for c in absent]
            what = f"class {names[0]} has" if len(names) == 1 else f"classes {', '.join(names)} have"
            raise DataFileError(f"{data.origin}: key 'labels': {what} no sample in the "
                                f"training part{where}; every class 0..{data.num_classes - 1} needs training "
                                "samples (add samples, drop the class, or use fewer folds)")
    src = dict(source or {"name": "arrays"})
    src.update(task=data.task, modalities=list(data.modalities), seed=int(seed),
               fractions=[float(v) for v in fractions])
    if folds is not None:
        src.update(folds=int(folds), fold=int(fold))
    if data.task == "classification":
        info = TaskInfo(src["name"], "classification", data.num_classes, "classification",
                        list(data.modalities), data.class_names, src)
    else:
        info = TaskInfo(src["name"], "regression", 1, "regression", list(data.modalities), None, src)
    out = {name: data.part(part, info) for name, part in zip(SPLITS, idx)}
    if standardize is not False and standardize is not None:
        st = Standardizer.fit(out["train"]) if standardize is True else Standardizer.from_dict(dict(standardize))
        if st.modalities != list(data.modalities):
            raise ValueError(f"standardize: statistics for modalities {st.modalities}, the data has {data.modalities}")
        out = {name: st.apply(ds) for name, ds in out.items()}
        src["standardize"] = st.to_dict()
    else:
        src["standardize"] = False
    check_splits(out, data.origin)
    return out


def load_npz(path, modalities: Optional[Sequence[str]] = None, task: Optional[str] = None,
             folds: Optional[int] = None, fold: Optional[int] = None, seed: int = 0,
             fractions: Sequence[float] = DEFAULT_FRACTIONS, standardize: Union[bool, Mapping] = True,
             name: str = "npz") -> Dict[str, MultimodalDataset]:
    """Load an ``.npz`` file as the split dict (see :func:`make_splits` for the arguments).

    ``info.source`` records every argument (and the statistics used), so ``load_npz(**source)``
    rebuilds the same split dict, standardised with the same statistics.
    """
    data = read_npz(path, modalities, task)
    source = dict(name=name, path=os.path.abspath(os.fspath(path)))
    return make_splits(data, folds, fold, seed, fractions, standardize, source)


def load_npz_folds(path, folds: int, modalities: Optional[Sequence[str]] = None, task: Optional[str] = None,
                   seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS, standardize: bool = True,
                   name: str = "npz") -> List[Dict[str, MultimodalDataset]]:
    """The split dict of every fold of ``folds``-fold cross-validation (the file read once)."""
    data = read_npz(path, modalities, task)
    source = dict(name=name, path=os.path.abspath(os.fspath(path)))
    return [make_splits(data, folds, k, seed, fractions, standardize, source) for k in range(int(folds))]


def from_arrays(modalities: Mapping[str, Sequence[np.ndarray]], labels, split=None, groups=None, class_names=None,
                task: Optional[str] = None, folds: Optional[int] = None, fold: Optional[int] = None, seed: int = 0,
                fractions: Sequence[float] = DEFAULT_FRACTIONS,
                standardize: Union[bool, Mapping] = True) -> Dict[str, MultimodalDataset]:
    """The split dict of arrays in memory, checked exactly as a file would be.

    ``modalities``: ``{name: list of n arrays (T_i, F)}`` in the order to use; the other arguments
    are the file's keys and :func:`make_splits`'s options.
    """
    arrays = _as_file_arrays("from_arrays", modalities, labels, split, groups, class_names)
    data = parse_arrays("from_arrays", arrays, None, task)
    return make_splits(data, folds, fold, seed, fractions, standardize, {"name": "arrays"})


def save_npz(path, modalities: Mapping[str, Sequence[np.ndarray]], labels, split=None, groups=None,
             class_names=None) -> None:
    """Write ``modalities`` (``{name: list of n arrays (T_i, F)}``) and the keys in this format.

    Everything is checked as :func:`read_npz` would check it before anything is written.
    """
    path = os.fspath(path)
    arrays = _as_file_arrays(path, modalities, labels, split, groups, class_names)
    parse_arrays(path, arrays, None, None)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _as_file_arrays(origin: str, modalities, labels, split, groups, class_names) -> Dict[str, np.ndarray]:
    """The file's arrays, in file order, from in-memory sequences and keys."""
    if not isinstance(modalities, Mapping) or len(modalities) == 0:
        raise DataFileError(f"{origin}: modalities: expected a dict {{name: list of (T_i, F) arrays}} with at "
                            f"least one modality, got {type(modalities).__name__}")
    arrays: Dict[str, np.ndarray] = {}
    for name, seqs in modalities.items():
        if not isinstance(name, str) or not name or name.endswith("_lengths") or name in _RESERVED:
            raise DataFileError(f"{origin}: modality name {name!r}: expected a non-empty string, not ending "
                                f"in '_lengths' and not one of {sorted(_RESERVED)}")
        arrays[name], arrays[f"{name}_lengths"] = stack_sequences(origin, name, seqs)
    arrays["labels"] = _plain(origin, "labels", labels)
    for key, value in (("class_names", class_names), ("split", split), ("groups", groups)):
        if value is not None:
            arrays[key] = _plain(origin, key, value)
    return arrays


def _plain(origin: str, key: str, value) -> np.ndarray:
    """``value`` as a numeric or string array (never an object array, which a file would refuse)."""
    try:
        a = np.asarray(value)
        if a.dtype == object and all(isinstance(v, str) for v in value):
            a = np.asarray(value, dtype=str)
    except (TypeError, ValueError):
        a = np.empty(0, dtype=object)
    if a.dtype == object:
        raise DataFileError(f"{origin}: key {key!r}: expected numbers or strings, got Python objects")
    return a

