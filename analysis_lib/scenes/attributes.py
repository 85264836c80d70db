"""The closed vocabulary of the synthetic scenes: colours, shapes, tasks, splits, relations."""

from __future__ import annotations

# Colours are drawn exactly (no anti-aliasing), so every pixel of an object has its colour's RGB value.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 100, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
BACKGROUND_NAME = "black"
BACKGROUND_RGB: tuple[int, int, int] = (0, 0, 0)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

TASKS: tuple[str, ...] = ("localization", "colour", "shape", "counting", "existence", "spatial", "prior")
SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Spatial relations between two objects, phrased as in the questions, with their opposites.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

YES, NO = "yes", "no"
