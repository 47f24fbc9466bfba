"""The optimiser of a run, and what a learned coupling has learned.

Weight decay pulls every weight towards 0. On the coupling logits of ``coupled-learned`` that is a
pull towards softmax(0), the uniform ("mean") coupling the model starts from, so the logits get a
parameter group of their own without weight decay; every other weight keeps the run's decay.
"""
from __future__ import annotations

from typing import List, Optional

import torch

__all__ = ["build_optimizer", "learned_coupling", "NO_DECAY_SUFFIXES"]

# Parameters (by name suffix) that are never decayed.
NO_DECAY_SUFFIXES = ("coupling_logits",)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over ``model``'s parameters; the coupling logits (if any) without weight decay.

    A model without coupling logits gets a single parameter group, exactly ``Adam(model.parameters())``.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith(NO_DECAY_SUFFIXES) else decay).append(p)
    if not no_decay:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, weight_decay=weight_decay)


def learned_coupling(model: torch.nn.Module) -> Optional[List[List[List[float]]]]:
    """Per layer, the learned coupling matrix W = softmax(logits, -1) as nested lists (row k: how
    modality k's state mixes the M states); None for a model without learned coupling."""
    model = model.module if hasattr(model, "module") else model
    ws = []
    for name, p in model.named_parameters():
        if name.endswith("coupling_logits"):
            ws.append([[round(float(v), 4) for v in row] for row in torch.softmax(p.detach().float().cpu(), -1)])
    return ws or None
