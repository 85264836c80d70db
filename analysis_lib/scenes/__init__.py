"""Synthetic scene suite: LLaVA-style questions about coloured shapes with exact ground truth
(answers, target boxes, and which visual tokens of a patch grid the answer depends on)."""

from .attributes import COLOURS, RELATIONS, SHAPES, SPLITS, TASKS
from .boxes import box_iou, format_box, parse_box, quantise_box
from .config import SceneConfig
from .drawing import SceneObject, object_mask, render_scene
from .grid import patch_mask
from .referring import ReferringExpression
from .scoring import accuracy_by_task, constant_answer_baseline, is_correct
from .storage import read_samples, write_samples
from .suite import DEFAULT_PER_TASK, Sample, generate_sample, generate_split

__all__ = [
    "COLOURS", "RELATIONS", "SHAPES", "SPLITS", "TASKS", "box_iou", "format_box", "parse_box", "quantise_box",
    "SceneConfig", "SceneObject", "object_mask", "render_scene", "patch_mask", "ReferringExpression",
    "accuracy_by_task", "constant_answer_baseline", "is_correct", "read_samples", "write_samples", "DEFAULT_PER_TASK", "Sample",
    "generate_sample", "generate_split",
]
