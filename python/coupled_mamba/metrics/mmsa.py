"""The MMSA-compatible mode: the numbers of MMSA 2.2.1's MetricsTop (regression for MOSI/MOSEI and
SIMS, classification for the 3-class labels), quirks included, learnt from its behaviour; MMSA
itself is never imported here. docs/metrics.md lists every difference from the default mode."""
from __future__ import annotations

import warnings
from typing import Callable, Dict

import numpy as np

from .common import (SIMS_EDGES_2, SIMS_EDGES_3, SIMS_EDGES_5, _bin, _check_pair, _class_labels, _flat,
                     _mult_acc, accuracy, weighted_f1)

__all__ = ["mmsa_mosi_metrics", "mmsa_sims_metrics", "mmsa_sentiment3_metrics", "MMSA_FAMILIES"]


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
