"""Referring expressions ("the red circle on the left") and their resolution against a scene."""

from __future__ import annotations

from dataclasses import dataclass

from .drawing import SceneObject
from .layout import holds

# Position word in an expression -> the relation the referent holds against its look-alikes.
POSITIONS: dict[str, str] = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}


@dataclass(frozen=True)
class ReferringExpression:
    """Colour and shape, optionally with a position that singles out one of several look-alikes."""

    colour: str | None
    shape: str | None
    position: str | None = None

    @property
    def text(self) -> str:
        words = ["the", self.colour or "", self.shape or "object"]
        if self.position in ("left", "right"):
            words += ["on", "the", self.position]
        elif self.position in ("top", "bottom"):
            words += ["at", "the", self.position]
        return " ".join(w for w in words if w)

    def resolve(self, objects: list[SceneObject]) -> list[int]:
        """Indices of the objects this expression can refer to (exactly one when it is unambiguous)."""
        matches = [
            i
            for i, o in enumerate(objects)
            if (self.colour is None or o.colour == self.colour) and (self.shape is None or o.shape == self.shape)
        ]
        if self.position is None:
            return matches
        relation = POSITIONS[self.position]
        return [i for i in matches if all(holds(relation, objects[i], objects[j]) for j in matches if j != i)]
