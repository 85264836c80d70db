"""LLaVA-NeXT (llava-hf ``LlavaNextForConditionalGeneration``): base image + high-res crops.

The visual sequence of one image is: the base image's g×g tokens (segment "base"), then the
high-resolution crops stitched into one grid, unpadded to the image's aspect ratio, with a newline
token at the end of every row (segment "highres"). The layout is derived by running the model's own
``pack_image_features`` on index-valued features, so it always matches what the model does.
"""
from __future__ import annotations

import torch
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
)

from ..layout import SampleGrid, Segment, VisualLayout
from .llava import LlavaAdapter

_NEWLINE = -1.0


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    prompt_template = "[INST] {image}\n{question} [/INST]"

    def _crops(self, image_size) -> int:
        return image_size_to_num_patches(list(image_size), self.config.image_grid_pinpoints,
                                         self.config.vision_config.image_size)

    def _pack_indices(self, image_size, crop_offset: int) -> torch.Tensor:
        """Per visual token of one image: [flat patch index or -1, row, col] in the stitched crop grid."""
        g, per_crop = self.grid_side, self.patches_per_crop
        n_crops = self._crops(image_size)
        _, crops_wide = get_anyres_image_grid_shape(list(image_size), self.config.image_grid_pinpoints,
                                                    self.config.vision_config.image_size)
        crop = torch.arange(n_crops).repeat_interleave(per_crop)
        patch = torch.arange(per_crop).repeat(n_crops)
        tile_row, tile_col = ((crop - 1).clamp(min=0) // crops_wide), ((crop - 1).clamp(min=0) % crops_wide)
        row = torch.where(crop == 0, patch // g, tile_row * g + patch // g)
        col = torch.where(crop == 0, patch % g, tile_col * g + patch % g)
        flat = (crop_offset + crop) * per_crop + patch
        feats = torch.stack([flat, row, col], dim=-1).double().view(n_crops, per_crop, 3)
        newline = torch.full((3,), _NEWLINE, dtype=torch.float64)
        packed, _ = self.model.model.pack_image_features(
            [feats], torch.tensor([list(image_size)]), self.config.vision_feature_select_strategy, newline)
        return packed[0].round().long()

    def num_visual_tokens(self, image_size=None) -> int:
        if image_size is None:
            raise ValueError("image_size: LLaVA-NeXT needs the image's (height, width) to count its tokens")
        return int(self._pack_indices(image_size, 0).shape[0])

    def layout(self, input_ids: torch.Tensor, image_sizes: torch.Tensor | None = None) -> VisualLayout:
        if image_sizes is None:
            raise ValueError("image_sizes: LLaVA-NeXT inputs must carry image_sizes (the processor returns them)")
        g = self.grid_side
        positions_per_sample = self.visual_positions(input_ids)
        sizes = [tuple(int(v) for v in s) for s in image_sizes.tolist()]
        samples, image_idx, crop_offset = [], 0, 0
        for positions in positions_per_sample:
            parts, segments, seen = [], [], 0
            while seen < positions.numel():
                if image_idx >= len(sizes):
                    raise ValueError("image_sizes: fewer images than the image tokens in input_ids need")
                packed = self._pack_indices(sizes[image_idx], crop_offset)
                parts.append(self._grid_part(packed, g, image=len(segments) // 2, segment_base=len(segments)))
                hi = packed[g * g:]
                rows = int((hi[:, 0] == _NEWLINE).sum()) or 1
                segments += [Segment("base", g, g), Segment("highres", rows, max((len(hi) - rows) // rows, 0))]
                seen += packed.shape[0]
                crop_offset += self._crops(sizes[image_idx])
                image_idx += 1
            samples.append(SampleGrid.joined(positions, parts, segments, "image_sizes"))
        return VisualLayout(samples, int(input_ids.shape[1]), self.patches_per_crop)

    @staticmethod
    def _grid_part(packed: torch.Tensor, g: int, image: int, segment_base: int) -> dict[str, torch.Tensor]:
        """Grid coordinates of one packed image: base tokens on g×g, high-res tokens on the unpadded grid."""
        n = packed.shape[0]
        flat, row, col = packed[:, 0], packed[:, 1].clone(), packed[:, 2].clone()
        is_newline = flat < 0
        segment = torch.full((n,), segment_base + 1, dtype=torch.long)
        segment[: g * g] = segment_base
        y, x = (row.float() + 0.5) / g, (col.float() + 0.5) / g
        hi = torch.arange(n) >= g * g
        real_hi = hi & ~is_newline
        if real_hi.any():
            r0, c0 = row[real_hi].min(), col[real_hi].min()
            height = int(row[real_hi].max() - r0 + 1)
            width = int(col[real_hi].max() - c0 + 1)
            row[real_hi] -= r0
            col[real_hi] -= c0
            # a newline token ends its row: same row as the token before it, one column past the grid
            nl = hi & is_newline
            nl_idx = nl.nonzero().flatten()
            row[nl_idx] = row[nl_idx - 1]
            col[nl_idx] = width
            y[hi] = (row[hi].float() + 0.5) / height
            x[hi] = (col[hi].float() + 0.5) / width
        else:  # no crops: base grid followed by a single newline token
            row[is_newline], col[is_newline] = g - 1, g
        return {"patch": torch.where(is_newline, -1, flat), "image": torch.full((n,), image, dtype=torch.long),
                "segment": segment, "row": row, "col": col, "y": y, "x": x}
