"""Build any of the models by name, so training scripts and checkpoints can say which one."""
from __future__ import annotations

import inspect
from typing import Sequence

import torch.nn as nn

from .baselines import AverageFusionModel, ConcatFusionModel, CrossAttentionFusionModel, TransformerFusionModel
from .model import CoupledMambaForMultimodal

MODEL_KINDS = (
    "coupled-mean",
    "coupled-sum",
    "coupled-none",
    "coupled-learned",
    "average",
    "concat",
    "cross-attention",
    "transformer",
)

_CLASSES = {
    "average": AverageFusionModel,
    "concat": ConcatFusionModel,
    "cross-attention": CrossAttentionFusionModel,
    "transformer": TransformerFusionModel,
}


def _accepted(cls) -> set:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "input_dims", "task", "num_classes"}


# Every option any kind takes. A kind ignores the ones it has no use for (d_state for the
# attention models, n_heads for the Mamba ones), so one set of options can build every model
# of a comparison; a name outside this set is an error.
KNOWN_OPTIONS = set().union(*(_accepted(c) for c in [CoupledMambaForMultimodal, *_CLASSES.values()])) - {"coupling"}


def build_model(kind: str, input_dims: Sequence[int], task: str = "regression", num_classes: int = 1,
                **kwargs) -> nn.Module:
    """Build a model of ``kind`` (one of MODEL_KINDS) for M modalities of widths ``input_dims``.

    Every model is called as ``model(xs, lengths=None)`` (xs: M tensors (batch, L_m, d_m);
    lengths: optional M int64 tensors (batch,)) and returns (batch,) for regression,
    (batch, num_classes) logits for classification.

    Options (each has a default): d_model=128, n_layers=3, seq_len=50 (common length after
    alignment), align="resample" | "pad", dropout=0.1, expand=2 (Mamba inner width, and the
    attention models' feed-forward width, in units of d_model); Mamba kinds: d_state=64, d_conv=4,
    dt_rank=None (= ceil(d_state / 8)); attention kinds: n_heads=4. Options a kind does not use
    are ignored. ``model.config`` records kind and the options used, so
    ``build_model(**model.config)`` rebuilds the architecture.
    """
    unknown = set(kwargs) - KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"build_model: unknown option(s) {sorted(unknown)}; known: {sorted(KNOWN_OPTIONS)}")
    if kind.startswith("coupled-") and kind in MODEL_KINDS:
        cls, extra = CoupledMambaForMultimodal, {"coupling": kind[len("coupled-"):]}
    elif kind in _CLASSES:
        cls, extra = _CLASSES[kind], {}
    else:
        raise ValueError(f"kind: expected one of {MODEL_KINDS}, got {kind!r}")
    options = {k: v for k, v in kwargs.items() if k in _accepted(cls)}
    return cls(list(input_dims), task=task, num_classes=num_classes, **options, **extra)
