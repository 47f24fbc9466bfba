"""Coupled Mamba modules (docs/model.md): the layer, the stack, the multimodal model, streaming
inference, and the paper's fusion baselines, all built on coupled_mamba.coupled_selective_scan."""
from .alignment import ALIGN_MODES, align_modalities, lengths_to_mask, resample_to_bins
from .baselines import (
    AttentionBlock,
    AverageFusionModel,
    ConcatFusionModel,
    CrossAttentionFusionModel,
    TransformerFusionModel,
)
from .factory import MODEL_KINDS, build_model
from .heads import PredictionHead, masked_mean
from .layer import COUPLINGS, CoupledMambaLayer, LayerCache
from .model import CoupledMamba, CoupledMambaForMultimodal, InferenceCache, MultimodalStreamCache
from .multimodal import MultimodalFrontEnd, MultimodalModel
from .streaming import causal_conv_step, coupled_scan_step, couple_states

__all__ = [
    "ALIGN_MODES",
    "COUPLINGS",
    "MODEL_KINDS",
    "AttentionBlock",
    "AverageFusionModel",
    "ConcatFusionModel",
    "CoupledMamba",
    "CoupledMambaForMultimodal",
    "CoupledMambaLayer",
    "CrossAttentionFusionModel",
    "InferenceCache",
    "LayerCache",
    "MultimodalFrontEnd",
    "MultimodalModel",
    "MultimodalStreamCache",
    "PredictionHead",
    "TransformerFusionModel",
    "align_modalities",
    "build_model",
    "causal_conv_step",
    "couple_states",
    "coupled_scan_step",
    "lengths_to_mask",
    "masked_mean",
    "resample_to_bins",
]
