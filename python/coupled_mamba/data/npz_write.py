"""Writing the ``.npz`` format from arrays in memory: :func:`save_npz`, and the file's arrays that
:func:`.npz.from_arrays` checks without writing anything. Everything is checked exactly as a file
being read would be (:func:`.npz_format.parse_arrays`) before anything is written."""
from __future__ import annotations

import os
from typing import Dict, Mapping, Sequence

import numpy as np

from .mmsa import DataFileError
from .npz_format import RESERVED_KEYS as _RESERVED
from .npz_format import _fail, _kind, parse_arrays

__all__ = ["save_npz", "file_arrays", "stack_sequences"]


def save_npz(path, modalities: Mapping[str, Sequence[np.ndarray]], labels, split=None, groups=None,
             class_names=None) -> None:
    """Write ``modalities`` (``{name: list of n arrays (T_i, F)}``) and the keys in this format.

    Everything is checked as :func:`.npz.read_npz` would check it before anything is written.
    """
    path = os.fspath(path)
    arrays = file_arrays(path, modalities, labels, split, groups, class_names)
    parse_arrays(path, arrays, None, None)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def file_arrays(origin: str, modalities, labels, split, groups, class_names) -> Dict[str, np.ndarray]:
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
