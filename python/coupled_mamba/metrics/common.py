"""What every metric family is built from: flattening and checking inputs, accuracy, scikit-learn's
weighted F1 (reimplemented, so scikit-learn is not a runtime dependency), Pearson correlation,
rounding to classes and binning by class edges."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["accuracy", "weighted_f1", "pearson", "SIMS_EDGES_2", "SIMS_EDGES_3", "SIMS_EDGES_5"]

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


def _bin(v: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Class index i with edges[i] < v <= edges[i+1] (half-open bins, compared in v's dtype).

    Values at or below the first edge get class -1, values above the last edge class
    len(edges) - 1; after clipping to [-1, 1] neither happens with the SIMS edges.
    """
    e = np.asarray(edges, dtype=v.dtype)
    return np.searchsorted(e, v, side="left") - 1


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
