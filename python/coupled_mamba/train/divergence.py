"""The error a run stops with when its training loss stops being finite, with the likely cause."""
from __future__ import annotations

from typing import Optional

__all__ = ["divergence_message"]


def divergence_message(kind: str, model, epoch: int, batch: int, n_batches: int,
                       value: Optional[float] = None) -> str:
    """The message for a non-finite training loss at ``epoch`` / ``batch`` (1-based) of a ``kind`` model."""
    what = f" ({value})" if value is not None else ""
    msg = (f"the training loss is not finite{what} at epoch {epoch}, batch {batch} of {n_batches}; "
           "stopped before the weights were updated with it.")
    if kind == "coupled-sum":
        cfg = getattr(getattr(model, "module", model), "config", {}) or {}
        M = len(cfg.get("input_dims", [])) or "M"
        L = cfg.get("seq_len", "L")
        span = "up to " if cfg.get("align") == "pad" else ""  # pad scans at most seq_len steps
        msg += (f" coupled-sum adds the {M} modality states at every step, so the summed state grows like "
                f"{M}^L over the {span}L = {L} steps and overflows float32 (docs/coupled-scan.md, Numerics); use "
                "--model coupled-mean (bounded) or coupled-learned instead, or a shorter --seq-len.")
    else:
        msg += (" Check the data for extreme values (standardised features are safest), or try a lower --lr "
                "or --grad-clip.")
    return msg
