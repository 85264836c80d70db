"""Samples and deterministic splits of the synthetic scene suite."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .attributes import SPLITS, TASKS
from .boxes import Box, normalise_box
from .config import SceneConfig
from .drawing import SceneObject, object_mask, render_scene
from .grid import patch_mask
from .tasks import BUILDERS

# Default number of samples per task in the fixed evaluation splits (train is an endless stream).
DEFAULT_PER_TASK: dict[str, int] = {"validation": 100, "test": 300}
_MAX_DRAWS = 1000

assert tuple(BUILDERS) == TASKS


@dataclass(eq=False)
class Sample:
    """One question about one image, with exact ground truth.

    image: uint8 (H, W, 3); relevance: boolean (rows, cols) over the patch grid, True where a patch
    overlaps an object the answer depends on (`targets`, indices into `objects` in the order the
    question mentions them); box / box_normalised:
    the target's box (x1, y1, x2, y2; pixels with x2, y2 exclusive, and divided by the image size)
    when the answer depends on exactly one object, else None.
    """

    sample_id: str
    split: str
    task: str
    template: str
    clutter: str
    image: np.ndarray
    question: str
    answer: str
    objects: list[SceneObject]
    targets: tuple[int, ...]
    relevance: np.ndarray
    box: tuple[int, int, int, int] | None
    box_normalised: Box | None
    image_size: int
    patch_size: int

    def pil_image(self) -> Image.Image:
        return Image.fromarray(self.image)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        arrays = ("image", "relevance")
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in arrays) and all(
            getattr(self, k) == getattr(other, k) for k in self.__dataclass_fields__ if k not in arrays
        )


def check_choice(name: str, value, allowed) -> None:
    """Raise ValueError naming the parameter and its allowed values unless value is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def sample_rng(seed: int, split: str, task: str, index: int) -> np.random.Generator:
    """The generator of one sample: independent of every other sample, so splits (and tasks) drawn
    from different keys never share a stream, and a split's first N samples do not depend on its size."""
    key = (zlib.crc32(split.encode()), zlib.crc32(task.encode()), index)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def generate_sample(split: str, task: str, index: int, config: SceneConfig = SceneConfig(), seed: int = 0) -> Sample:
    """The `index`-th sample of `task` in `split`; a pure function of its arguments."""
    check_choice("split", split, SPLITS)
    check_choice("task", task, TASKS)
    rng = sample_rng(seed, split, task, index)
    levels = list(config.clutter)
    for _ in range(_MAX_DRAWS):
        clutter = levels[int(rng.integers(len(levels)))]
        low, high = config.clutter[clutter]
        draft = BUILDERS[task](rng, config, int(rng.integers(low, high + 1)), index)
        if draft is not None:
            break
    else:
        raise RuntimeError(f"could not lay out a {task} scene in {_MAX_DRAWS} draws; objects too large for the image?")
    pixels = np.zeros((config.image_size, config.image_size), dtype=bool)
    for t in draft.targets:
        pixels |= object_mask(draft.objects[t], config.image_size)
    box = draft.objects[draft.targets[0]].box if len(draft.targets) == 1 else None
    return Sample(
        sample_id=f"{split}-{task}-{index:06d}",
        split=split,
        task=task,
        template=draft.template,
        clutter=clutter,
        image=render_scene(draft.objects, config.image_size),
        question=draft.question,
        answer=draft.answer,
        objects=draft.objects,
        targets=draft.targets,
        relevance=patch_mask(pixels, config.patch_size),
        box=box,
        box_normalised=None if box is None else normalise_box(box, config.image_size),
        image_size=config.image_size,
        patch_size=config.patch_size,
    )


def generate_split(
    split: str,
    per_task: int | None = None,
    tasks: tuple[str, ...] = TASKS,
    config: SceneConfig = SceneConfig(),
    seed: int = 0,
) -> list[Sample]:
    """`per_task` samples of each task (default DEFAULT_PER_TASK[split]), task by task."""
    check_choice("split", split, SPLITS)
    for task in tasks:
        check_choice("task", task, TASKS)
    if per_task is None:
        if split not in DEFAULT_PER_TASK:
            raise ValueError(f"per_task must be given for split {split!r} (defaults exist for {tuple(DEFAULT_PER_TASK)})")
        per_task = DEFAULT_PER_TASK[split]
    if not isinstance(per_task, int) or per_task <= 0:
        raise ValueError(f"per_task must be a positive integer, got {per_task!r}")
    return [generate_sample(split, task, i, config, seed) for task in tasks for i in range(per_task)]
