"""Training recipes: the model shape, the scene suite, and a list of stages run in order.

The default recipe is staged (earlier single-stage attempts, with the loss on answer tokens only or a
per-patch loss on the tower alone, left every image task near chance):
1. "tower": only the vision tower learns, from dense per-patch targets (colour, shape, quantised box
   and whether the patch holds the object's centre), so that every visual token carries what the
   language model will have to read, including where its object is;
2. "language-*": the tower is frozen; projector and language model learn the answers of multi-turn
   conversations about one image (several questions share the 144 image tokens), with a curriculum
   from few objects to full clutter, plus the "image words" loss: the language model's output at
   every image token names its object's colour, shape and box bins. Without it (recipe
   "answer-only") every image task stayed at chance for 1000 language steps, as those earlier
   attempts did; with colour and shape words ("words-colour-shape") colour and shape questions were far above
   chance after 250 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..scenes import TASKS, SceneConfig
from ..scenes.tasks import FOLLOW_UP_TASKS
from .model import ModelShape

TRAINABLE = ("tower", "language")
IMAGE_WORDS = ("colour", "shape", "box")
POINTER_TOKENS = ("first", "answer")  # see auxiliary.RelevancePointer


@dataclass(frozen=True)
class Stage:
    """steps: optimiser steps; trains: "tower" (tower + per-patch heads) or "language" (projector +
    language model, tower frozen); clutter: the clutter levels scenes are drawn from; follow_ups:
    extra questions per image after the first; tasks: the tasks asked (main questions in rotation
    and follow-ups), None for all of the suite's; main_tasks: the main questions' tasks instead, if
    set (the relevance pointer reads only the main question); objects: (fewest, most) objects per scene,
    replacing the clutter levels' ranges (tasks needing more objects still raise the count), None
    to keep them; final_lr: the learning rate falls from lr to final_lr over the stage along a cosine
    (None: constant lr); pointer_weight: the relevance pointer's weight in this stage (None: the
    recipe's); pointer_tokens: where the pointer reads the question, "first" (the last prompt token)
    or "answer" (every token of the first answer)."""

    name: str
    steps: int
    trains: str
    lr: float
    clutter: tuple[str, ...] = ("low", "medium", "high")
    follow_ups: int = 0
    tasks: tuple[str, ...] | None = None
    main_tasks: tuple[str, ...] | None = None
    objects: tuple[int, int] | None = None
    final_lr: float | None = None
    pointer_weight: float | None = None
    pointer_tokens: str = "first"

    def __post_init__(self) -> None:
        if self.trains not in TRAINABLE:
            raise ValueError(f"trains must be one of {TRAINABLE}, got {self.trains!r}")
        for name in ("tasks", "main_tasks"):
            chosen = getattr(self, name)
            if chosen is not None and (not chosen or len(set(chosen)) != len(chosen) or set(chosen) - set(TASKS)):
                raise ValueError(f"{name} must be distinct tasks of {TASKS}, got {chosen!r}")
        if self.tasks is not None and self.follow_ups and not set(self.tasks) & set(FOLLOW_UP_TASKS):
            raise ValueError(f"follow_ups need one of {FOLLOW_UP_TASKS} among tasks, got {self.tasks!r}")
        if self.objects is not None and not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be (fewest, most) with 1 <= fewest <= most, got {self.objects!r}")
        if self.final_lr is not None and not 0 <= self.final_lr <= self.lr:
            raise ValueError(f"final_lr must be None or between 0 and lr={self.lr}, got {self.final_lr!r}")
        if self.pointer_weight is not None and self.pointer_weight < 0:
            raise ValueError(f"pointer_weight must be None or >= 0, got {self.pointer_weight!r}")
        if self.pointer_tokens not in POINTER_TOKENS:
            raise ValueError(f"pointer_tokens must be one of {POINTER_TOKENS}, got {self.pointer_tokens!r}")

    def lr_at(self, step: int, warmup_steps: int) -> float:
        """Learning rate at `step` of the stage: linear warm-up over warmup_steps, then lr, or a cosine
        from lr down to final_lr at the stage's last step."""
        lr = self.lr
        if self.final_lr is not None and self.steps > 1:
            lr = self.final_lr + (self.lr - self.final_lr) * 0.5 * (1 + math.cos(math.pi * step / (self.steps - 1)))
        return lr * min(1.0, (step + 1) / warmup_steps)


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

    def pointer_weight_of(self, stage: Stage) -> float:
        return self.pointer_weight if stage.pointer_weight is None else stage.pointer_weight

    @property
    def uses_pointer(self) -> bool:
        return any(self.pointer_weight_of(s) for s in self.stages if s.trains == "language")

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

    def steps_before(self, step: int) -> tuple[tuple[Stage, int], ...]:
        """(stage with its length left out, steps trained in it) for every stage the first `step` steps
        go through: recipes with equal prefixes (and equal all but stages) train the same first steps."""
        done = []
        for stage in self.stages:
            if step <= 0:
                break
            done.append((replace(stage, steps=0), min(step, stage.steps)))
            step -= stage.steps
        return tuple(done)

    def can_branch(self, other: Recipe, step: int) -> bool:
        """Whether a run of `other` at `step` is also a run of this recipe at `step`, so that it can
        carry on under this recipe: same model, data and losses, and the same stages up to `step`
        (the stage in progress may end at another step here)."""
        return replace(self, stages=()) == replace(other, stages=()) and self.steps_before(step) == other.steps_before(step)

    def scene_for(self, stage: Stage) -> SceneConfig:
        """The suite's configuration restricted to the stage's clutter levels (with the stage's
        object counts, if it sets them)."""
        clutter = {level: stage.objects or self.scene.clutter[level] for level in stage.clutter}
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

