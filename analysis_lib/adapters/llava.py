"""LLaVA-1.5 (llava-hf ``LlavaForConditionalGeneration``): CLIP tower with [CLS], MLP projector, Llama."""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..layout import SampleGrid, Segment, VisualLayout
from .base import ModelAdapter


class LlavaAdapter(ModelAdapter):
    family = "llava"
    prompt_template = "USER: {image}\n{question} ASSISTANT:"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        strategy = self.config.vision_feature_select_strategy
        if strategy != "default":
            raise ValueError(f"vision_feature_select_strategy={strategy!r} is not supported; allowed: 'default'")

    def apply_rotary(self, q, k, cos, sin):
        return apply_rotary_pos_emb(q, k, cos, sin)

    @property
    def vision_layers(self) -> nn.ModuleList:
        return self._core.vision_tower.encoder.layers

    @property
    def image_feature_owner(self) -> nn.Module:
        """The module whose ``get_image_features`` encodes images (called by forward and by generate)."""
        return self._core

    @property
    def projector(self) -> nn.Module:
        return self._core.multi_modal_projector

    @property
    def grid_side(self) -> int:
        v = self.config.vision_config
        return v.image_size // v.patch_size

    def num_visual_tokens(self, image_size=None) -> int:
        return self.patches_per_crop

    def layout(self, input_ids: torch.Tensor, image_sizes: torch.Tensor | None = None) -> VisualLayout:
        g, per_image = self.grid_side, self.patches_per_crop
        samples, image_offset = [], 0
        for positions in self.visual_positions(input_ids):
            n = positions.numel()
            if n % per_image:
                raise ValueError(f"input_ids: a sample has {n} image tokens, not a multiple of {per_image} "
                                 f"({g}x{g} patches per image)")
            local = torch.arange(n)
            patch_in_image = local % per_image
            row, col = patch_in_image // g, patch_in_image % g
            samples.append(SampleGrid(
                positions=positions.cpu(), patch=image_offset * per_image + local,
                image=local // per_image, segment=torch.zeros(n, dtype=torch.long), row=row, col=col,
                y=(row.float() + 0.5) / g, x=(col.float() + 0.5) / g,
                segments=[Segment("image", g, g)]))
            image_offset += n // per_image
        return VisualLayout(samples, int(input_ids.shape[1]), self.patches_per_crop)
