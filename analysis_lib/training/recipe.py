"""Training recipes: the model shape, the scene suite, and a list of stages run in order.

The default recipe is staged (DESIGN.md section 6 lists what failed before):
1. "tower": only the vision tower learns, from dense per-patch targets (colour, shape, quantised box
   and whether the patch holds the object's centre), so that every visual token carries what the
   language model will have to read, including where its object is;
2. "language-*": the tower is frozen; projector and language model learn the answers of multi-turn
   conversations about one image (several questions share the 144 image tokens), with a curriculum
   from few objects to full clutter, plus the "image words" loss: the language model's output at
   every image token names its object's colour, shape and box bins. Without it (recipe
   "answer-only") every image task stayed at chance for 1000 language steps, as DESIGN.md section 6
   found; with colour and shape words ("words-colour-shape") colour and shape questions were far above
   chance after 250 steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..scenes import SceneConfig
from .model import ModelShape

TRAINABLE = ("tower", "language")
IMAGE_WORDS = ("colour", "shape", "box")


@dataclass(frozen=True)
class Stage:
    """steps: optimiser steps; trains: "tower" (tower + per-patch heads) or "language" (projector +
    language model, tower frozen); clutter: the clutter levels scenes are drawn from; follow_ups:
    extra questions per image after the first."""

    name: str
    steps: int
    trains: str
    lr: float
    clutter: tuple[str, ...] = ("low", "medium", "high")
    follow_ups: int = 0

    def __post_init__(self) -> None:
        if self.trains not in TRAINABLE:
            raise ValueError(f"trains must be one of {TRAINABLE}, got {self.trains!r}")


@dataclass(frozen=True)
class Recipe:
    stages: tuple[Stage, ...]
    model: ModelShape = ModelShape()
    scene: SceneConfig = field(default_factory=SceneConfig)
    batch_size: int = 32
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bf16: bool = False
    eval_every: int = 250
    eval_per_task: int = 50
    checkpoint_every: int = 100
    seed: int = 0
    # Optional auxiliary losses of the language stages (weight 0 disables them): the "relevance
    # pointer" (train.RelevancePointer) and "image words" (train.image_word_loss).
    pointer_weight: float = 0.0
    pointer_layer: int = 3
    image_word_weight: float = 0.0
    image_words: tuple[str, ...] = ("colour", "shape")

    def __post_init__(self) -> None:
        unknown = set(self.image_words) - set(IMAGE_WORDS)
        if unknown or not self.image_words:
            raise ValueError(f"image_words must be a non-empty subset of {IMAGE_WORDS}, got {self.image_words!r}")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, Stage, int]:
        """(stage index, stage, step within the stage) of a global step."""
        for index, stage in enumerate(self.stages):
            if step < stage.steps:
                return index, stage, step
            step -= stage.steps
        raise ValueError(f"step must be below total_steps={self.total_steps}, got {step}")

    def scene_for(self, stage: Stage) -> SceneConfig:
        """The suite's configuration restricted to the stage's clutter levels."""
        clutter = {level: self.scene.clutter[level] for level in stage.clutter}
        return SceneConfig.from_dict({**self.scene.to_dict(), "clutter": clutter})


_ANSWER_ONLY = Recipe(
    model=ModelShape(text_hidden=128, text_intermediate=384, text_layers=6, text_heads=4),
    stages=(
        Stage("tower", 1500, "tower", lr=2e-3),
        Stage("language-low", 2000, "language", lr=2e-3, clutter=("low",), follow_ups=5),
        Stage("language-medium", 4000, "language", lr=2e-3, clutter=("low", "medium"), follow_ups=5),
        Stage("language-all", 40000, "language", lr=1e-3, follow_ups=5),
    ),
)

RECIPES: dict[str, Recipe] = {
    # The staged recipe plus the image-words loss (colour, shape and box words at every image token).
    "default": replace(_ANSWER_ONLY, image_word_weight=1.0, image_words=("colour", "shape", "box")),
    # Measured alternatives: answer loss only; the same plus the relevance pointer; image words
    # without the box words.
    "answer-only": _ANSWER_ONLY,
    "pointer": replace(_ANSWER_ONLY, pointer_weight=1.0),
    "words-colour-shape": replace(_ANSWER_ONLY, image_word_weight=1.0),
    # Seconds on one CPU thread: for tests and smoke runs.
    "tiny": Recipe(
        model=ModelShape(vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=32, text_layers=2,
                         text_heads=2, text_intermediate=64, max_positions=512),
        scene=SceneConfig(image_size=32, patch_size=8, object_size=(0.25, 0.4), clutter={"low": (1, 2)}),
        stages=(Stage("tower", 10, "tower", lr=3e-3, clutter=("low",)),
                Stage("language", 30, "language", lr=3e-3, clutter=("low",), follow_ups=1)),
        batch_size=8,
        warmup_steps=2,
        eval_every=20,
        eval_per_task=2,
        checkpoint_every=10,
        pointer_layer=1,
    ),
}
