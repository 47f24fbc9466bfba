"""K-fold cross-validation in Python: :func:`cross_validate` trains one model per fold with
:func:`.api.fit` and reports each fold's metrics and their mean and sample standard deviation."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..data import MultimodalDataset, load_npz_folds
from .api import FitResult, fit

__all__ = ["cross_validate", "CrossValidationResult"]


@dataclass
class CrossValidationResult:
    """What :func:`cross_validate` returns.

    ``folds``: one :class:`FitResult` per fold (model, history, metrics); ``metrics``: per fold
    {"valid": ..., "test": ...}; ``mean`` / ``std``: {"valid": ..., "test": ...}, the mean and sample
    standard deviation (n - 1) over the folds of every metric.
    """

    folds: List[FitResult]
    metrics: List[Dict[str, Dict[str, float]]]
    mean: Dict[str, Dict[str, float]]
    std: Dict[str, Dict[str, float]]


def _spread(per_fold: List[Dict[str, Dict[str, float]]], split: str):
    mean, std = {}, {}
    for k in per_fold[0][split]:
        v = np.array([m[split][k] for m in per_fold], dtype=np.float64)
        mean[k] = round(float(v.mean()), 4)
        std[k] = round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0
    return mean, std


def cross_validate(
    data: Union[str, "os.PathLike[str]", Sequence[Dict[str, MultimodalDataset]]],
    folds: Optional[int] = None,
    model: str = "coupled-mean",
    *,
    modalities: Optional[Sequence[str]] = None,
    task: Optional[str] = None,
    data_seed: int = 0,
    standardize: bool = True,
    **fit_options: Any,
) -> CrossValidationResult:
    """Train ``model`` on every fold of a K-fold cross-validation and summarise the test metrics.

    ``data``: the path of an ``.npz`` file (docs/data-npz.md), split into ``folds`` folds (default 5)
    by :func:`coupled_mamba.data.load_npz_folds` with ``modalities``, ``task``, ``data_seed`` and
    ``standardize`` (folds grouped by the file's ``groups``, else stratified by class; each fold's
    validation part drawn from its training part); or a list of split dicts, one per fold (then
    ``folds``, if given, must equal its length). ``fit_options``: :func:`fit`'s keyword arguments
    (epochs, batch_size, lr, seed, model options, ...). Raises ValueError on bad data or options.
    """
    if isinstance(data, (str, os.PathLike)):
        k = 5 if folds is None else folds
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"cross_validate: folds: expected an integer >= 2, got {folds!r}")
        splits_list = load_npz_folds(data, k, modalities=modalities, task=task, seed=data_seed,
                                     standardize=standardize)
    else:
        if modalities is not None or task is not None:
            raise ValueError("cross_validate: modalities and task apply to a file path; the split dicts "
                             "given are used as they are")
        try:
            splits_list = list(data)
        except TypeError:
            raise ValueError(f"cross_validate: data: expected an .npz path or a list of split dicts, got "
                             f"{type(data).__name__}") from None
        if len(splits_list) < 2 or any(not isinstance(s, dict) for s in splits_list):
            raise ValueError("cross_validate: data: expected at least 2 split dicts (one per fold)")
        if folds is not None and folds != len(splits_list):
            raise ValueError(f"cross_validate: folds={folds!r} but {len(splits_list)} split dicts were given")
    results = [fit(splits, model, **fit_options) for splits in splits_list]
    per_fold = [r.metrics for r in results]
    test_mean, test_std = _spread(per_fold, "test")
    valid_mean, valid_std = _spread(per_fold, "valid")
    return CrossValidationResult(results, per_fold, {"valid": valid_mean, "test": test_mean},
                                 {"valid": valid_std, "test": test_std})
