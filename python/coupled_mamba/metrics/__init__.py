"""Evaluation metrics, defined exactly as the multimodal sentiment community computes them.

Every function takes predictions and labels (array-likes; they are flattened), and returns a dict
of plain Python floats rounded to 4 decimals.

* :func:`mosi_metrics`: CMU-MOSI / CMU-MOSEI regression (labels in [-3, 3]).
* :func:`sims_metrics`: CH-SIMS / CH-SIMS v2 regression (labels in [-1, 1]).
* :func:`classification_metrics`: any classification task (accuracy and weighted F1).
* :func:`sentiment3_metrics`: 3-class sentiment (0 negative, 1 neutral, 2 positive).
* :func:`regression_metrics`: any other regression task (MAE, RMSE, Pearson correlation).

:func:`compute_metrics` picks a family and a mode: ``"default"`` (the functions above) or
``"mmsa"``, which reproduces the numbers of MMSA 2.2.1's ``MetricsTop``, quirks included
(:func:`mmsa_mosi_metrics`, :func:`mmsa_sims_metrics`, :func:`mmsa_sentiment3_metrics`);
docs/metrics.md lists every difference between the modes. :func:`metric_names` gives the keys
without computing anything.

Class rounding (Mult_acc) is numpy's (half to even); the default mode rounds the reported values
to 4 decimals with Python's ``round`` (correctly rounded). Class boundaries are compared in the
dtype of the values themselves (a float32 label 0.1 is "at" the float32 edge 0.1, as in numpy code
that compares a float32 array with a Python float). F1 is scikit-learn's weighted F1, reimplemented
here (:func:`weighted_f1`) so that scikit-learn is not a runtime dependency.

Files: :mod:`.common` (the shared pieces), :mod:`.default` (the default families), :mod:`.mmsa` (the
MMSA-compatible mode); this module picks among them.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

from .common import SIMS_EDGES_2, SIMS_EDGES_3, SIMS_EDGES_5, _bin, accuracy, pearson, weighted_f1  # noqa: F401
from .default import (METRIC_FAMILIES, classification_metrics, mosi_metrics, regression_metrics,
                      sentiment3_metrics, sims_metrics)
from .mmsa import MMSA_FAMILIES, mmsa_mosi_metrics, mmsa_sentiment3_metrics, mmsa_sims_metrics

__all__ = [
    "weighted_f1",
    "accuracy",
    "pearson",
    "mosi_metrics",
    "sims_metrics",
    "classification_metrics",
    "sentiment3_metrics",
    "regression_metrics",
    "mmsa_mosi_metrics",
    "mmsa_sims_metrics",
    "mmsa_sentiment3_metrics",
    "compute_metrics",
    "metric_names",
    "METRIC_FAMILIES",
    "METRIC_MODES",
    "lower_is_better",
]

METRIC_MODES = ("default", "mmsa")

# The keys each (mode, family) returns, in order; a test checks them against the functions.
_NAMES = {
    ("default", "mosi"): ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                          "Mult_acc_5", "Mult_acc_7", "Mult_acc_3", "MAE", "Corr"),
    ("default", "sims"): ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"),
    ("default", "classification"): ("Acc", "F1_score"),
    ("default", "sentiment3"): ("Mult_acc_3", "F1_score_3", "Non0_acc_2", "Non0_F1_score"),
    ("default", "regression"): ("MAE", "RMSE", "Corr"),
    ("mmsa", "mosi"): ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                       "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"),
    ("mmsa", "sims"): ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"),
    ("mmsa", "sentiment3"): ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                             "Acc_3", "F1_score_3"),
}


def _metrics_fn(family: str, mode: str) -> Callable[..., Dict[str, float]]:
    if mode not in METRIC_MODES:
        raise ValueError(f"unknown metrics mode {mode!r}; expected one of {list(METRIC_MODES)}")
    if family not in METRIC_FAMILIES:
        raise ValueError(
            f"unknown metric family {family!r}; expected one of {sorted(METRIC_FAMILIES)}")
    if mode == "mmsa" and family not in MMSA_FAMILIES:
        raise ValueError(f"metrics mode 'mmsa' has no family {family!r}: MMSA defines metrics for "
                         f"{sorted(MMSA_FAMILIES)} only; use mode 'default'")
    return (MMSA_FAMILIES if mode == "mmsa" else METRIC_FAMILIES)[family]


def compute_metrics(family: str, preds, labels, mode: str = "default") -> Dict[str, float]:
    """The metrics of ``family`` ("mosi", "sims", "classification", "sentiment3" or "regression") in ``mode``
    ("default", or "mmsa" for MMSA's numbers; "mmsa" has no "classification" family)."""
    return _metrics_fn(family, mode)(preds, labels)


def metric_names(family: str, num_classes: int, mode: str = "default") -> List[str]:
    """The keys :func:`compute_metrics` returns for ``family`` and ``mode``, in order, computing
    nothing. ``num_classes`` (the model's outputs) must be 3 for "sentiment3" and at least 2 for
    "classification"; the regression families ignore it. Raises ValueError as compute_metrics."""
    _metrics_fn(family, mode)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if family == "sentiment3" and num_classes != 3:
        raise ValueError(f"family 'sentiment3' needs num_classes 3, got {num_classes}")
    if family == "classification" and num_classes < 2:
        raise ValueError(f"family 'classification' needs num_classes >= 2, got {num_classes}")
    return list(_NAMES[(mode, family)])


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of metric ``name`` is better (errors and losses)."""
    return name in ("MAE", "Loss", "loss", "MSE", "RMSE") or name.lower().endswith("loss")
