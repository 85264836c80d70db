"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic resolution, 2×2 merged cells, M-RoPE.

A visual token is one merged cell: 2×2 neighbouring patches of the vision tower, concatenated and
projected by the merger. Images of any size give ``t·h·w/4`` tokens (``image_grid_thw`` in patches), each
mapped to its cell's row and column. The tower has no [CLS]; most of its layers attend inside windows
of cells and a few over the whole image, on tokens permuted into window order: the attention maps are
put back into the image's patch order here. The language model uses 3-D M-RoPE position ids
(temporal, height, width), computed by the model's own ``get_rope_index``.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_window_index

from ..layout import QWEN2_5_VL_PIXELS, SampleGrid, Segment, VisualLayout, smart_resize, stack_padded
from . import calls
from .base import AttentionGeometry, ModelAdapter


class Qwen2_5_VLAdapter(ModelAdapter):
    family = "qwen2_5_vl"
    prompt_template = ("<|im_start|>user\n{image}{question}<|im_end|>\n<|im_start|>assistant\n")
    has_cls = False
    rope_axes = 3
    geometry_argument = "image_grid_thw"
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    #: the processor's default pixel range of a resized image
    pixels = QWEN2_5_VL_PIXELS
    #: the family's RoPE functions (decoder, vision tower)
    _rotate = staticmethod(apply_rotary_pos_emb)
    _rotate_vision = staticmethod(apply_rotary_pos_emb_vision)

    def apply_rotary(self, q, k, cos, sin):
        return self._rotate(q, k, cos, sin)

    # ---- vision tower ---------------------------------------------------------------------
    @property
    def _tower(self) -> nn.Module:
        return self._core.visual

    @property
    def vision_layers(self) -> nn.ModuleList:
        return self._tower.blocks

    def vision_attention(self, layer: int) -> nn.Module:
        return self.vision_layers[layer].attn

    def vision_geometry(self) -> AttentionGeometry:
        attn = self.vision_attention(0)
        return AttentionGeometry(attn.num_heads, attn.num_heads, attn.head_dim, attn.scaling)

    def qk_projections(self, attention: nn.Module) -> tuple[nn.Module, nn.Module]:
        fused = getattr(attention, "qkv", None)  # the vision tower's fused projection
        return (fused, fused) if fused is not None else super().qk_projections(attention)

    @property
    def projector(self) -> nn.Module:
        return self._tower.merger

    @property
    def image_feature_owner(self) -> nn.Module:
        return self._core

    @property
    def vision_feature_encoder_layer(self) -> int:
        """The merger reads the last block's output (every block of the tower feeds it)."""
        return len(self.vision_layers) - 1

    @property
    def merge(self) -> int:
        return self.config.vision_config.spatial_merge_size

    def _images(self, geometry: torch.Tensor) -> list[tuple[int, int, int]]:
        """(frames, patch rows, patch columns) per image of the batch."""
        if geometry is None:
            raise ValueError(f"{self.geometry_argument}: Qwen inputs must carry it (the processor returns it)")
        return [tuple(int(v) for v in row) for row in geometry.tolist()]

    def _patch_order(self, geometry: torch.Tensor) -> torch.Tensor:
        """[patches]: the image-order patch index at each slot of the tower's window-ordered sequence."""
        v = self.config.vision_config
        window_index, _ = get_vision_window_index(geometry.cpu(), spatial_merge_size=self.merge,
                                                  window_size=v.window_size, patch_size=v.patch_size)
        unit = self.merge ** 2
        return (window_index[:, None] * unit + torch.arange(unit)).flatten()

    def vision_attention_maps(self, q, k, call, geometry) -> list[torch.Tensor]:
        """Per image [H, P, P] over its patches in image order; zero between patches of different windows."""
        geo = self.vision_geometry()
        seq = q.shape[0]
        qkv = q.float().reshape(seq, 3, geo.num_heads, geo.head_dim)
        cos, sin = call.rope
        qs, ks = self._rotate_vision(qkv[:, 0], qkv[:, 1], cos.float(), sin.float())
        order = self._patch_order(geometry).to(q.device)
        sizes = [t * h * w for t, h, w in self._images(geometry)]
        ends = torch.tensor(sizes).cumsum(0).to(q.device)
        maps = [q.new_zeros(geo.num_heads, n, n, dtype=torch.float32) for n in sizes]
        bounds = call.segments.tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b == a:
                continue
            logits = torch.einsum("shd,thd->hst", qs[a:b], ks[a:b]) * geo.scaling
            image = int(torch.searchsorted(ends, order[a], right=True))
            local = order[a:b] - (ends[image] - sizes[image])
            maps[image][:, local[:, None], local[None, :]] = torch.softmax(logits, dim=-1)
        return maps

    def pool_patches(self, values: torch.Tensor) -> torch.Tensor:
        """A merged cell's value is the mean over its 2×2 patches (consecutive in the patch order)."""
        return values.unflatten(-1, (-1, self.merge ** 2)).mean(dim=-1)

    #: the merger normalises and concatenates 2x2 patches (``project_tokens`` is not offered)
    projects_per_token = False

    def vision_token_keys(self, k: torch.Tensor, geometry) -> torch.Tensor:
        """The key part of the fused qkv output, per merged cell (its 2x2 patches' keys concatenated)."""
        return self.vision_token_features(k.unflatten(-1, (3, -1))[..., 1, :], geometry)

    def vision_token_features(self, hidden: torch.Tensor, geometry) -> torch.Tensor:
        """[images, cells, 4C]: a cell's 2×2 patch features concatenated, as the merger reads them."""
        order = self._patch_order(geometry).to(hidden.device)
        in_image_order = torch.empty_like(hidden)
        in_image_order[order] = hidden
        cells = in_image_order.reshape(-1, self.merge ** 2 * hidden.shape[-1])
        counts = [t * h * w // self.merge ** 2 for t, h, w in self._images(geometry)]
        return stack_padded(list(cells.split(counts)), 0)

    # ---- positions: M-RoPE ------------------------------------------------------------------
    def canonical_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] or [1|3|4, B, L] (4: generate's text row first) -> [3, B, L]."""
        if position_ids.dim() == 2:
            position_ids = position_ids[None]
        if position_ids.shape[0] == 4:
            position_ids = position_ids[1:]
        return position_ids.expand(3, -1, -1)

    def argument_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    def prompt_positions(self, call: calls.ModelCall, mask: torch.Tensor) -> torch.Tensor:
        """The model's own M-RoPE ids (``get_rope_index``); the call is left to compute them itself, so the
        model keeps its rope deltas for later decoding steps."""
        if call.positions is not None:
            return self.canonical_positions(call.positions)
        if call.token_types is None:
            raise ValueError("mm_token_type_ids: Qwen prompts must carry them (the processor returns them); "
                             "without them the model gives image tokens 1-D positions")
        positions, _ = self._core.get_rope_index(call.tokens, mm_token_type_ids=call.token_types,
                                                 image_grid_thw=call.geometry, attention_mask=mask.long())
        return positions

    def layer_inputs(self, layer_call, hidden, mask, positions):
        # decoder layers take text-only position ids just to detect packed sequences (flash-attention): none here
        return layer_call.rewrite(hidden, mask, None, self.rope(hidden, positions))

    # ---- inputs -------------------------------------------------------------------------------
    def format_prompt(self, question: str, image_token: str | None = None) -> str:
        return self.prompt_template.format(image=image_token or self.image_placeholder, question=question)

    def num_visual_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Tokens of one (height, width) image after the processor's resize to multiples of patch × merge px
        (28 for Qwen2.5-VL, 32 for Qwen3-VL), clamped to the family's default pixel range."""
        if image_size is None:
            raise ValueError("image_size: Qwen models need the image's (height, width) to count its tokens")
        cell = self.config.vision_config.patch_size * self.merge
        h, w = smart_resize(*image_size, cell, self.pixels)
        return (h // cell) * (w // cell)

    def layout(self, input_ids: torch.Tensor, geometry: torch.Tensor | None = None) -> VisualLayout:
        images = self._images(geometry)
        m = self.merge
        cells = [t * (h // m) * (w // m) for t, h, w in images]
        width = max(cells)
        samples, image_idx = [], 0
        for positions in self.visual_positions(input_ids):
            parts, segments, seen = [], [], 0
            while seen < positions.numel():
                if image_idx >= len(images):
                    raise ValueError(f"{self.geometry_argument}: fewer images than the image tokens in input_ids need")
                _, h, w = images[image_idx]
                rows, cols = h // m, w // m
                local = torch.arange(cells[image_idx])
                row, col = (local // cols) % rows, local % cols
                n = local.numel()
                parts.append({"patch": image_idx * width + local, "image": torch.full((n,), len(segments)),
                              "segment": torch.full((n,), len(segments)), "row": row, "col": col,
                              "y": (row.float() + 0.5) / rows, "x": (col.float() + 0.5) / cols})
                segments.append(Segment("image", rows, cols))
                seen += n
                image_idx += 1
            samples.append(SampleGrid.joined(positions, parts, segments, self.geometry_argument))
        return VisualLayout(samples, int(input_ids.shape[1]), width)
