"""Deterministic, group-aware splits and per-feature standardisation with training statistics.

The splitting functions are pure (numpy only): they take the sample count or the indices to split,
optional ``groups`` (one id per sample: subject, session, speaker; any ints or strings) and optional
``classes`` (one int class per sample, classification only) and return sorted int64 index arrays.

* With ``groups``, whole groups are dealt to the parts: no group is ever on both sides.
* Without groups but with ``classes``, samples are dealt class by class, so every part keeps the
  class proportions (within about one sample per class), and every class with a sample keeps one
  in the training part.
* Without either, samples are dealt one by one in a seeded random order.

Dealing: groups are taken largest first (ties in seeded order), each to the part furthest below
its target share of the samples dealt so far; single samples, in seeded order (by class blocks when
stratified), follow the Sainte-Lague order of the fractions, so every run of samples holds each
part's share within about one sample. A part with a positive fraction that would stay empty gets
an item whenever there are at least as many items as such parts.

:class:`Standardizer` fits a per-feature mean and standard deviation over the valid steps of the
training part of each modality, applies them to any part (padded steps stay 0), and round-trips
through a plain dict of lists (for a checkpoint).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from .dataset import MultimodalDataset

__all__ = [
    "partition", "train_valid_test_split", "kfold", "cross_validation_splits", "Standardizer",
]

Seed = Union[int, Sequence[int]]


def _group_ids(groups, n: int, name: str = "groups") -> np.ndarray:
    """Groups (ints or strings) as ids 0..G-1, checked to hold one entry per sample."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"{name}: expected one entry per sample, shape ({n},), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if f.size < 2 or not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"fractions: expected two or more non-negative numbers, got {list(fractions)}")
    return f / f.sum()


