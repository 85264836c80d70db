"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's layout plus DeepStack and interleaved M-RoPE.

What differs from Qwen2.5-VL (whose adapter this extends):

- the vision tower (patch 16, 2×2 merge) attends over each whole image, in the image's own patch order
  (no windows), so its attention maps need no reordering;
- DeepStack: features merged from a few vision layers (``deepstack_visual_indexes``) are added to the
  outputs of the first ``len(deepstack_visual_indexes)`` decoder layers at the image tokens. The pruning
  engine takes them out of the language model's call and adds them itself at the kept tokens, so
  pruning before or inside those layers drops the same tokens from them;
- interleaved M-RoPE (the rotary embedding interleaves the temporal, height and width frequencies); the
  position ids are the same [3, B, L] as Qwen2.5-VL's, so the position policies read alike;
- ``mm_token_type_ids`` (1 at image tokens) is required with images: the model raises without it;
- the decoder normalizes each head's queries and keys (QK-norm) before RoPE: scores are read after it.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb, apply_rotary_pos_emb_vision

from ..layout import QWEN3_VL_PIXELS
from .qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    family = "qwen3_vl"
    pixels = QWEN3_VL_PIXELS
    _rotate = staticmethod(apply_rotary_pos_emb)
    _rotate_vision = staticmethod(apply_rotary_pos_emb_vision)

    @property
    def injection_layers(self) -> int:
        return len(self.config.vision_config.deepstack_visual_indexes)

    def qk_projections(self, attention: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Decoder blocks: the per-head RMSNorms after q_proj/k_proj, whose outputs RoPE rotates."""
        if hasattr(attention, "q_norm"):
            return attention.q_norm, attention.k_norm
        return super().qk_projections(attention)

    def _patch_order(self, geometry: torch.Tensor) -> torch.Tensor:
        """The tower keeps the processor's patch order (2×2 cells consecutive): the identity."""
        return torch.arange(int(geometry.prod(-1).sum()))
