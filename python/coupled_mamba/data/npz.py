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

Files: this one reads files and makes the split dicts; :mod:`.npz_format` checks the contents;
:mod:`.npz_write` writes them (:func:`save_npz`).
"""
from __future__ import annotations

import os
import warnings
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .dataset import SPLITS, MultimodalDataset, TaskInfo, check_splits
from .mmsa import DataFileError
from .npz_format import SequenceData, parse_arrays
from .npz_write import file_arrays, save_npz
from .splits import Standardizer, cross_validation_splits, partition, train_valid_test_split

__all__ = ["load_npz", "load_npz_folds", "read_npz", "from_arrays", "save_npz", "make_splits", "SequenceData"]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


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
    arrays = file_arrays("from_arrays", modalities, labels, split, groups, class_names)
    data = parse_arrays("from_arrays", arrays, None, task)
    return make_splits(data, folds, fold, seed, fractions, standardize, {"name": "arrays"})
