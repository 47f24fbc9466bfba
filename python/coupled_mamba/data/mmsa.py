"""Loader for the MMSA feature pickles (CMU-MOSI, CMU-MOSEI aligned / unaligned, CH-SIMS, SIMS v2).

The file is a pickle of ``{"train": split, "valid": split, "test": split}``; each split a dict of
arrays (see docs: shared/docs/mmsa-data.md). Widths and lengths are read from the arrays, never
assumed. What the loader does with each key:

* ``text`` (N, L_t, d_t), ``audio`` (N, L_a, d_a), ``vision`` (N, L_v, d_v): features, converted
  to float32 (they may be stored as float64); non-finite values (``-inf`` in audio) become 0.
* ``audio_lengths``, ``vision_lengths`` (optional, unaligned files; arrays or Python lists): valid
  steps per sample. Without them a modality uses its full length.
* ``text_bert`` (optional, (N, 3, L_t), possibly floats): its attention mask (row 1) gives the
  text's valid length; without it the text uses its full length.
* ``regression_labels`` (N,) or (N, 1): the target (regression) and, when
  ``classification_labels`` is absent, the source of 3-class labels.
* ``classification_labels`` (optional): 0 negative, 1 neutral, 2 positive.
* ``regression_labels_T/_A/_V``, ``id``, ``raw_text``: not used.

A missing or damaged file, a missing key or an array of the wrong shape raises
:class:`DataFileError` naming the file, the key and what was expected.

A pickle can run code when it is opened. The file is read with :mod:`.safe_pickle`, which rebuilds
only dicts, lists, tuples, strings, bytes, numbers and numpy arrays and refuses a file that names
anything else (a :class:`DataFileError` naming the file and the refused global); docs/data.md says
the same to users.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from .dataset import SPLITS, MultimodalDataset, TaskInfo, check_splits
from .safe_pickle import RefusedPickle, load_data_pickle

__all__ = ["load_mmsa", "DataFileError", "MMSA_MODALITIES", "MMSA_DATASETS"]

MMSA_MODALITIES = ("text", "audio", "vision")
# dataset name -> metric family for regression
MMSA_DATASETS = {"mosi": "mosi", "mosei": "mosi", "sims": "sims", "simsv2": "sims"}
CLASS_NAMES = ["negative", "neutral", "positive"]
# 3-class bins derived from regression labels when a file has no classification_labels:
# MOSI/MOSEI by sign (0 is neutral); SIMS by the community's 3-class bins (neutral = (-0.1, 0.1]).
_SIMS_EDGES_3 = (-0.1, 0.1)


class DataFileError(ValueError):
    """A data file that cannot be used: says which file, which key, and what was expected."""


def _where(path: str, split: Optional[str] = None, key: Optional[str] = None) -> str:
    s = str(path)
    if split is not None:
        s += f": [{split!r}]"
    if key is not None:
        s += f"[{key!r}]"
    return s


def _read_pickle(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (expected an MMSA feature pickle, e.g. unaligned_50.pkl)")
    if os.path.isdir(path):
        raise DataFileError(f"{path}: is a directory, expected an MMSA feature pickle file")
    try:
        with open(path, "rb") as f:
            return load_data_pickle(f)
    except RefusedPickle as e:
        raise DataFileError(
            f"{path}: refused to open: the pickle names {e}, but an MMSA feature pickle holds only numpy "
            "arrays, dicts, lists, strings and numbers, and a pickle that names other functions or classes "
            "can run code when opened (see docs/data.md)"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # unpickling can fail in many ways; all mean "not a usable pickle"
        raise DataFileError(
            f"{path}: could not be read as a pickle ({type(e).__name__}: {e}); expected an MMSA "
            "feature pickle, a dict with keys 'train', 'valid', 'test'"
        ) from None


def _numeric(path, split, key, value, ndims, shape_doc: str, dtype) -> np.ndarray:
    """``value`` as a numeric array of one of the ranks ``ndims``, or a DataFileError."""
    where = _where(path, split, key)
    try:
        a = np.asarray(value)
        if a.dtype == object:
            raise ValueError("ragged or non-numeric entries")
        if a.dtype.kind not in "biuf":
            raise ValueError(f"dtype {a.dtype}")
        a = a.astype(dtype, copy=False)
    except (ValueError, TypeError) as e:
        raise DataFileError(
            f"{where}: expected a numeric array of shape {shape_doc}, got {_describe(value)} ({e})"
        ) from None
    if a.ndim not in ((ndims,) if isinstance(ndims, int) else ndims):
        raise DataFileError(f"{where}: expected a numeric array of shape {shape_doc}, got shape {a.shape}")
    return a


def _describe(value) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def _labels_1d(path, split, key, value, n: Optional[int]) -> np.ndarray:
    a = _numeric(path, split, key, value, (1, 2), "(N,)", np.float64)
    if a.ndim == 2:
        if a.shape[1] != 1:
            raise DataFileError(f"{_where(path, split, key)}: expected shape (N,) or (N, 1), got {a.shape}")
        a = a[:, 0]
    if n is not None and a.shape[0] != n:
        raise DataFileError(
            f"{_where(path, split, key)}: {a.shape[0]} values, expected N = {n} (the split's sample count)"
        )
    if not np.all(np.isfinite(a)):
        raise DataFileError(f"{_where(path, split, key)}: labels must be finite, found NaN or inf")
    return a


def _lengths(path, split, key, value, n: int, L: int) -> np.ndarray:
    a = _numeric(path, split, key, value, 1, "(N,) of integers", np.float64)
    if a.shape[0] != n:
        raise DataFileError(f"{_where(path, split, key)}: {a.shape[0]} lengths, expected N = {n}")
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)) or np.any(a < 0):
        raise DataFileError(f"{_where(path, split, key)}: expected non-negative integer lengths")
    return np.clip(a.astype(np.int64), 1, L)


def _text_lengths(path, split, value, n: int, L: int) -> np.ndarray:
    a = _numeric(path, split, "text_bert", value, 3, "(N, 3, L_t)", np.float64)
    if a.shape[0] != n or a.shape[1] != 3:
        raise DataFileError(f"{_where(path, split, 'text_bert')}: expected shape ({n}, 3, L_t), got {a.shape}")
    mask = a[:, 1, :]
    return np.clip(np.sum(mask != 0, axis=1).astype(np.int64), 1, L)


def _class_labels(path, split, d, family: str, n: int) -> np.ndarray:
    if "classification_labels" in d:
        c = _labels_1d(path, split, "classification_labels", d["classification_labels"], n)
        if np.any(c != np.round(c)) or np.any((c < 0) | (c > 2)):
            raise DataFileError(
                f"{_where(path, split, 'classification_labels')}: expected classes 0 (negative), "
                "1 (neutral), 2 (positive)"
            )
        return c.astype(np.int64)
    if "regression_labels" not in d:
        raise DataFileError(
            f"{_where(path, split)}: missing key 'classification_labels' (and 'regression_labels' "
            "to derive it from)"
        )
    y = _labels_1d(path, split, "regression_labels", d["regression_labels"], n).astype(np.float32)
    if family == "sims":
        lo, hi = (np.float32(v) for v in _SIMS_EDGES_3)
        return np.where(y <= lo, 0, np.where(y <= hi, 1, 2)).astype(np.int64)
    return np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.int64)


def load_mmsa(
    path: str,
    dataset: str = "mosei",
    task: str = "regression",
    modalities: Optional[Sequence[str]] = None,
) -> Dict[str, MultimodalDataset]:
    """Load an MMSA feature pickle into the split dict.

    ``dataset`` ("mosi", "mosei", "sims", "simsv2") picks the metrics (MOSI/MOSEI or SIMS) and,
    for ``task="classification"`` on a file without ``classification_labels``, how 3-class
    labels are derived from the regression labels. ``modalities`` selects a subset of
    ("text", "audio", "vision") in the given order.
    """
    if dataset not in MMSA_DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(MMSA_DATASETS)}, got {dataset!r}")
    if task not in ("regression", "classification"):
        raise ValueError(f"task: expected 'regression' or 'classification', got {task!r}")
    mods = list(modalities) if modalities else list(MMSA_MODALITIES)
    for m in mods:
        if m not in MMSA_MODALITIES:
            raise ValueError(f"modality {m!r}: MMSA files have {list(MMSA_MODALITIES)}")
    path = os.fspath(path)
    family = MMSA_DATASETS[dataset]

    data = _read_pickle(path)
    if not isinstance(data, dict):
        raise DataFileError(
            f"{path}: top level is {_describe(data)}, expected a dict with keys 'train', 'valid', 'test'"
        )
    for split in SPLITS:
        if split not in data:
            found = sorted(str(k) for k in data.keys())
            raise DataFileError(f"{path}: missing key {split!r}: expected 'train', 'valid', 'test', found {found}")
        if not isinstance(data[split], dict):
            raise DataFileError(f"{_where(path, split)}: is {_describe(data[split])}, expected a dict of arrays")

    source = dict(name=dataset, path=os.path.abspath(path), task=task, modalities=mods)
    if task == "regression":
        info = TaskInfo(dataset, "regression", 1, family, mods, None, source)
    else:
        info = TaskInfo(dataset, "classification", 3, "sentiment3", mods, list(CLASS_NAMES), source)

    out: Dict[str, MultimodalDataset] = {}
    widths: Optional[List[int]] = None
    for split in SPLITS:
        d = data[split]
        feats, lens = [], []
        n = None
        for m in mods:
            if m not in d:
                raise DataFileError(
                    f"{_where(path, split)}: missing key {m!r} (expected features of shape (N, L, d); "
                    f"keys present: {sorted(str(k) for k in d.keys())})"
                )
            x = _numeric(path, split, m, d[m], 3, "(N, L, d)", np.float32)
            if n is None:
                n = x.shape[0]
            elif x.shape[0] != n:
                raise DataFileError(f"{_where(path, split, m)}: {x.shape[0]} samples, but {mods[0]!r} has {n}")
            if x.shape[1] < 1 or x.shape[2] < 1:
                raise DataFileError(f"{_where(path, split, m)}: expected (N, L, d) with L, d >= 1, got {x.shape}")
            bad = ~np.isfinite(x)
            if bad.any():  # -inf in MMSA audio features
                if not x.flags.writeable:
                    x = x.copy()
                x[bad] = 0.0
            L = x.shape[1]
            if m == "text":
                ln = _text_lengths(path, split, d["text_bert"], n, L) if "text_bert" in d else None
            else:
                key = f"{m}_lengths"
                ln = _lengths(path, split, key, d[key], n, L) if key in d else None
            feats.append(x)
            lens.append(ln)
        if n == 0:
            raise DataFileError(f"{_where(path, split)}: has no samples")
        if task == "regression":
            if "regression_labels" not in d:
                raise DataFileError(
                    f"{_where(path, split)}: missing key 'regression_labels' (expected (N,) sentiment scores)"
                )
            y = _labels_1d(path, split, "regression_labels", d["regression_labels"], n).astype(np.float32)
            if family == "sims" and np.max(np.abs(y)) > 1.0 + 1e-6:
                warnings.warn(
                    f"{_where(path, split, 'regression_labels')}: values outside [-1, 1] for a SIMS "
                    "dataset; is this a MOSI/MOSEI file (use dataset 'mosi' or 'mosei')?", stacklevel=2
                )
        else:
            y = _class_labels(path, split, d, family, n)
        dims = [f.shape[2] for f in feats]
        if widths is None:
            widths = dims
        elif dims != widths:
            raise DataFileError(
                f"{_where(path, split)}: feature widths {dict(zip(mods, dims))} differ from the train "
                f"split's {dict(zip(mods, widths))}"
            )
        out[split] = MultimodalDataset(feats, y, lens, info)
    check_splits(out, path)
    return out
