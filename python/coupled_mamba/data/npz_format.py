"""The ``.npz`` format's contents, checked: :func:`parse_arrays` turns a file's named arrays (or the
same arrays built in memory) into :class:`SequenceData`, or raises one :class:`DataFileError` naming
the file, the key and what was expected. The format itself is described in :mod:`.npz` and
docs/data-npz.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

import numpy as np

from .dataset import SPLITS, MultimodalDataset, TaskInfo
from .mmsa import DataFileError

__all__ = ["SequenceData", "parse_arrays", "RESERVED_KEYS"]

RESERVED_KEYS = ("labels", "class_names", "split", "groups")
_RESERVED = RESERVED_KEYS

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
