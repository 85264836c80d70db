"""A pruning schedule: where each stage prunes, how it scores and selects, and its budget.

Layer convention (as FastV and FEATHER): a stage at layer K means decoder layers 0..K-1 see every
token and layers K.. see the kept ones; K = 0 prunes before the language model. Layers may be given
as fractions of depth (0 < f < 1), resolved with ``round(f * num_layers)``, so the papers' 32-layer
settings run on shallow models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..validation import check_choice
from .scorers import Scorer
from .selectors import Selector, TopK

KEEP_OF = ("input", "original")


@dataclass(frozen=True)
class Stage:
    """One pruning step.

    ``keep``: a fraction in (0, 1] of the tokens entering the stage (``keep_of="input"``) or of all
    visual tokens (``keep_of="original"``), or an absolute count >= 1 (an int).
    A fraction keeps ``max(1, floor(keep * n))`` tokens.
    """

    layer: int | float
    scorer: Scorer
    keep: float | int
    keep_of: str = "input"
    selector: Selector = field(default_factory=TopK)

    def __post_init__(self):
        check_choice("keep_of", self.keep_of, KEEP_OF)
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise ValueError(f"keep={self.keep!r}: must be a fraction in (0, 1] or a token count >= 1")
        if isinstance(self.keep, float) and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep={self.keep!r} is outside the allowed range (0, 1] for a fraction")
        if isinstance(self.keep, int) and self.keep < 1:
            raise ValueError(f"keep={self.keep!r}: a token count must be >= 1")

    def budget(self, n_input: int, n_original: int) -> int:
        """Tokens this stage keeps for one sample; errors if that is outside (0, n_input]."""
        if isinstance(self.keep, int):
            k = self.keep
        else:
            base = n_input if self.keep_of == "input" else n_original
            k = max(1, math.floor(self.keep * base + 1e-9))
        if k > n_input:
            raise ValueError(f"keep={self.keep!r}: the budget {k} exceeds the {n_input} visual tokens entering the "
                             f"stage at layer {self.layer}; allowed budgets are 1..{n_input}")
        return k


def resolve_layer(layer: int | float, num_layers: int) -> int:
    """An absolute layer index from an int or a fraction of depth, checked against the model."""
    if isinstance(layer, float):
        if not 0.0 <= layer < 1.0:
            raise ValueError(f"layer={layer!r}: a fraction of depth must lie in [0, 1)")
        layer = round(layer * num_layers)
    if not 0 <= layer <= num_layers - 1:
        raise ValueError(f"layer={layer!r} is outside the model; allowed: 0..{num_layers - 1} "
                         f"(0 = before the language model)")
    return layer


@dataclass(frozen=True)
class Schedule:
    """An ordered list of stages; ``resolve`` fixes absolute layers for a given model depth."""

    stages: tuple[Stage, ...]
    name: str = "custom"

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))

    def resolve(self, num_layers: int) -> list[tuple[int, Stage]]:
        layers = [resolve_layer(s.layer, num_layers) for s in self.stages]
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"stages: layers {layers} must be strictly increasing (stages in order)")
        for layer, stage in zip(layers, self.stages):
            if layer == 0 and stage.scorer.needs_text_attention:
                raise ValueError(f"scorer {stage.scorer.name!r} needs the attention of layer K-1 and cannot run "
                                 "before the language model (layer 0); use a vision-side or fixed scorer there")
        return list(zip(layers, self.stages))
