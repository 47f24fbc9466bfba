"""Streaming inference pieces of a Coupled Mamba layer that are not the scan itself.

A layer keeps two pieces of state between steps: the depthwise causal conv window (advanced by
:func:`causal_conv_step` here) and the coupled SSM state (advanced by
:func:`coupled_mamba.ops.coupled_scan_step`, re-exported here).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops.step import couple_states, coupled_scan_step  # noqa: F401  (re-exported)


def causal_conv_step(
    conv_state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of a depthwise causal Conv1d.

    conv_state (..., C, k - 1) holds the previous k - 1 inputs (oldest first), x (..., C) the new
    one, weight (..., C, k) and bias (..., C) broadcast against them. Returns (output (..., C),
    new conv_state). Matches F.conv1d with k - 1 zeros of left padding: weight[..., k - 1]
    multiplies the newest input.
    """
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    out = (window * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return out, window[..., 1:]
