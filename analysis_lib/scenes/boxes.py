"""Box answers: quantisation to a few bins, the "[x1, y1, x2, y2]" text form, parsing and IoU.

A pixel coordinate c of an image of side S is normalised to c / S in [0, 1] and quantised to the
integer bin round(c / S * (bins - 1)) in 0 .. bins-1; a bin b decodes back to b / (bins - 1) * S
pixels. With the default 32 bins on 96 px a coordinate moves by at most ~1.5 px, so the quantised
ground truth of every object (at least 13 px wide) keeps an IoU well above 0.5 with the drawn box.
"""

from __future__ import annotations

import re

Box = tuple[float, float, float, float]

_NUMBER = re.compile(r"-?\d+")


def normalise_box(box: Box, image_size: int) -> Box:
    """Pixel box -> box in [0, 1] coordinates."""
    return tuple(c / image_size for c in box)


def quantise_box(box: Box, image_size: int, bins: int) -> tuple[int, int, int, int]:
    """Pixel box -> integer bins in 0 .. bins-1."""
    return tuple(min(bins - 1, max(0, round(c / image_size * (bins - 1)))) for c in box)


def dequantise_box(bins_box: tuple[int, ...], image_size: int, bins: int) -> Box:
    """Integer bins -> pixel box."""
    return tuple(b / (bins - 1) * image_size for b in bins_box)


def format_box(box: Box, image_size: int, bins: int) -> str:
    """Pixel box -> the answer text, e.g. "[3, 10, 9, 16]"."""
    return "[" + ", ".join(str(b) for b in quantise_box(box, image_size, bins)) + "]"


def parse_box(text: str, image_size: int, bins: int) -> Box | None:
    """Answer text -> pixel box, or None unless it holds exactly four integers in 0 .. bins-1.
    Spacing is free ("[ 3 , 10 , 9 , 16 ]" parses), as a word-level tokenizer decodes it."""
    values = [int(v) for v in _NUMBER.findall(text)]
    if len(values) != 4 or any(not 0 <= v < bins for v in values):
        return None
    return dequantise_box(tuple(values), image_size, bins)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for degenerate boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0
