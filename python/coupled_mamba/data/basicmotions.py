"""BasicMotions: a small real multimodal dataset that ships inside sktime (optional extra).

Smart-watch recordings of four activities (standing, walking, running, badminton): 40 training
and 40 test clips, each 100 steps of a 3-axis accelerometer and a 3-axis gyroscope, read offline
from the copy bundled with sktime (``pip install coupled-mamba[basicmotions]``; the file is
read directly, without importing sktime). Two modalities,
"accelerometer" (channels 0-2) and "gyroscope" (channels 3-5); 4-class classification.

Splits: the official test set is "test"; the official training set is split into "train" and
"valid" (``valid_per_class`` clips of each class, chosen by ``seed``). Channels are standardised
with the mean and standard deviation of the "train" split.

The same clips as an ``.npz`` file in the format of :mod:`.npz` (all 80 clips pooled, raw values,
no ``split`` key, so ``coupled-mamba train --data FILE.npz --folds K`` draws stratified folds)::

    python -m coupled_mamba.data.basicmotions_npz basicmotions.npz
"""
from __future__ import annotations

import importlib.util
import os
from typing import Dict

import numpy as np

from .dataset import MultimodalDataset, TaskInfo, check_splits

__all__ = ["load_basicmotions", "save_basicmotions_npz", "BASICMOTIONS_MODALITIES"]

BASICMOTIONS_MODALITIES = ("accelerometer", "gyroscope")


def _bundled_file(split: str) -> str:
    """The path of sktime's bundled BasicMotions_<SPLIT>.ts (sktime is found, not imported)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the BasicMotions dataset is read from the copy bundled with sktime, which is not "
            "installed: pip install 'coupled-mamba[basicmotions]' (or pip install sktime)"
        )
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "datasets", "data", "BasicMotions", f"BasicMotions_{split.upper()}.ts")
    if not os.path.exists(path):
        raise ImportError(f"this sktime installation has no bundled BasicMotions data ({path} is missing)")
    return path


def read_ts(path: str):
    """A multivariate, equal-length .ts file (the UEA archive format): X (N, channels, T), labels (N,)."""
    X, y = [], []
    in_data = False
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                in_data = line.lower() == "@data"
                continue
            *dims, label = line.split(":")
            try:
                X.append([[float(v) for v in d.split(",")] for d in dims])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected comma-separated numbers") from None
            y.append(label.strip())
    try:
        arr = np.asarray(X, dtype=np.float32)
    except ValueError:
        raise ValueError(f"{path}: series of unequal length or channel count") from None
    if arr.ndim != 3 or len(arr) == 0:
        raise ValueError(f"{path}: no data found")
    return arr, np.asarray(y)


def _read_both():
    """Both bundled files: X (N, channels, T) and lower-case labels, train then test."""
    Xtr, ytr = read_ts(_bundled_file("train"))
    Xte, yte = read_ts(_bundled_file("test"))
    return Xtr, np.char.lower(ytr), Xte, np.char.lower(yte)


def save_basicmotions_npz(path: str) -> int:
    """Write the 80 clips (train then test, unstandardised) as an ``.npz`` file; returns the count."""
    from .npz import save_npz

    Xtr, ytr, Xte, yte = _read_both()
    X = np.concatenate([Xtr, Xte]).transpose(0, 2, 1)  # (N, T, channels)
    y = np.concatenate([ytr, yte])
    classes = sorted(set(y.tolist()))
    labels = np.array([classes.index(c) for c in y], dtype=np.int64)
    save_npz(path, {"accelerometer": list(X[:, :, 0:3]), "gyroscope": list(X[:, :, 3:6])}, labels,
             class_names=classes)
    return len(labels)


def load_basicmotions(seed: int = 0, valid_per_class: int = 2) -> Dict[str, MultimodalDataset]:
    """The split dict of BasicMotions (see the module docstring)."""
    Xtr, ytr, Xte, yte = _read_both()
    classes = sorted(set(ytr.tolist()) | set(yte.tolist()))
    cid = {c: i for i, c in enumerate(classes)}
    ctr = np.array([cid[c] for c in ytr], dtype=np.int64)
    cte = np.array([cid[c] for c in yte], dtype=np.int64)

    rng = np.random.default_rng([seed, 7])
    valid_idx = []
    for k in range(len(classes)):
        members = np.flatnonzero(ctr == k)
        valid_idx.extend(rng.choice(members, size=min(valid_per_class, len(members) - 1), replace=False).tolist())
    valid_mask = np.zeros(len(ctr), dtype=bool)
    valid_mask[valid_idx] = True

    # (N, channels, T) -> (N, T, channels); standardise with train statistics.
    Xtr, Xte = Xtr.transpose(0, 2, 1), Xte.transpose(0, 2, 1)
    train_part = Xtr[~valid_mask]
    mean = train_part.mean(axis=(0, 1), keepdims=True)
    std = train_part.std(axis=(0, 1), keepdims=True) + 1e-6
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std

    source = dict(name="basicmotions", seed=seed, valid_per_class=valid_per_class, task="classification")
    info = TaskInfo("basicmotions", "classification", len(classes), "classification",
                    list(BASICMOTIONS_MODALITIES), classes, source)

    def make(X, c):
        X = np.ascontiguousarray(X, dtype=np.float32)
        return MultimodalDataset([X[:, :, 0:3], X[:, :, 3:6]], c, None, info)

    out = {
        "train": make(Xtr[~valid_mask], ctr[~valid_mask]),
        "valid": make(Xtr[valid_mask], ctr[valid_mask]),
        "test": make(Xte, cte),
    }
    check_splits(out, "BasicMotions")
    return out

