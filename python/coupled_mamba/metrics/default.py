"""The default metric families: CMU-MOSI / MOSEI and CH-SIMS regression, classification, 3-class
sentiment and plain regression (the definitions of docs/metrics.md, "default")."""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from .common import (SIMS_EDGES_2, SIMS_EDGES_3, SIMS_EDGES_5, _bin, _check_pair, _class_labels, _class_preds,
                     _flat, _mult_acc, _r4, accuracy, pearson, weighted_f1)

__all__ = ["mosi_metrics", "sims_metrics", "classification_metrics", "sentiment3_metrics", "regression_metrics",
           "METRIC_FAMILIES"]


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
