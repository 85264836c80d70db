"""A pruning schedule: where each stage prunes, how it scores and selects, and its budget.

Layer convention (as FastV and FEATHER): a stage at layer K means decoder layers 0..K-1 see every
token and layers K.. see the kept ones; K = 0 prunes before the language model. Layers may be given
as fractions of depth (0 < f < 1), resolved to ``max(1, floor(f * num_layers + 0.5))``, so the
papers' 32-layer settings run on shallow models (K = 8 of 32 is ``0.25``). Increasing fractions of
successive stages that round onto the same layer move up one layer each, so the stages stay distinct
(SparseVLM's 3/32, 7/32, 16/32 are layers 1, 2, 3 of 6, not 1, 1, 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..validation import check_choice
from .merging import Merger
from .scorers import ConstantScorer, Scorer
from .selectors import Selector, TopK

KEEP_OF = ("input", "original")
ORDERS = ("image", "score")
SCOPES = ("global", "crop")


@dataclass(frozen=True)
class Stage:
    """One pruning step.

    ``keep``: a fraction in (0, 1] of the tokens entering the stage (``keep_of="input"``) or of all
    visual tokens (``keep_of="original"``), or an absolute count (an int; 0 removes every visual
    token); None for selectors that fix their own count (a stride grid, a quartile, a region).
    A fraction keeps ``max(1, floor(keep * n))`` tokens.
    ``score_layer``: read the text attention of layer ``score_layer - 1`` although the tokens are
    removed at ``layer`` = 0 (an in-LLM criterion's kept set applied before the LLM: the engine first
    runs the unpruned sequence through the layers it needs). ``order="score"`` feeds the kept tokens
    best-first instead of in image order (FoPru without reordering; pre-LLM stages only).
    ``scope="crop"`` splits the budget over the encoder crops (LLaVA-NeXT's base image and each
    high-res tile keep the same fraction); "global" ranks all visual tokens of a sample together.
    ``merging``: after selecting, kept tokens absorb others (``merging.py``); None = plain pruning.
    """

    layer: int | float
    scorer: Scorer = field(default_factory=ConstantScorer)
    keep: float | int | None = None
    keep_of: str = "input"
    selector: Selector = field(default_factory=TopK)
    score_layer: int | float | None = None
    order: str = "image"
    scope: str = "global"
    merging: Merger | None = None

    def __post_init__(self):
        check_choice("keep_of", self.keep_of, KEEP_OF)
        check_choice("order", self.order, ORDERS)
        check_choice("scope", self.scope, SCOPES)
        if self.keep is None:
            if self.selector.needs_budget:
                raise ValueError(f"keep=None: selector {self.selector.name!r} needs a budget (a fraction in (0, 1] "
                                 "or a token count)")
            return
        if not self.selector.needs_budget:
            raise ValueError(f"keep={self.keep!r}: selector {self.selector.name!r} fixes its own token count; "
                             "leave keep=None")
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise ValueError(f"keep={self.keep!r}: must be a fraction in (0, 1] or a token count >= 0")
        if isinstance(self.keep, float) and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep={self.keep!r} is outside the allowed range (0, 1] for a fraction")
        if isinstance(self.keep, int) and self.keep < 0:
            raise ValueError(f"keep={self.keep!r}: a token count must be >= 0")

    @property
    def needs_features(self) -> bool:
        return (self.scorer.needs_features or self.selector.needs_features
                or self.merges_on == "projector_input")

    @property
    def merges_on(self) -> str | None:
        """Where this stage's merge acts (see ``merging.py``), None without one."""
        return None if self.merging is None else self.merging.acts_on

    @property
    def needs_states(self) -> bool:
        """Whether the scorer or selector reads the language model's states where the stage prunes (``states.py``)."""
        return self.scorer.needs_states or self.selector.needs_states

    def budget(self, n_input: int, n_original: int) -> int | None:
        """Tokens this stage keeps for one sample (None: the selector decides); errors if above n_input."""
        if self.keep is None:
            return None
        if isinstance(self.keep, int):
            k = self.keep
        else:
            base = n_input if self.keep_of == "input" else n_original
            k = max(1, math.floor(self.keep * base + 1e-9))
        if k > n_input:
            raise ValueError(f"keep={self.keep!r}: the budget {k} exceeds the {n_input} visual tokens entering the "
                             f"stage at layer {self.layer}; allowed budgets are 0..{n_input}")
        return k


