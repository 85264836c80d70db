"""Ground-truth relevant visual tokens: which tokens of the model's grid show a sample's target.

One rule for every source: a visual token is relevant when its centre lies in the relevant region, i.e. in
a relevant cell of the synthetic suite's mask, or in a real localization sample's box (x1 <= x < x2,
y1 <= y < y2, half-open like the suite's cells). Token centres (``SampleGrid.y/x``, normalised to their
segment's grid) are first mapped back onto the original image through what the processor did to it:

- LLaVA-1.5 (``CLIPImageProcessor`` / ``LlavaImageProcessor``): pad to a square when ``do_pad`` (the
  image in the middle), resize (``shortest_edge``: aspect kept, long side ``int(s * long / short)``), then
  center-crop ``crop_size`` when ``do_center_crop`` (top/left ``(size - crop) // 2``). llava-hf's
  LLaVA-1.5 checkpoints ship a ``CLIPImageProcessor`` (shortest edge 336, center crop 336, no ``do_pad``):
  a non-square image loses the ends of its long side; tokens outside the image are never relevant.
- LLaVA-NeXT: the base image is resized to a square (stretched: normalised coordinates unchanged) and the
  high-res grid is unpadded to the image's aspect by the model, so both segments are in the image's frame
  (the unpadding removes whole token rows, so the residual offset is under one token).
- Qwen2.5-VL / Qwen3-VL: ``smart_resize`` stretches the image to multiples of the merged cell, so the
  merged-cell grid is in the image's frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .datasets import EvalSample, task_family


@dataclass(frozen=True)
class Frame:
    """Affine map of a token centre (normalised to its grid) onto the image: ``image = token * scale + offset``."""

    scale_x: float = 1.0
    offset_x: float = 0.0
    scale_y: float = 1.0
    offset_y: float = 0.0

    def to_image(self, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y * self.scale_y + self.offset_y, x * self.scale_x + self.offset_x


IMAGE = Frame()
#: adapter families whose visual grid is in the image's frame (see the module docstring)
STRETCHED = ("llava_next", "qwen2_5_vl", "qwen3_vl")


def _setting(processor, name: str):
    value = getattr(processor, name, None)
    return value if value is None or isinstance(value, (bool, int)) else dict(value)


def _resized(width: int, height: int, size: dict) -> tuple[int, int]:
    """(width, height) after transformers' resize to ``size`` ({"shortest_edge"} or {"height", "width"})."""
    if size.get("shortest_edge"):
        s = size["shortest_edge"]
        short, long = sorted((width, height))
        new_long = int(s * long / short)
        return (s, new_long) if width <= height else (new_long, s)
    return size["width"], size["height"]


def _axis(length: int, pad: int, resized: int, padded: int, crop: int | None) -> tuple[float, float]:
    """(scale, offset) on one axis: image pixel -> padded (+ pad) -> resized (x resized / padded) -> cropped."""
    shift = 0 if crop is None else (resized - crop) // 2  # a crop larger than the image pads it (PIL backend)
    out = crop or resized
    return out * padded / (resized * length), (shift * padded / resized - pad) / length


def clip_frame(width: int, height: int, image_processor) -> Frame:
    """The LLaVA-1.5 image processor's frame for a ``width`` x ``height`` image: pad to a square (``do_pad``),
    resize (``do_resize``, ``size``), center crop (``do_center_crop``, ``crop_size``)."""
    pad = bool(_setting(image_processor, "do_pad"))
    side = max(width, height)
    padded = (side, side) if pad else (width, height)
    left, top = ((side - width) // 2, (side - height) // 2) if pad else (0, 0)
    size = _setting(image_processor, "size")
    resized = _resized(*padded, size) if _setting(image_processor, "do_resize") is not False and size else padded
    crop = _setting(image_processor, "crop_size") if _setting(image_processor, "do_center_crop") else None
    sx, ox = _axis(width, left, resized[0], padded[0], crop and crop["width"])
    sy, oy = _axis(height, top, resized[1], padded[1], crop and crop["height"])
    return Frame(sx, ox, sy, oy)


def image_frame(family: str, image_processor, width: int, height: int) -> Frame:
    """How a model family's visual grid maps onto a ``width`` x ``height`` image (module docstring)."""
    return IMAGE if family in STRETCHED else clip_frame(width, height, image_processor)


def relevant_tokens(sample: EvalSample, grid, frame: Frame) -> torch.Tensor | None:
    """Per visual token of ``grid``: whether its centre (through ``frame``) lies in the sample's relevant cells
    or, for a localization sample without a mask, in its box; None when the sample has neither."""
    y, x = frame.to_image(grid.y, grid.x)
    if sample.relevance is not None:
        mask = torch.as_tensor(np.asarray(sample.relevance, dtype=bool))
        rows, cols = mask.shape
        inside = (y >= 0) & (y < 1) & (x >= 0) & (x < 1)
        cell_r = (y * rows).long().clamp(0, rows - 1)
        cell_c = (x * cols).long().clamp(0, cols - 1)
        return mask[cell_r, cell_c] & inside & grid.is_patch
    if sample.box is None or task_family(sample.dataset, sample.task) != "localization":
        return None
    x1, y1, x2, y2 = sample.box
    return (x >= x1) & (x < x2) & (y >= y1) & (y < y2) & grid.is_patch


def relevant_kept(sample: EvalSample, grid, kept: torch.Tensor, frame: Frame = IMAGE) -> float | None:
    """Fraction of the ground-truth relevant visual tokens (``relevant_tokens``) kept; None without any."""
    relevant = relevant_tokens(sample, grid, frame)
    if relevant is None or not relevant.any():
        return None
    return float(relevant[kept].sum()) / int(relevant.sum())
