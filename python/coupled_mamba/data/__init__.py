"""Data sources, all returning the split dict ``{"train", "valid", "test"}`` of MultimodalDatasets.

* ``synthetic`` (default): the embedded task, generated from a seed (:mod:`.synthetic`).
* ``mosi``, ``mosei``, ``sims``, ``simsv2``: MMSA feature pickles the user points to (:mod:`.mmsa`).
* ``basicmotions``: a small real dataset bundled with sktime, optional extra (:mod:`.basicmotions`).
* ``npz``: the user's own data in the ``.npz`` format of :mod:`.npz` (docs/data-npz.md).

:func:`load_data` loads any of them by name; the ``source`` dict a dataset's
:class:`TaskInfo` records can be passed back to it to load the same data again.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from .dataset import SPLITS, MultimodalDataset, TaskInfo, check_splits, collate
from .mmsa import MMSA_DATASETS, DataFileError, load_mmsa
from .synthetic import SYNTHETIC_DEFAULTS, SYNTHETIC_MODALITIES, make_synthetic
from .basicmotions import BASICMOTIONS_MODALITIES, load_basicmotions
from .npz import from_arrays, load_npz, load_npz_folds, read_npz, save_npz
from .splits import Standardizer, cross_validation_splits, kfold, train_valid_test_split

__all__ = [
    "DATASETS", "SPLITS", "MultimodalDataset", "TaskInfo", "collate", "check_splits", "load_data",
    "make_synthetic", "load_mmsa", "load_basicmotions", "DataFileError", "modality_names", "SYNTHETIC_DEFAULTS",
    "save_npz", "load_npz", "load_npz_folds", "read_npz", "from_arrays", "Standardizer", "kfold",
    "cross_validation_splits", "train_valid_test_split",
]

DATASETS = ("synthetic", "mosi", "mosei", "sims", "simsv2", "basicmotions", "npz")


def modality_names(name: str, path: Optional[str] = None):
    """The modality names of dataset ``name`` (for ``npz``, read from the file ``path``)."""
    if name == "npz":
        if not path:
            raise ValueError("dataset 'npz' needs the path of an .npz file (--data FILE.npz)")
        return list(read_npz(path).modalities)
    if name == "synthetic":
        return list(SYNTHETIC_MODALITIES)
    if name in MMSA_DATASETS:
        return ["text", "audio", "vision"]
    if name == "basicmotions":
        return list(BASICMOTIONS_MODALITIES)
    raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")


def load_data(
    name: str = "synthetic",
    path: Optional[str] = None,
    task: Optional[str] = None,
    modalities: Optional[Sequence[str]] = None,
    **options,
) -> Dict[str, MultimodalDataset]:
    """Load dataset ``name`` as a split dict.

    ``path``: the MMSA pickle (required for mosi / mosei / sims / simsv2) or the ``.npz`` file
    (required for npz); unused otherwise.
    ``task``: "regression" (default for synthetic and MMSA) or "classification" (3 classes for
    MMSA and synthetic; BasicMotions is classification only). ``modalities``: a subset of the
    dataset's modality names, in the order given. ``options``: the source's own arguments
    (synthetic: seed, n_train, n_valid, n_test, ...; basicmotions: seed, valid_per_class; npz:
    those of :func:`load_npz`: folds, fold, seed, fractions, standardize).
    """
    if name == "npz":
        if not path:
            raise ValueError("dataset 'npz' needs the path of an .npz file (--data FILE.npz)")
        if modalities is not None and len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities: {list(modalities)} repeats a name")
        options.pop("name", None)
        return load_npz(path, modalities=list(modalities) if modalities else None, task=task, **options)
    modality_names(name)  # validates the name
    if modalities:
        known = modality_names(name)
        for m in modalities:
            if m not in known:
                raise ValueError(f"modality {m!r}: dataset {name!r} has {known}")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities: {list(modalities)} repeats a name")
    if name == "synthetic":
        options.pop("path", None)
        splits = make_synthetic(task=task or "regression", **options)
    elif name in MMSA_DATASETS:
        if not path:
            raise ValueError(f"dataset {name!r} needs the path of an MMSA feature pickle (--data PATH)")
        splits = load_mmsa(path, dataset=name, task=task or "regression", modalities=modalities)
        modalities = None  # already selected
    else:
        if task not in (None, "classification"):
            raise ValueError("basicmotions is a classification task")
        splits = load_basicmotions(**options)
    if modalities:
        info = splits["train"].info
        sub = TaskInfo(**{**info.to_dict(), "modalities": list(modalities)})
        sub.source["modalities"] = list(modalities)
        splits = {k: v.select(list(modalities), sub) for k, v in splits.items()}
    return splits
