"""The common container for every data source: per-modality padded sequences with valid lengths.

A data source returns a *split dict* ``{"train": ds, "valid": ds, "test": ds}`` of
:class:`MultimodalDataset` objects that share one :class:`TaskInfo`.

Sample ``i`` of a dataset is ``(xs, lengths, label)``: ``xs`` a list of M float32 tensors
``(L_m, d_m)`` (right-padded), ``lengths`` a list of M int64 scalars (valid steps, 1..L_m), and the
label (float32 for regression, int64 class for classification). :func:`collate` stacks samples into
the model's batch format ``(xs (B, T_m, d_m) per modality, lengths (B,) per modality, labels (B,))``;
:meth:`MultimodalDataset.batch` does the same by fancy indexing, which is faster. Both pad a batch
only to its own longest recording: ``T_m`` is the largest length of modality m among the batch's
samples, not the dataset's ``L_m`` (a batch of short recordings costs what short recordings cost).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["TaskInfo", "MultimodalDataset", "collate", "Batch", "SPLITS", "check_splits"]

SPLITS = ("train", "valid", "test")

Batch = Tuple[List[torch.Tensor], List[torch.Tensor], torch.Tensor]


@dataclass
class TaskInfo:
    """What a data source is: enough to pick the loss, the head and the metrics.

    ``metrics`` names a family in :mod:`coupled_mamba.metrics` ("mosi", "sims", "classification",
    "sentiment3"). ``source`` records how to load the data again (name and options), so that a
    checkpoint can be evaluated on the same data.
    """

    name: str
    task: str  # "regression" or "classification"
    num_classes: int  # 1 for regression
    metrics: str
    modalities: List[str]
    class_names: Optional[List[str]] = None
    source: Dict = field(default_factory=dict)

    def to_dict(self) -> Dict:
        return asdict(self)


def _as_tensor(a, dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(dtype)
    a = np.asarray(a)
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(dtype)


class MultimodalDataset(Dataset):
    """M padded feature sequences ``(N, L_m, d_m)`` with valid lengths ``(N,)`` and labels ``(N,)``.

    ``features`` are converted to float32 (numpy arrays are shared, not copied, when already
    float32 and contiguous). ``lengths`` default to the full padded length; they are clamped to
    ``[1, L_m]`` (a sequence needs at least one step; an MMSA length of 0 means "nothing
    observed", which becomes one zero step).
    """

    def __init__(
        self,
        features: Sequence[Union[np.ndarray, torch.Tensor]],
        labels: Union[np.ndarray, torch.Tensor, Sequence],
        lengths: Optional[Sequence[Optional[Union[np.ndarray, torch.Tensor, Sequence]]]] = None,
        info: Optional[TaskInfo] = None,
    ):
        if len(features) == 0:
            raise ValueError("MultimodalDataset needs at least one modality")
        self.features = [_as_tensor(f, torch.float32) for f in features]
        n = self.features[0].shape[0]
        for m, f in enumerate(self.features):
            if f.dim() != 3:
                raise ValueError(f"modality {m}: expected (N, L, d) features, got shape {tuple(f.shape)}")
            if f.shape[0] != n:
                raise ValueError(f"modality {m}: {f.shape[0]} samples, modality 0 has {n}")
            if f.shape[1] < 1:
                raise ValueError(f"modality {m}: sequences have length 0")
        if lengths is None:
            lengths = [None] * len(self.features)
        if len(lengths) != len(self.features):
            raise ValueError(f"{len(lengths)} length arrays for {len(self.features)} modalities")
        self.lengths = []
        for m, (f, ln) in enumerate(zip(self.features, lengths)):
            L = f.shape[1]
            if ln is None:
                t = torch.full((n,), L, dtype=torch.int64)
            else:
                t = _as_tensor(ln, torch.int64).reshape(-1)
                if t.shape[0] != n:
                    raise ValueError(f"modality {m}: {t.shape[0]} lengths for {n} samples")
                t = t.clamp(1, L)
            self.lengths.append(t)
        self.info = info
        task = info.task if info is not None else None
        ldtype = torch.int64 if task == "classification" else torch.float32
        self.labels = _as_tensor(labels, ldtype).reshape(-1)
        if self.labels.shape[0] != n:
            raise ValueError(f"{self.labels.shape[0]} labels for {n} samples")

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def num_modalities(self) -> int:
        return len(self.features)

    @property
    def input_dims(self) -> List[int]:
        """Feature width d_m of each modality."""
        return [int(f.shape[2]) for f in self.features]

    @property
    def seq_lens(self) -> List[int]:
        """Padded length L_m of each modality."""
        return [int(f.shape[1]) for f in self.features]

    @property
    def modalities(self) -> List[str]:
        if self.info is not None:
            return list(self.info.modalities)
        return [f"m{i}" for i in range(self.num_modalities)]

    # -- access --------------------------------------------------------------------------------
    def __getitem__(self, i: int):
        return (
            [f[i] for f in self.features],
            [ln[i] for ln in self.lengths],
            self.labels[i],
        )

    def batch(self, index) -> Batch:
        """The collated batch of samples ``index`` (a sequence or tensor of ints), each modality
        padded only to the longest length among these samples."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        lengths = [ln.index_select(0, idx) for ln in self.lengths]
        xs = [f[:, :_longest(n, f.shape[1])].index_select(0, idx) for f, n in zip(self.features, lengths)]
        return xs, lengths, self.labels.index_select(0, idx)

    def select(self, modalities: Sequence[Union[int, str]], info: Optional[TaskInfo] = None):
        """A dataset with only the given modalities (names or indices), sharing storage."""
        names = self.modalities
        idx = []
        for m in modalities:
            if isinstance(m, str):
                if m not in names:
                    raise ValueError(f"unknown modality {m!r}; this data has {names}")
                idx.append(names.index(m))
            else:
                idx.append(int(m))
        if not idx:
            raise ValueError("select at least one modality")
        if info is None and self.info is not None:
            info = TaskInfo(**{**self.info.to_dict(), "modalities": [names[i] for i in idx]})
        return MultimodalDataset(
            [self.features[i] for i in idx], self.labels, [self.lengths[i] for i in idx], info
        )


def _longest(lengths: torch.Tensor, steps: int) -> int:
    """The steps a batch of recordings of ``steps`` steps with valid ``lengths`` keeps: its longest
    length (at least 1, at most ``steps``)."""
    return min(max(int(lengths.max()), 1), steps) if lengths.numel() else steps


def collate(samples) -> Batch:
    """Stack samples of a :class:`MultimodalDataset` (``DataLoader(..., collate_fn=collate)``),
    each modality padded only to the longest length among these samples."""
    if not samples:
        raise ValueError("collate: empty batch")
    M = len(samples[0][0])
    lengths = [torch.stack([torch.as_tensor(s[1][m], dtype=torch.int64) for s in samples]) for m in range(M)]
    keep = [_longest(lengths[m], max(s[0][m].shape[0] for s in samples)) for m in range(M)]  # once per modality
    xs = [torch.stack([s[0][m][:keep[m]] for s in samples]) for m in range(M)]
    labels = torch.stack([torch.as_tensor(s[2]) for s in samples])
    return xs, lengths, labels


def check_splits(splits: Dict[str, MultimodalDataset], origin: str = "data") -> None:
    """Every split present, non-empty, with the same modality count and widths."""
    for s in SPLITS:
        if s not in splits:
            raise ValueError(f"{origin}: missing split {s!r}")
        if len(splits[s]) == 0:
            raise ValueError(f"{origin}: split {s!r} is empty")
    dims = splits["train"].input_dims
    for s in SPLITS:
        if splits[s].input_dims != dims:
            raise ValueError(
                f"{origin}: split {s!r} has feature widths {splits[s].input_dims}, train has {dims}"
            )
