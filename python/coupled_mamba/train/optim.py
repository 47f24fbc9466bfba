"""The optimiser of a run, and what a learned coupling has learned.

The coupling logits of ``coupled-learned`` (an (M, M) matrix per layer, W = softmax(logits, -1))
get a parameter group of their own:

* no weight decay: decay pulls the logits towards 0, i.e. towards softmax(0), the uniform ("mean")
  coupling the model starts from;
* a learning rate ``coupling_lr_scale`` times the run's (default :data:`COUPLING_LR_SCALE`). Adam
  moves every parameter by at most about lr per step whatever its gradient, and a few hundred steps
  at lr 5e-4 move a logit by well under 1, which leaves W within a few hundredths of uniform; the
  M^2 logits are few, so a larger step for them does not unsettle the other weights.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Union

import torch

__all__ = ["adam", "build_optimizer", "learned_coupling", "NO_DECAY_SUFFIXES", "COUPLING_LR_SCALE"]

# Parameters (by name suffix) that are never decayed and use the coupling learning rate.
NO_DECAY_SUFFIXES = ("coupling_logits",)
# The coupling logits' learning rate over the run's (docs/results.md, "Learned coupling").
COUPLING_LR_SCALE = 30.0


def adam(params: Union[Iterable[torch.Tensor], List[Dict]], **kwargs) -> torch.optim.Adam:
    """torch.optim.Adam, fused (one pass over all parameters) where PyTorch has that for them:
    floating-point parameters on the CPU or a CUDA device. On the CPU, PyTorch's default is a loop
    over the parameters; fused, the step of a paper-sized coupled model takes 4 ms instead of 10."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.Adam(params, fused=fused or None, **kwargs)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    coupling_lr_scale: float = COUPLING_LR_SCALE) -> torch.optim.Optimizer:
    """Adam (:func:`adam`) over ``model``'s parameters; the coupling logits (if any) without weight
    decay and at ``coupling_lr_scale * lr``.

    A model without coupling logits gets a single parameter group, exactly ``adam(model.parameters())``.
    """
    decay, coupling = [], []
    for name, p in model.named_parameters():
        (coupling if name.endswith(NO_DECAY_SUFFIXES) else decay).append(p)
    if not coupling:
        return adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    return adam([{"params": decay, "weight_decay": weight_decay},
                 {"params": coupling, "weight_decay": 0.0, "lr": lr * coupling_lr_scale}],
                lr=lr, weight_decay=weight_decay)


def learned_coupling(model: torch.nn.Module) -> Optional[List[List[List[float]]]]:
    """Per layer, the learned coupling matrix W = softmax(logits, -1) as nested lists (row k: how
    modality k's state mixes the M states); None for a model without learned coupling."""
    model = model.module if hasattr(model, "module") else model
    ws = []
    for name, p in model.named_parameters():
        if name.endswith("coupling_logits"):
            ws.append([[round(float(v), 4) for v in row] for row in torch.softmax(p.detach().float().cpu(), -1)])
    return ws or None
