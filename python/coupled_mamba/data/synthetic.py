"""The embedded task: a synthetic multimodal sequence problem that needs fusion over time.

No file and no download: the data is generated deterministically from a seed.

Each sample is a short "clip" on a common time line [0, 1), cut into ``segments`` consecutive
segments of random duration ``w_k``. In each segment three hidden signs ``a_k, b_k, c_k`` in
{-1, +1} are drawn independently. Modality ``a`` observes only ``a``, ``b`` only ``b`` and ``c``
only ``c``: modality m is a sequence of ``n_m`` steps (its own rate; padded to ``L_m``; ``n_m``
varies per sample) whose step j, at time ``(j + 0.5) / n_m``, is ``s_m(t) * e_m + noise``, with a
fixed random direction ``e_m`` of width ``d_m`` (default widths 16, 8, 12; lengths up to 24, 64,
40 steps, like text, audio and video features).

Modality ``b`` says, moment by moment, which of the other two to believe: the label is three
times the time average of the selected sign,

    y = 3 * sum_k w_k * (a_k if b_k = +1 else c_k)
      = 1.5 * sum_k w_k * ((a_k + c_k) + b_k * (a_k - c_k))        (in [-3, 3], like MOSI)

so it depends on how the modalities line up in time. Given ``b`` alone, y is symmetric about 0
(the best single-``b`` predictor is the constant 0); ``a`` or ``c`` alone explain a quarter of the
variance; all three explain all of it (up to the observation noise). Regression by default (MOSI
metrics); ``task="classification"`` gives 3 classes: negative (y < -1), neutral, positive
(y > 1), scored like 3-class sentiment.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

from .dataset import SPLITS, MultimodalDataset, TaskInfo

__all__ = ["make_synthetic", "SYNTHETIC_MODALITIES", "SYNTHETIC_DEFAULTS"]

SYNTHETIC_MODALITIES = ("a", "b", "c")
SYNTHETIC_DEFAULTS = dict(
    n_train=2000,
    n_valid=500,
    n_test=1000,
    segments=4,
    noise=1.0,
    widths=(16, 8, 12),
    lengths=(24, 64, 40),
    min_fraction=0.6,
)
NEUTRAL_BAND = 1.0
_SPLIT_ID = {"train": 1, "valid": 2, "test": 3}


def _labels(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """y = 3 * sum_k w_k * (a_k if b_k > 0 else c_k); w (N, K), s (N, 3, K)."""
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    return 3.0 * np.sum(w * np.where(b > 0, a, c), axis=1)


def _split(rng: np.random.Generator, n: int, directions, lengths, segments, noise, min_fraction):
    K = segments
    w = rng.dirichlet(np.full(K, 3.0), size=n)  # segment durations, sum to 1
    ends = np.cumsum(w, axis=1)
    ends[:, -1] = 1.0 + 1e-9
    s = rng.choice(np.array([-1.0, 1.0]), size=(n, 3, K))
    feats, lens = [], []
    for m, (e, L) in enumerate(zip(directions, lengths)):
        lo = max(1, int(math.ceil(min_fraction * L)))
        nm = rng.integers(lo, L + 1, size=n)
        steps = np.arange(L)
        t = (steps[None, :] + 0.5) / nm[:, None]  # (n, L) times; >= 1 beyond the valid part
        seg = np.minimum((t[:, :, None] >= ends[:, None, :]).sum(-1), K - 1)  # (n, L)
        sig = np.take_along_axis(s[:, m], seg, axis=1)  # (n, L)
        x = sig[:, :, None] * e[None, None, :] + noise * rng.standard_normal((n, L, e.shape[0]))
        x[steps[None, :] >= nm[:, None]] = 0.0
        feats.append(x.astype(np.float32))
        lens.append(nm.astype(np.int64))
    y = _labels(w, s).astype(np.float32)
    return feats, lens, y


def make_synthetic(
    seed: int = 0,
    n_train: int = SYNTHETIC_DEFAULTS["n_train"],
    n_valid: int = SYNTHETIC_DEFAULTS["n_valid"],
    n_test: int = SYNTHETIC_DEFAULTS["n_test"],
    task: str = "regression",
    segments: int = SYNTHETIC_DEFAULTS["segments"],
    noise: float = SYNTHETIC_DEFAULTS["noise"],
    widths: Sequence[int] = SYNTHETIC_DEFAULTS["widths"],
    lengths: Sequence[int] = SYNTHETIC_DEFAULTS["lengths"],
    min_fraction: float = SYNTHETIC_DEFAULTS["min_fraction"],
) -> Dict[str, MultimodalDataset]:
    """The split dict of the embedded task (see the module docstring).

    The same arguments always give the same data. Each split has its own random stream (derived
    from ``seed`` and the split), so changing ``n_train`` leaves the test set unchanged.
    """
    if task not in ("regression", "classification"):
        raise ValueError(f"task: expected 'regression' or 'classification', got {task!r}")
    widths, lengths = tuple(int(v) for v in widths), tuple(int(v) for v in lengths)
    if len(widths) != 3 or len(lengths) != 3:
        raise ValueError("the synthetic task has 3 modalities: give 3 widths and 3 lengths")
    if min(widths) < 1 or min(lengths) < 1 or segments < 1:
        raise ValueError("widths, lengths and segments must be positive")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError("min_fraction must be in (0, 1]")
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"{name} must be at least 1")
    task_rng = np.random.default_rng([seed, 0])
    directions = [task_rng.standard_normal(d) for d in widths]
    source = dict(
        name="synthetic", seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test, task=task,
        segments=segments, noise=noise, widths=list(widths), lengths=list(lengths),
        min_fraction=min_fraction,
    )
    if task == "regression":
        info = TaskInfo("synthetic", "regression", 1, "mosi", list(SYNTHETIC_MODALITIES), None, source)
    else:
        info = TaskInfo("synthetic", "classification", 3, "sentiment3", list(SYNTHETIC_MODALITIES),
                        ["negative", "neutral", "positive"], source)
    out = {}
    for split, n in zip(SPLITS, (n_train, n_valid, n_test)):
        rng = np.random.default_rng([seed, _SPLIT_ID[split]])
        feats, lens, y = _split(rng, n, directions, lengths, segments, noise, min_fraction)
        if task == "classification":
            y = np.where(y < -NEUTRAL_BAND, 0, np.where(y > NEUTRAL_BAND, 2, 1)).astype(np.int64)
        out[split] = MultimodalDataset(feats, y, lens, info)
    return out