def _deal(sizes: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """The part of each item (taken in the given order): the part furthest below its share."""
    parts = np.full(len(sizes), -1, dtype=np.int64)
    counts = np.zeros(len(fractions))
    wanted = fractions > 0
    total = 0.0
    for i, s in enumerate(sizes):
        total += s
        empty = np.flatnonzero(wanted & (counts == 0))
        deficit = fractions * total - counts
        if 0 < len(empty) and len(sizes) - i <= len(empty):
            p = int(empty[np.argmax(deficit[empty])])
        else:
            p = int(np.argmax(np.where(wanted, deficit, -np.inf)))
        parts[i] = p
        counts[p] += s
    return parts


def _deal_units(n: int, fractions: np.ndarray) -> np.ndarray:
    """:func:`_deal` for n items of size 1, vectorised: the parts in the Sainte-Lague order.

    Part p's k-th item comes at position (k + 1/2) / f_p (ties to the lower part), so every prefix,
    and so every class block, holds each part's share within about one item.
    """
    wanted = np.flatnonzero(fractions > 0)
    keys, parts = [], []
    for p in wanted:
        k = np.arange(int(np.ceil(n * fractions[p])) + 2)
        keys.append((k + 0.5) / fractions[p])
        parts.append(np.full(len(k), p, dtype=np.int64))
    keys, parts = np.concatenate(keys), np.concatenate(parts)
    dealt = parts[np.lexsort((parts, keys))[:n]]
    counts = np.bincount(dealt, minlength=len(fractions))
    for p in wanted:  # a part left empty takes the last item of the largest part
        if counts[p] == 0 and n >= len(wanted):
            donor = int(np.argmax(counts))
            dealt[np.flatnonzero(dealt == donor)[-1]] = p
            counts[donor] -= 1
            counts[p] += 1
    return dealt


def partition(
    indices: Union[int, Sequence[int], np.ndarray],
    fractions: Sequence[float],
    groups=None,
    classes=None,
    seed: Seed = 0,
    anchor_classes: bool = True,
) -> List[np.ndarray]:
    """Split ``indices`` (or ``range(indices)`` for an int) into ``len(fractions)`` parts.

    ``groups`` and ``classes``, when given, have one entry per sample of the whole dataset (they are
    indexed by ``indices``). Returns one sorted int64 index array per fraction. With classes and no
    groups and ``anchor_classes``, one sample of each class is kept in part 0 (the training part).
    """
    if isinstance(indices, (int, np.integer)):
        idx = np.arange(int(indices), dtype=np.int64)
        n_all = int(indices)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n_all = None
    frac = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    parts_of = np.empty(len(idx), dtype=np.int64)
    if groups is not None:
        gid = _group_ids(groups, n_all if n_all is not None else len(np.asarray(groups)))[idx]
        uniq, local, sizes = np.unique(gid, return_inverse=True, return_counts=True)
        order = rng.permutation(len(uniq))
        order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, ties seeded
        group_part = np.empty(len(uniq), dtype=np.int64)
        group_part[order] = _deal(sizes[order].astype(np.float64), frac)
        parts_of = group_part[local.reshape(-1)]
    elif classes is not None:
        c = np.asarray(classes).reshape(-1)
        if n_all is not None and c.shape[0] != n_all:
            raise ValueError(f"classes: expected one entry per sample, shape ({n_all},), got {c.shape}")
        c = c[idx]
        order = rng.permutation(len(idx))
        order = order[np.argsort(c[order], kind="stable")]  # class blocks, seeded order inside
        dealt = _deal_units(len(idx), frac)
        first = np.r_[True, c[order][1:] != c[order][:-1]] if len(idx) else np.zeros(0, bool)
        if anchor_classes:
            dealt = _keep_first_in_train(dealt, first)
        parts_of[order] = dealt
    else:
        order = rng.permutation(len(idx))
        parts_of[order] = _deal_units(len(idx), frac)
    return [np.sort(idx[parts_of == p]) for p in range(len(frac))]


def _keep_first_in_train(dealt: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Swap so each class's first item is in part 0 (another item of that class takes its place)."""
    dealt = dealt.copy()
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(dealt)]
    for a, b in zip(starts, ends):
        if dealt[a] == 0:
            continue
        in_train = a + np.flatnonzero(dealt[a:b] == 0)
        if len(in_train):
            dealt[a], dealt[in_train[0]] = 0, dealt[a]
        else:
            dealt[a] = 0  # a class too small to share: its sample trains
    return dealt


def train_valid_test_split(
    n: int,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    groups=None,
    classes=None,
    seed: Seed = 0,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A deterministic (train, valid, test) split of ``n`` samples; see :func:`partition`."""
    if len(fractions) != 3:
        raise ValueError(f"fractions: expected (train, valid, test), got {list(fractions)}")
    tr, va, te = partition(int(n), fractions, groups, classes, seed)
    return tr, va, te


def kfold(n: int, folds: int, groups=None, classes=None, seed: Seed = 0) -> List[np.ndarray]:
    """The test indices of each of ``folds`` folds: grouped, else stratified, else plain."""
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    folds = int(folds)
    units = len(np.unique(np.asarray(groups))) if groups is not None else int(n)
    if units < folds:
        what = "groups" if groups is not None else "samples"
        raise ValueError(f"folds: {folds} folds need at least {folds} {what}, the data has {units}")
    return partition(int(n), [1.0] * folds, groups, classes, seed, anchor_classes=False)


def cross_validation_splits(
    n: int,
    folds: int,
    valid_fraction: float = 0.125,
    groups=None,
    classes=None,
    seed: Seed = 0,
) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(train, valid, test)`` per fold: test is the fold, valid is drawn from the other folds.

    ``valid_fraction`` is the valid part's share of each fold's training part; the valid part is
    drawn with the same rules (never splitting a group; stratified by class without groups).
    """
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction: expected a number in (0, 1), got {valid_fraction!r}")
    base = [int(s) for s in np.atleast_1d(seed)]
    tests = kfold(n, folds, groups, classes, base)
    out = []
    for k, te in enumerate(tests):
        rest = np.setdiff1d(np.arange(int(n)), te)
        tr, va = partition(rest, (1.0 - valid_fraction, valid_fraction), groups, classes, base + [k + 1])
        out.append((tr, va, te))
    return out


# ------------------------------------------------------------------------------- standardisation


class Standardizer:
    """Per-feature ``(x - mean) / std`` for each modality, fitted on valid steps of a training part.

    A feature whose standard deviation is below ``1e-6 * max(1, |mean|)`` (constant in the
    training part) is only centred. Padded steps stay 0.
    """

    def __init__(self, modalities: Sequence[str], mean: Sequence, std: Sequence):
        if not (len(modalities) == len(mean) == len(std)):
            raise ValueError(f"Standardizer: {len(modalities)} modalities, {len(mean)} means, {len(std)} stds")
        self.modalities = [str(m) for m in modalities]
        self.mean = [np.asarray(m, dtype=np.float64).reshape(-1) for m in mean]
        self.std = [np.asarray(s, dtype=np.float64).reshape(-1) for s in std]
        for name, m, s in zip(self.modalities, self.mean, self.std):
            if m.shape != s.shape or not np.all(np.isfinite(m)) or not np.all(s > 0):
                raise ValueError(f"Standardizer: modality {name!r} needs finite means and positive stds "
                                 f"of one width, got {m.shape} and {s.shape}")

    @classmethod
    def fit(cls, ds: MultimodalDataset) -> "Standardizer":
        """Statistics of every feature over the valid steps of ``ds`` (the training part)."""
        means, stds = [], []
        for x, ln in zip(ds.features, ds.lengths):
            rows = x.numpy()[_valid_mask(x.shape[1], ln)].astype(np.float64)
            if rows.shape[0] == 0:
                raise ValueError("Standardizer.fit: the training part has no valid steps")
            mean, std = rows.mean(axis=0), rows.std(axis=0)
            std = np.where(std < 1e-6 * np.maximum(1.0, np.abs(mean)), 1.0, std)
            means.append(mean)
            stds.append(std)
        return cls(ds.modalities, means, stds)

    def transform(self, xs: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Standardised copies of a batch's features ``(B, L_m, d_m)``, padded steps set to 0."""
        if len(xs) != len(self.mean):
            raise ValueError(f"Standardizer: {len(xs)} modalities given, fitted on {len(self.mean)} {self.modalities}")
        out = []
        for name, x, ln, mean, std in zip(self.modalities, xs, lengths, self.mean, self.std):
            if x.shape[-1] != mean.shape[0]:
                raise ValueError(f"Standardizer: modality {name!r} has {x.shape[-1]} features, "
                                 f"fitted on {mean.shape[0]}")
            m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
            s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
            steps = torch.arange(x.shape[1], device=x.device)
            valid = (steps[None, :] < torch.as_tensor(ln, device=x.device).reshape(-1, 1)).unsqueeze(-1)
            out.append(torch.where(valid, (x - m) / s, torch.zeros((), dtype=x.dtype, device=x.device)))
        return out

    def apply(self, ds: MultimodalDataset) -> MultimodalDataset:
        """A standardised copy of ``ds`` (same lengths, labels and task info)."""
        feats = self.transform(ds.features, ds.lengths)
        return MultimodalDataset(feats, ds.labels, ds.lengths, ds.info)

    def to_dict(self) -> Dict[str, list]:
        """Plain lists (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {"modalities": list(self.modalities), "mean": [m.tolist() for m in self.mean],
                "std": [s.tolist() for s in self.std]}

    @classmethod
    def from_dict(cls, d: Dict) -> "Standardizer":
        try:
            return cls(d["modalities"], d["mean"], d["std"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"Standardizer.from_dict: expected keys 'modalities', 'mean', 'std' ({e})") from None


def _valid_mask(L: int, lengths: torch.Tensor) -> np.ndarray:
    return np.arange(L)[None, :] < np.asarray(lengths).reshape(-1, 1)