# The staged recipe plus the image-words loss (colour, shape and box words at every image token).
_DEFAULT = replace(_ANSWER_ONLY, image_word_weight=1.0, image_words=("colour", "shape", "box"))


def _language_lr(stages: tuple[Stage, ...], factor: float) -> tuple[Stage, ...]:
    """`stages` with every language stage's learning rate multiplied by `factor`."""
    return tuple(replace(s, lr=s.lr * factor) if s.trains == "language" else s for s in stages)


# A first language stage of 1000 steps asking only colour, shape and existence questions about scenes
# of 2-3 objects, then the default's language stages.
_BINDING_FIRST = replace(_DEFAULT, stages=(
    _DEFAULT.stages[0],
    Stage("language-binding", 1000, "language", lr=2e-3, clutter=("low",), follow_ups=5,
          tasks=("colour", "shape", "existence"), objects=(2, 3)),
    *_DEFAULT.stages[1:],
))


def _after_9250(*later: Stage) -> Recipe:
    """The default up to step 9250 (its language-all stage cut after 1750 steps, where runs/train-default
    stood when the experiments below branched from it), then `later`."""
    return replace(_DEFAULT, stages=(*_DEFAULT.stages[:3], replace(_DEFAULT.stages[3], steps=1750), *later))


def _pointer_stage(weight: float) -> Stage:
    return replace(_DEFAULT.stages[3], name="language-pointer", steps=38250, pointer_weight=weight)


_WIDE_LM = ModelShape(text_hidden=256, text_intermediate=768, text_layers=6, text_heads=4)


