"""Scene objects and their exact (non anti-aliased) rendering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .attributes import BACKGROUND_RGB, COLOURS, SHAPES


@dataclass(frozen=True)
class SceneObject:
    """One coloured shape. box = (x1, y1, x2, y2) in pixels, x2/y2 exclusive: the drawn pixels'
    tight bounding box is exactly this box."""

    shape: str
    colour: str
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "box": list(self.box)}

    @classmethod
    def from_dict(cls, data: dict) -> "SceneObject":
        return cls(shape=data["shape"], colour=data["colour"], box=tuple(data["box"]))


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    x1, y1, x2, y2 = obj.box
    right, bottom = x2 - 1, y2 - 1  # PIL boxes are inclusive
    if obj.shape == "square":
        draw.rectangle((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "circle":
        draw.ellipse((x1, y1, right, bottom), fill=fill)
    elif obj.shape == "triangle":
        # The apex is a flat top of one or two pixels so that the top row is always drawn.
        mid_left, mid_right = (x1 + right) // 2, (x1 + right + 1) // 2
        draw.polygon([(x1, bottom), (right, bottom), (mid_right, y1), (mid_left, y1)], fill=fill)
    elif obj.shape == "cross":
        thickness = max(2, (x2 - x1) // 3)
        hx1 = x1 + (x2 - x1 - thickness) // 2
        vy1 = y1 + (y2 - y1 - thickness) // 2
        draw.rectangle((hx1, y1, hx1 + thickness - 1, bottom), fill=fill)
        draw.rectangle((x1, vy1, right, vy1 + thickness - 1), fill=fill)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {obj.shape!r}")


def object_mask(obj: SceneObject, image_size: int) -> np.ndarray:
    """Boolean (image_size, image_size) mask of the pixels `obj` covers."""
    canvas = Image.new("1", (image_size, image_size), 0)
    _draw_shape(ImageDraw.Draw(canvas), obj, 1)
    return np.array(canvas, dtype=bool)


def render_scene(objects: list[SceneObject], image_size: int) -> np.ndarray:
    """Draw `objects` (in order) on the background; returns a uint8 (H, W, 3) array."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        if obj.colour not in COLOURS:
            raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {obj.colour!r}")
        _draw_shape(draw, obj, COLOURS[obj.colour])
    return np.array(image, dtype=np.uint8)