def resolve_layer(layer: int | float, num_layers: int, name: str = "layer") -> int:
    """An absolute layer index from an int or a fraction of depth, checked against the model."""
    if isinstance(layer, float):
        if not 0.0 <= layer < 1.0:
            raise ValueError(f"{name}={layer!r}: a fraction of depth must lie in [0, 1)")
        layer = max(1, math.floor(layer * num_layers + 0.5)) if layer > 0 else 0
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= num_layers - 1:
        scalable = isinstance(layer, int) and 0 < layer < 32 and num_layers < 32
        hint = f"; a 32-layer setting scales as a fraction: {layer}/32 of depth is {layer / 32:g}" if scalable else ""
        raise ValueError(f"{name}={layer!r} is outside this {num_layers}-layer model; allowed: 0..{num_layers - 1} "
                         f"(0 = before the language model) or a fraction of depth in [0, 1){hint}")
    return layer


@dataclass(frozen=True)
class Schedule:
    """An ordered list of stages; ``resolve`` fixes absolute layers for a given model depth.

    ``positions``: the method's own position-id policy after pruning ("keep" the original ids, as
    FastV and FEATHER; "reindex" to close the gaps, as PyramidDrop and every method that prunes
    before the LLM); the engine uses it unless told otherwise.
    """

    stages: tuple[Stage, ...]
    name: str = "custom"
    positions: str = "keep"

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        check_choice("positions", self.positions, ("keep", "reindex"))

    def resolve(self, num_layers: int) -> list[tuple[int, Stage]]:
        layers: list[int] = []
        for i, stage in enumerate(self.stages):
            layer = resolve_layer(stage.layer, num_layers)
            previous = self.stages[i - 1].layer if i else None
            if (i and isinstance(stage.layer, float) and isinstance(previous, float) and stage.layer > previous
                    and layer <= layers[-1] < num_layers - 1):
                layer = layers[-1] + 1  # increasing fractions stay distinct on a shallow model
            layers.append(layer)
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"stages: layers {layers} must be strictly increasing (stages in order)")
        for i, (layer, stage) in enumerate(zip(layers, self.stages)):
            probe = self.score_layer(stage, layer, num_layers)
            if stage.scorer.needs_text_attention and probe == 0:
                raise ValueError(f"scorer {stage.scorer.name!r} needs the attention of layer K-1 and cannot score "
                                 "before the language model (layer 0); give score_layer >= 1 to apply an in-LLM "
                                 "criterion's kept set before the LLM")
            if probe != layer and (layer != 0 or i != 0):
                raise ValueError(f"score_layer={stage.score_layer!r}: scoring at a later layer than the pruning "
                                 "layer is only supported for a first stage at layer 0")
            if stage.merges_on in ("projector_input", "vision_tower") and layer != 0:
                where = "the projector's input" if stage.merges_on == "projector_input" else "the vision tower"
                raise ValueError(f"merging {stage.merging.name!r} acts on {where} and needs a stage at "
                                 f"layer 0 (before the language model), not layer {layer}")
            if stage.order == "score" and (layer != 0 or len(self.stages) > 1):
                raise ValueError("order='score' (no reordering) is only supported for a single stage at layer 0")
        return list(zip(layers, self.stages))

    @property
    def reads_vision_tower(self) -> bool:
        """Whether a stage reads the vision tower's attention, keys or features, or merges in it: the tower
        must then run, hooked, for every prompt, and its output cannot be reused from another setting's run."""
        return self.changes_vision_tower or any(
            stage.scorer.needs_vision_attention or stage.needs_features
            or (stage.merging is not None and stage.merging.needs_keys) for stage in self.stages)

    @property
    def changes_vision_tower(self) -> bool:
        """Whether a stage merges inside the vision tower (ToMe): its encoding differs from the plain tower's,
        so no later setting may reuse it."""
        return any(stage.merges_on == "vision_tower" for stage in self.stages)

    @staticmethod
    def score_layer(stage: Stage, layer: int, num_layers: int) -> int:
        """The layer K whose preceding layer's attention scores ``stage`` (the pruning layer by default)."""
        if stage.score_layer is None:
            return layer
        return resolve_layer(stage.score_layer, num_layers, "score_layer")