RECIPES: dict[str, Recipe] = {
    "default": _DEFAULT,
    # Measured alternatives: answer loss only; the same plus the relevance pointer; image words
    # without the box words.
    "answer-only": _ANSWER_ONLY,
    "pointer": replace(_ANSWER_ONLY, pointer_weight=1.0),
    "words-colour-shape": replace(_ANSWER_ONLY, image_word_weight=1.0),
    # Language-stage experiments, each a 20-minute run from the same trained tower
    # (--init-tower-from runs/tower-snapshot.pt), compared with "default" at equal language steps.
    # Baseline ("default", runs/train-default) at language steps 500 / 1000 / 1500: colour .48/.42/.36,
    # shape .64/.54/.60, existence .58/.50/.54, counting .28/.18/.22, localization .16/.10/.16.
    # Twice the language learning rate (4e-3, then 2e-3 in language-all). Measured (runs/exp-lr-4e-3,
    # 740 language steps): worse; colour .28 and image_gap .14 at step 500 (default .48, .25), and the
    # training loss stalls near 1.05 from step 400 on while the default's falls to 0.87 (same batches).
    "lr-4e-3": replace(_DEFAULT, stages=_language_lr(_DEFAULT.stages, 2.0)),
    # Binding curriculum (stage options tasks and objects). Measured (runs/exp-binding-first, 1614
    # language steps, 1.2-1.4 s/step): colour .54/.84/.86 at steps 500/750/1000 (default .48/.42/.42)
    # and still .74 at 1500, 500 steps into the all-task stage (default .36); shape .60/.68/.50,
    # existence .50/.54/.52 (chance: P(yes) 0.5 whether or not the object is there), so existence
    # is not sped up; after the switch counting .06-.16 (answers "0"/"1") and localization .04-.06,
    # below the default's .22/.16 at 1500 since those tasks started 1000 steps later.
    "binding-first": _BINDING_FIRST,
    # The binding curriculum with the wider language model below. Measured (runs/exp-binding-first-wide,
    # 364 language steps in 20 min): 2.5x slower per step (3.1 s vs 1.25 s) and no better per step:
    # training loss 0.836 / 0.806 over steps 201-300 / 301-400 vs 0.802 / 0.770 for "binding-first"
    # on the same batches; colour .52 vs .42 at step 250 (within the probes' noise).
    "binding-first-wide": replace(_BINDING_FIRST, model=_WIDE_LM),
    # A wider language model (hidden 256, MLP 768, 6 layers, 4 heads); the tower's shape is unchanged,
    # so --init-tower-from loads the same trained tower. Not run on its own (see "binding-first-wide").
    "wide-lm": replace(_DEFAULT, model=_WIDE_LM),
    # Hard tasks: the default's run carried on (--branch-from runs/train-default at step 9250, when colour
    # and shape probes were at 1.0) with only localization, counting, existence and spatial questions.
    # Measured (runs/exp-hard-tasks, 250 steps, stopped): colour fell to .80 (forgotten without its
    # questions), existence .64 (default .60 at 9500), localization .36 (default .36).
    "hard-tasks": _after_9250(Stage("language-hard", 38250, "language", lr=1e-3, follow_ups=5,
                                    tasks=("localization", "counting", "existence", "spatial"))),
    # Annealing: the default's run carried on (--branch-from runs/train-default at step 9250) with a
    # cosine fall of the learning rate from 1e-3 to 1e-5 over 2000 steps, all tasks. Measured
    # (runs/exp-anneal, stopped at step 10750, lr down to 1.5e-4; validation, 300 per task): counting
    # .55 (.49 at 9250, .46 for the default at 10000), existence .61, localization .35 (both unchanged).
    "anneal": _after_9250(replace(_DEFAULT.stages[3], name="language-anneal", steps=2000, final_lr=1e-5)),
    # Late pointer: the default's run carried on (--branch-from runs/train-default at step 9250) with the
    # relevance pointer (weight 1, layer 3) added, to teach selecting the object that matches colour AND
    # shape: at step 9250, 87 of 150 validation localization answers were the box of another object of
    # the same colour or the same shape, 4 the box of a same-colour same-shape object elsewhere (the
    # expression's qualifiers were not the problem), 46 right. Measured (runs/exp-pointer-late;
    # validation, 300 per task): existence .76 at step 10500 and .96 at 11000 vs .63 at 9250 and .62
    # for the default at 10000; localization .34 / .33 and counting .46 / .53 about unchanged; at 11750
    # localization .34, counting .59, existence .96. The shipped interim model is its step 11000.
    "pointer-late": _after_9250(_pointer_stage(1.0)),
    # The same with the pointer's weight at 3 (runs/exp-pointer-late-3: stopped after 400 steps for the
    # next one, not measured).
    "pointer-late-3": _after_9250(_pointer_stage(3.0)),
    # Pointer at every answer token: "pointer-late" carried on (--branch-from its checkpoint at step
    # 11100, existence .96 but localization .33 on validation) with the pointer read at every token of
    # the first answer, since a box's four numbers are each read off the object; at 11000, 79 of 150
    # localization answers were still the box of an object of the same colour or shape (52 right).
    # Measured (runs/exp-pointer-answer; validation, 300 per task) at step 12000: localization .32,
    # counting .62, existence .99: no gain on localization in 900 steps. The pointer only sees the
    # first question of each conversation (relevance of the main question), so localization, one task
    # in seven, gets little of it; follow-up questions carry no relevance yet.
    "pointer-answer": _after_9250(replace(_pointer_stage(1.0), steps=1850),
                                  replace(_pointer_stage(1.0), name="language-pointer-answer", steps=36400,
                                          pointer_tokens="answer")),
    # Localization and counting as the main question: "pointer-answer" carried on (--branch-from its
    # checkpoint at step 12100) with the main question (the one the pointer reads) always localization
    # or counting, the five follow-ups still of every task. Prior questions are never follow-ups, so
    # they were no longer asked: from step 12700 they are main questions again. Measured (validation,
    # 300 per task) at step 12500: localization .46 (pointer-answer .32 at 12000), counting .64,
    # existence .96, prior .87 (1.00 before: forgotten in 400 steps). At step 13000 (test split, 300 per
    # task): localization .697, colour .997, shape .993, counting .737, existence .990, spatial .493,
    # prior 1.000: every bar of the embedded model met; data/embedded-model is this step.
    "pointer-main-loc": _after_9250(replace(_pointer_stage(1.0), steps=1850),
                                    replace(_pointer_stage(1.0), name="language-pointer-answer", steps=1000,
                                            pointer_tokens="answer"),
                                    replace(_pointer_stage(1.0), name="language-pointer-localization", steps=600,
                                            pointer_tokens="answer", main_tasks=("localization", "counting")),
                                    replace(_pointer_stage(1.0), name="language-pointer-localization-prior", steps=34800,
                                            pointer_tokens="answer", main_tasks=("localization", "counting", "prior"))),
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
