"""Random non-overlapping placement of objects anywhere in the image, and clear spatial relations."""

from __future__ import annotations

import numpy as np

from .config import SceneConfig
from .drawing import SceneObject

_TRIES_PER_OBJECT = 200


def place_objects(
    rng: np.random.Generator, attributes: list[tuple[str, str]], config: SceneConfig
) -> list[SceneObject] | None:
    """Place one object per (colour, shape), uniformly over the whole image (top rows included) with
    sizes uniform in config.object_size, keeping config.gap free pixels between boxes. Returns None
    when some object finds no room, so the caller draws a new scene."""
    placed: list[SceneObject] = []
    for colour, shape in attributes:
        for _ in range(_TRIES_PER_OBJECT):
            size = int(rng.integers(config.min_object_px, config.max_object_px + 1))
            x1 = int(rng.integers(0, config.image_size - size + 1))
            y1 = int(rng.integers(0, config.image_size - size + 1))
            box = (x1, y1, x1 + size, y1 + size)
            if all(_apart(box, other.box, config.gap) for other in placed):
                placed.append(SceneObject(shape=shape, colour=colour, box=box))
                break
        else:
            return None
    return placed


def _apart(a: tuple[int, ...], b: tuple[int, ...], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """True when `a <relation> b` holds clearly: the boxes do not overlap along the relation's axis."""
    if relation == "left of":
        return a.box[2] <= b.box[0]
    if relation == "right of":
        return b.box[2] <= a.box[0]
    if relation == "above":
        return a.box[3] <= b.box[1]
    if relation == "below":
        return b.box[3] <= a.box[1]
    raise ValueError(f"relation must be one of ('left of', 'right of', 'above', 'below'), got {relation!r}")
