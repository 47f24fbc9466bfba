"""The Python training API: :func:`fit` trains one model on a split dict in memory, with the same
loop, model selection and metrics as ``coupled-mamba train``, and writes no files."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ..data import MultimodalDataset, check_splits
from ..modules import MODEL_KINDS
from .config import MODEL_OPTIONS, OPTIONAL_TRAINING_BOUNDS, PAPER_DEFAULTS, SEED, TRAINING_BOUNDS, check_model_options
from .distributed import DistributedContext
from .errors import UsageError
from .loop import Runtime, train_seed
from .optim import COUPLING_LR_SCALE
from .runs import resolve_select
from .stores import InMemoryStore

__all__ = ["fit", "FitResult"]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model``: the model with the selected weights (in eval mode); ``history``: one row per epoch
    (train_loss, valid_loss, valid_<metric>, seconds); ``metrics``: {"valid": ..., "test": ...} of the
    selected weights; ``best_epoch``: the selected epoch (1-based); ``config``: the run configuration;
    ``coupling_weights``: for coupled-learned, per layer the learned (M, M) W = softmax(logits) of the
    selected weights as nested lists (None for other models).
    """

    model: torch.nn.Module
    history: List[Dict[str, Any]]
    metrics: Dict[str, Dict[str, float]]
    best_epoch: int
    config: Dict[str, Any]
    coupling_weights: Optional[List[List[List[float]]]] = None


def fit(
    splits: Dict[str, MultimodalDataset],
    model: str = "coupled-mean",
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = PAPER_DEFAULTS["lr"],
    weight_decay: float = PAPER_DEFAULTS["weight_decay"],
    coupling_lr_scale: float = COUPLING_LR_SCALE,
    loss: Optional[str] = None,
    grad_clip: float = 0.0,
    patience: int = 0,
    select: Optional[str] = None,
    seed: int = 0,
    eval_batch_size: int = 256,
    device: str = "auto",
    verbose: bool = False,
    **model_options: Any,
) -> FitResult:
    """Train ``model`` (one of :data:`coupled_mamba.modules.MODEL_KINDS`) on ``splits``.

    ``splits``: {"train", "valid", "test"} of :class:`coupled_mamba.data.MultimodalDataset` (e.g.
    from :func:`coupled_mamba.data.load_data`). Selection is on the validation split by ``select``
    (default: MAE for regression, accuracy for classification; ``"Loss"`` for the validation loss).
    ``loss``: "l1" (default for regression), "mse" or "ce" (classification). ``coupling_lr_scale``:
    for coupled-learned, the coupling logits' learning rate over ``lr`` (they are never decayed;
    :mod:`coupled_mamba.train.optim`). ``model_options``:
    d_model, n_layers, d_state, d_conv, expand, dt_rank, seq_len, align, dropout, n_heads (see
    :func:`coupled_mamba.modules.build_model`). ``verbose``: print one line per epoch.
    Raises ValueError for an option out of range.
    """
    try:
        check_splits(splits, "splits")
        info = splits["train"].info
        if model not in MODEL_KINDS:
            raise UsageError(f"model: expected one of {', '.join(MODEL_KINDS)}, got {model!r}")
        unknown = set(model_options) - set(MODEL_OPTIONS)
        if unknown:
            raise UsageError(f"unknown option(s) {sorted(unknown)}; model options: {', '.join(MODEL_OPTIONS)}")
        check_model_options(model_options, "model options")
        loss = loss or ("ce" if info.task == "classification" else "l1")
        if (loss == "ce") != (info.task == "classification") or loss not in ("l1", "mse", "ce"):
            raise UsageError(f"loss: {loss!r} does not fit a {info.task} task")
        cfg: Dict[str, Any] = dict(
            dataset=info.name, data=info.source.get("path"), task=info.task, modalities=list(info.modalities),
            data_options={}, model=model, model_options=dict(model_options), epochs=epochs,
            batch_size=batch_size, eval_batch_size=eval_batch_size, optimizer="adam", lr=lr,
            weight_decay=weight_decay, coupling_lr_scale=coupling_lr_scale, loss=loss, grad_clip=grad_clip,
            patience=patience,
            select=resolve_select(select, info.metrics, info.num_classes), seeds=[seed], checkpoint_every=0,
        )
        if SEED.problem(seed):
            raise UsageError(f"seed: {SEED.problem(seed)}")
        for k, bound in {**TRAINING_BOUNDS, **OPTIONAL_TRAINING_BOUNDS}.items():
            msg = bound.problem(cfg[k])
            if msg:
                raise UsageError(f"{k}: {msg}")
        ctx = DistributedContext(device)
    except UsageError as e:
        raise ValueError(f"fit: {e}") from None
    try:
        run = train_seed(cfg, seed, splits, Runtime(ctx, quiet=not verbose), InMemoryStore())
    except UsageError as e:
        raise ValueError(f"fit: {e}") from None
    finally:
        ctx.close()
    run.model.eval()
    res = run.result or {}
    return FitResult(run.model, run.history, {"valid": res.get("valid"), "test": res.get("test")},
                     res.get("best_epoch", 0), cfg, res.get("coupling_weights"))
