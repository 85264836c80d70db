"""Where the visual tokens sit in each sample's sequence, and where each one lies in the image.

Every pruning result is reported in these coordinates, so positional analyses (which rows of the
image survive) work the same for LLaVA-1.5's single grid and LLaVA-NeXT's base image + crops.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch


@dataclass(frozen=True)
class Segment:
    """A rectangular block of visual tokens: LLaVA-1.5's image grid, or LLaVA-NeXT's base / high-res grid."""

    name: str
    rows: int
    cols: int


@dataclass
class SampleGrid:
    """Per visual token of one sample (index = visual-token index in sequence order).

    ``patch`` indexes the flattened vision-tower output of the batch (image-crop * patches + patch), so
    vision-side scores ([CLS] attention, features) map onto the token; it is -1 for tokens that come
    from no patch (LLaVA-NeXT's row-end newline tokens). ``y``/``x`` are the token centre in
    normalised image coordinates (0 = top/left, 1 = bottom/right).
    """

    positions: torch.Tensor  # [N] position of the token in the input sequence
    patch: torch.Tensor  # [N] flat patch index or -1
    image: torch.Tensor  # [N] which image of the sample
    segment: torch.Tensor  # [N] index into VisualLayout.segments
    row: torch.Tensor  # [N] row in its segment grid
    col: torch.Tensor  # [N] column in its segment grid (newline tokens: the column after the last)
    y: torch.Tensor  # [N] float
    x: torch.Tensor  # [N] float
    segments: list[Segment]  # grid shape of each segment of this sample

    @classmethod
    def joined(cls, positions: torch.Tensor, parts: list[dict[str, torch.Tensor]], segments: list[Segment],
               geometry: str) -> SampleGrid:
        """One sample's grid from its images' parts (each a dict of the per-token fields); an error naming
        ``geometry`` (the argument that gave the image shapes) when the image tokens and the parts disagree."""
        seen = sum(len(part["row"]) for part in parts)
        if seen != positions.numel():
            raise ValueError(f"input_ids: {positions.numel()} image tokens do not match {geometry} "
                             f"({seen} expected)")
        fields = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return cls(positions=positions.cpu(), segments=segments, **fields)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())

    @property
    def is_patch(self) -> torch.Tensor:
        return self.patch >= 0

    def records(self, kept: torch.Tensor) -> list[dict]:
        """Rows (visual index, image, segment, row, col, y, x) for the kept visual-token indices."""
        kept = kept.cpu()
        cols = {k: getattr(self, k).cpu()[kept].tolist() for k in ("image", "segment", "row", "col", "y", "x")}
        return [{"visual_index": int(v), **{k: cols[k][i] for k in cols}} for i, v in enumerate(kept.tolist())]


@dataclass
class VisualLayout:
    """The visual tokens of a batch: one SampleGrid per sample."""

    samples: list[SampleGrid]
    sequence_length: int
    #: patches per encoder crop in the vision tower's padded [crops, crop_size] output (``patch // crop_size``
    #: is a token's crop)
    crop_size: int = 0

    @property
    def batch_size(self) -> int:
        return len(self.samples)

    def counts(self) -> list[int]:
        return [s.num_tokens for s in self.samples]


def stack_padded(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Stack tensors that differ in size along ``dim``, NaN-padding them to the largest."""
    size = max(p.shape[dim] for p in parts)
    padded = []
    for p in parts:
        pad = list(p.shape)
        pad[dim] = size - p.shape[dim]
        padded.append(torch.cat([p, p.new_full(pad, float("nan"))], dim=dim))
    return torch.stack(padded)


#: the processors' default pixel range of a resized image: Qwen2.5-VL's image processor (min_pixels,
#: max_pixels); Qwen3-VL checkpoints' preprocessor_config.json size {"shortest_edge", "longest_edge"}
QWEN2_5_VL_PIXELS = (56 * 56, 28 * 28 * 1280)
QWEN3_VL_PIXELS = (256 * 256, 4096 * 4096)


def smart_resize(height: int, width: int, factor: int, pixels: tuple[int, int] = QWEN2_5_VL_PIXELS
                 ) -> tuple[int, int]:
    """The Qwen processors' resize of a (height, width) image: nearest multiples of ``factor`` (patch × merge),
    scaled into the ``pixels`` range (min, max)."""
    min_pixels, max_pixels = pixels
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = (height * width / max_pixels) ** 0.5
        h, w = max(factor, int(height / scale / factor) * factor), max(factor, int(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = (min_pixels / (height * width)) ** 0.5
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w
