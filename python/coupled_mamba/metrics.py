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
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Sequence

import numpy as np

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

SIMS_EDGES_2 = (-1.01, 0.0, 1.01)
SIMS_EDGES_3 = (-1.01, -0.1, 0.1, 1.01)
SIMS_EDGES_5 = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)


def _flat(x) -> np.ndarray:
    """A flat numpy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"expected numeric values, got dtype {a.dtype}")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return a.reshape(-1)


def _r4(v) -> float:
    return round(float(v), 4)


def _check_pair(p: np.ndarray, y: np.ndarray) -> None:
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels differ in size: {p.size} vs {y.size}")
    if p.size == 0:
        raise ValueError("metrics need at least one sample")


def accuracy(y_true, y_pred) -> float:
    """Fraction of equal entries (unrounded)."""
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if t.size == 0:
        return 0.0
    return float(np.mean(t == p))


def weighted_f1(y_true, y_pred) -> float:
    """scikit-learn's ``f1_score(y_true, y_pred, average="weighted")`` (unrounded).

    For every label that occurs in either array, F1 = 2 tp / (2 tp + fp + fn) (0 when the
    denominator is 0); the average is weighted by each label's count in ``y_true``. Returns 0.0
    when there are no samples.
    """
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in size: {t.size} vs {p.size}")
    if t.size == 0:
        return 0.0
    labels = np.union1d(t, p)
    total = 0.0
    for c in labels:
        tc, pc = t == c, p == c
        tp = float(np.sum(tc & pc))
        fp = float(np.sum(~tc & pc))
        fn = float(np.sum(tc & ~pc))
        denom = 2 * tp + fp + fn
        f1 = 2 * tp / denom if denom > 0 else 0.0
        total += f1 * float(np.sum(tc))
    return total / t.size


def pearson(p, y) -> float:
    """Pearson correlation of two flat arrays, computed in float64 (unrounded).

    Undefined when either array is constant (numpy's corrcoef gives nan); this returns 0.0
    there, so that a constant predictor scores "no correlation" and results stay valid JSON.
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    pc, yc = p - p.mean(), y - y.mean()
    den = np.sqrt(np.sum(pc * pc) * np.sum(yc * yc))
    if not np.isfinite(den) or den == 0.0:
        return 0.0
    return float(np.clip(np.sum(pc * yc) / den, -1.0, 1.0))


def _mult_acc(p: np.ndarray, y: np.ndarray, bound: float) -> float:
    """Clip to [-bound, bound], round half to even, compare."""
    pr = np.round(np.clip(p, -bound, bound))
    yr = np.round(np.clip(y, -bound, bound))
    return float(np.mean(pr == yr))


def mosi_metrics(preds, labels) -> Dict[str, float]:
    """CMU-MOSI / CMU-MOSEI regression metrics.

    * ``Has0_acc_2`` / ``Has0_F1_score``: classes ``p >= 0`` vs ``y >= 0`` over all samples.
    * ``Non0_acc_2`` / ``Non0_F1_score``: samples with ``y != 0`` only, classes ``> 0``.
    * ``Mult_acc_7`` / ``Mult_acc_5`` / ``Mult_acc_3``: clip to [-3, 3] / [-2, 2] / [-1, 1],
      round, compare.
    * ``MAE``, ``Corr``: on the unclipped values.
    """
    p, y = _flat(preds), _flat(labels)
    _check_pair(p, y)
    has0_p, has0_y = p >= 0, y >= 0
    nz = y != 0
    non0_p, non0_y = p[nz] > 0, y[nz] > 0
    return {
        "Has0_acc_2": _r4(accuracy(has0_y, has0_p)),
        "Has0_F1_score": _r4(weighted_f1(has0_y, has0_p)),
        "Non0_acc_2": _r4(accuracy(non0_y, non0_p)),
        "Non0_F1_score": _r4(weighted_f1(non0_y, non0_p)),
        "Mult_acc_5": _r4(_mult_acc(p, y, 2.0)),
        "Mult_acc_7": _r4(_mult_acc(p, y, 3.0)),
        "Mult_acc_3": _r4(_mult_acc(p, y, 1.0)),
        "MAE": _r4(np.mean(np.abs(p.astype(np.float64) - y.astype(np.float64)))),
        "Corr": _r4(pearson(p, y)),
    }


def _bin(v: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Class index i with edges[i] < v <= edges[i+1] (half-open bins, compared in v's dtype).

    Values at or below the first edge get class -1, values above the last edge class
    len(edges) - 1; after clipping to [-1, 1] neither happens with the SIMS edges.
    """
    e = np.asarray(edges, dtype=v.dtype)
    return np.searchsorted(e, v, side="left") - 1


def sims_metrics(preds, labels) -> Dict[str, float]:
    """CH-SIMS / CH-SIMS v2 regression metrics, all on values clipped to [-1, 1].

    * ``Mult_acc_2`` and ``F1_score`` (weighted): bins (-1.01, 0] and (0, 1.01].
    * ``Mult_acc_3``: edges -1.01, -0.1, 0.1, 1.01.
    * ``Mult_acc_5``: edges -1.01, -0.7, -0.1, 0.1, 0.7, 1.01.
    * ``MAE``, ``Corr``: on the clipped values.
    """
    p, y = _flat(preds), _flat(labels)
    _check_pair(p, y)
    p = np.clip(p, -1.0, 1.0)
    y = np.clip(y, -1.0, 1.0)
    p2, y2 = _bin(p, SIMS_EDGES_2), _bin(y, SIMS_EDGES_2)
    return {
        "Mult_acc_2": _r4(accuracy(y2, p2)),
        "Mult_acc_3": _r4(accuracy(_bin(y, SIMS_EDGES_3), _bin(p, SIMS_EDGES_3))),
        "Mult_acc_5": _r4(accuracy(_bin(y, SIMS_EDGES_5), _bin(p, SIMS_EDGES_5))),
        "F1_score": _r4(weighted_f1(y2, p2)),
        "MAE": _r4(np.mean(np.abs(p.astype(np.float64) - y.astype(np.float64)))),
        "Corr": _r4(pearson(p, y)),
    }


def _class_preds(preds) -> np.ndarray:
    """Predicted classes: argmax over the last axis of logits (2-D), or the labels themselves."""
    if hasattr(preds, "detach"):
        preds = preds.detach().cpu().numpy()
    a = np.asarray(preds)
    if a.ndim == 2:
        return np.argmax(a, axis=1)
    if a.dtype.kind == "f" and np.any(a != np.round(a)):
        raise ValueError("class predictions must be integers, or 2-D logits (N, C)")
    return a.reshape(-1).astype(np.int64)


def _class_labels(labels) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).reshape(-1).astype(np.int64)


def classification_metrics(preds, labels) -> Dict[str, float]:
    """``Acc`` (accuracy) and ``F1_score`` (weighted F1); preds are logits (N, C) or classes (N,)."""
    p, y = _class_preds(preds), _class_labels(labels)
    _check_pair(p, y)
    return {"Acc": _r4(accuracy(y, p)), "F1_score": _r4(weighted_f1(y, p))}


def sentiment3_metrics(preds, labels) -> Dict[str, float]:
    """3-class sentiment (0 negative, 1 neutral, 2 positive), as the paper's classification tables.

    * ``Mult_acc_3`` / ``F1_score_3``: accuracy and weighted F1 over the three classes.
    * ``Non0_acc_2`` / ``Non0_F1_score``: neutral samples ignored; with logits (N, 3) the
      prediction is the larger of the negative and positive logits, with classes (N,) a predicted
      neutral counts as wrong.
    """
    y = _class_labels(labels)
    if hasattr(preds, "detach"):
        preds = preds.detach().cpu().numpy()
    a = np.asarray(preds)
    p3 = _class_preds(a)
    _check_pair(p3, y)
    keep = y != 1
    y2 = y[keep]
    if a.ndim == 2:
        if a.shape[1] != 3:
            raise ValueError(f"3-class sentiment metrics need logits (N, 3), got {a.shape}")
        p2 = np.where(a[keep, 2] > a[keep, 0], 2, 0)
    else:
        p2 = p3[keep]
    return {
        "Mult_acc_3": _r4(accuracy(y, p3)),
        "F1_score_3": _r4(weighted_f1(y, p3)),
        "Non0_acc_2": _r4(accuracy(y2, p2)),
        "Non0_F1_score": _r4(weighted_f1(y2, p2)),
    }


def regression_metrics(preds, labels) -> Dict[str, float]:
    """Plain regression metrics for targets on any scale: ``MAE``, ``RMSE`` and ``Corr`` (Pearson,
    0 when predictions or labels are constant), computed in float64."""
    p, y = _flat(preds), _flat(labels)
    _check_pair(p, y)
    d = p.astype(np.float64) - y.astype(np.float64)
    return {
        "MAE": _r4(np.mean(np.abs(d))),
        "RMSE": _r4(np.sqrt(np.mean(d * d))),
        "Corr": _r4(pearson(p, y)),
    }


METRIC_FAMILIES: Dict[str, Callable[..., Dict[str, float]]] = {
    "mosi": mosi_metrics,
    "sims": sims_metrics,
    "classification": classification_metrics,
    "sentiment3": sentiment3_metrics,
    "regression": regression_metrics,
}


# ----------------------------------------------------------------------------- MMSA-compatible mode
# The numbers of MMSA 2.2.1's MetricsTop (regression for MOSI/MOSEI and SIMS, classification for
# the 3-class labels), learnt from its behaviour; MMSA itself is never imported here.


def _r4_numpy(v) -> float:
    """numpy's 4-decimal rounding, rint(v * 1e4) / 1e4, which MMSA's numpy float64 values get.

    It differs from Python's ``round`` only next to a tie in the fifth decimal (1/160: 0.0062
    here, 0.0063 with Python's).
    """
    return float(np.round(np.float64(v), 4))


def _mmsa_mae(p: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error accumulated in the inputs' dtype (float32 for float32 inputs)."""
    return float(np.mean(np.abs(p - y)))


def _mmsa_corr(p: np.ndarray, y: np.ndarray) -> float:
    """numpy's corrcoef: nan when either input is constant or there is a single sample."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.corrcoef(p, y)[0, 1])


def mmsa_mosi_metrics(preds, labels) -> Dict[str, float]:
    """MMSA's MOSI / MOSEI regression metrics: :func:`mosi_metrics` without ``Mult_acc_3``,
    with MMSA's MAE, Corr and rounding, and a ValueError when every label is 0."""
    p, y = _flat(preds), _flat(labels)
    _check_pair(p, y)
    nz = y != 0
    if not nz.any():
        raise ValueError("mmsa metrics for MOSI/MOSEI are undefined when every label is 0: "
                         "Non0_acc_2 has no samples (MMSA's MetricsTop raises IndexError there)")
    has0_p, has0_y = p >= 0, y >= 0
    non0_p, non0_y = p[nz] > 0, y[nz] > 0
    return {
        "Has0_acc_2": _r4_numpy(accuracy(has0_y, has0_p)),
        "Has0_F1_score": _r4_numpy(weighted_f1(has0_y, has0_p)),
        "Non0_acc_2": _r4_numpy(accuracy(non0_y, non0_p)),
        "Non0_F1_score": _r4_numpy(weighted_f1(non0_y, non0_p)),
        "Mult_acc_5": _r4_numpy(_mult_acc(p, y, 2.0)),
        "Mult_acc_7": _r4_numpy(_mult_acc(p, y, 3.0)),
        "MAE": _r4_numpy(_mmsa_mae(p, y)),
        "Corr": _r4_numpy(_mmsa_corr(p, y)),
    }


def mmsa_sims_metrics(preds, labels) -> Dict[str, float]:
    """MMSA's SIMS / SIMS v2 regression metrics: :func:`sims_metrics` with MMSA's MAE, Corr and
    rounding, and a ValueError for NaN predictions or labels."""
    p, y = _flat(preds), _flat(labels)
    _check_pair(p, y)
    if np.isnan(p).any() or np.isnan(y).any():
        raise ValueError("mmsa metrics for SIMS are undefined for NaN predictions or labels "
                         "(MMSA's MetricsTop raises there: scikit-learn's F1 rejects NaN)")
    p, y = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)
    p2, y2 = _bin(p, SIMS_EDGES_2), _bin(y, SIMS_EDGES_2)
    return {
        "Mult_acc_2": _r4_numpy(accuracy(y2, p2)),
        "Mult_acc_3": _r4_numpy(accuracy(_bin(y, SIMS_EDGES_3), _bin(p, SIMS_EDGES_3))),
        "Mult_acc_5": _r4_numpy(accuracy(_bin(y, SIMS_EDGES_5), _bin(p, SIMS_EDGES_5))),
        "F1_score": _r4_numpy(weighted_f1(y2, p2)),
        "MAE": _r4_numpy(_mmsa_mae(p, y)),
        "Corr": _r4_numpy(_mmsa_corr(p, y)),
    }


def mmsa_sentiment3_metrics(preds, labels) -> Dict[str, float]:
    """MMSA's classification metrics for 3-class sentiment (0 negative, 1 neutral, 2 positive).

    Predictions are logits (N, 3); the two-class prediction is 1 when the positive logit exceeds
    the negative one, else 0. ``Has0``: labels 0 (negative or neutral) / 1 (positive). ``Non0``:
    neutral samples dropped, the 0/1 prediction compared with the labels 0/2 as they are, so a
    positive sample never counts as right (MMSA's quirk). ``Acc_3`` / ``F1_score_3``: argmax of
    the three. A ValueError when every label is neutral or a label is not 0, 1 or 2.
    """
    if hasattr(preds, "detach"):
        preds = preds.detach().cpu().numpy()
    a = np.asarray(preds)
    if a.ndim != 2 or a.shape[1] != 3 or a.dtype.kind not in "fiub":
        raise ValueError(f"mmsa 3-class metrics need numeric logits (N, 3), got {a.dtype} {a.shape}")
    raw = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if raw.dtype.kind not in "fiub" or not np.isin(raw, (0, 1, 2)).all():
        raise ValueError("mmsa 3-class metrics need labels 0, 1 or 2")
    y, p3 = _class_labels(raw), np.argmax(a, axis=1)
    _check_pair(p3, y)
    keep = y != 1
    if not keep.any():
        raise ValueError("mmsa 3-class metrics are undefined when every label is neutral: "
                         "Non0_acc_2 has no samples (MMSA's MetricsTop raises IndexError there)")
    p2 = np.argmax(a[:, [0, 2]], axis=1)  # ties go to the negative class, as argmax picks the first
    y2 = (y == 2).astype(np.int64)
    return {
        "Has0_acc_2": _r4_numpy(accuracy(y2, p2)),
        "Has0_F1_score": _r4_numpy(weighted_f1(y2, p2)),
        "Non0_acc_2": _r4_numpy(accuracy(y[keep], p2[keep])),
        "Non0_F1_score": _r4_numpy(weighted_f1(y[keep], p2[keep])),
        "Acc_3": _r4_numpy(accuracy(y, p3)),
        "F1_score_3": _r4_numpy(weighted_f1(y, p3)),
    }


MMSA_FAMILIES: Dict[str, Callable[..., Dict[str, float]]] = {
    "mosi": mmsa_mosi_metrics,
    "sims": mmsa_sims_metrics,
    "sentiment3": mmsa_sentiment3_metrics,
}
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
