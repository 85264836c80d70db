"""Scoring modes, the box frame, and the rule that scores each benchmark in each mode.

* ``official`` (the default): each benchmark's official script as LLaVA-1.5 runs it (``official.py``);
* ``lmms-eval``: lmms-eval 0.7.3's own task functions (``lmms.py``, the optional extra ``[lmms]``);
* ``lenient``: this toolkit's forgiving parsers (``metrics.METRICS``), never the default.

A sample's rule is found from its benchmark (``EvalSample.dataset``) or, for other data, its task.
The synthetic suite's own rules (exact match; boxes in integer bins) are the same in every mode, so
its scores do not depend on the mode. ``box_frame`` says what LLaVA-style decimal boxes are fractions
of: "padded" (LLaVA-1.5's image padded to a square) or "image"; None takes the prompt style's.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..validation import check_choice
from .lmms import LMMS_RULES, LMMS_EVAL_VERSION, require_lmms_eval
from .metrics import METRICS, Metric
from .official import OFFICIAL

__all__ = ["BENCHMARK_FAMILY", "BOX_FRAMES", "SCORING_MODES", "TASK_FAMILY", "Scoring", "benchmark_family", "frame_of"]

SCORING_MODES: tuple[str, ...] = ("official", "lmms-eval", "lenient")
BOX_FRAMES: tuple[str, ...] = ("padded", "image")

# Benchmark (datasets.BENCHMARKS key) -> the family whose rule scores it, and the task it must have.
BENCHMARK_FAMILY: dict[str, tuple[str, str]] = {
    "vqav2": ("vqav2", "vqa"), "textvqa": ("textvqa", "vqa"), "vizwiz": ("vizwiz", "vqa"),
    "gqa": ("gqa", "exact_match"), "pope": ("pope", "yes_no"), "mme": ("mme", "mme"),
    "scienceqa_img": ("scienceqa_img", "multiple_choice"), "ai2d": ("ai2d", "multiple_choice"),
    "refcoco": ("refcoco", "localization"), "refcoco+": ("refcoco", "localization"),
    "refcocog": ("refcoco", "localization"),
}
# Other data (JSONL, the synthetic suite): the family of the task.
TASK_FAMILY: dict[str, str] = {"vqa": "vqav2", "yes_no": "pope", "mme": "mme", "multiple_choice": "scienceqa_img",
                               "localization": "refcoco", "exact_match": "exact_match"}
# The synthetic suite's rules, the same in every mode (no official script or lmms-eval task has them).
_SUITE: dict[str, Metric] = {"exact_match": METRICS["exact_match"], "bins": METRICS["localization"]}
_LENIENT: dict[str, Metric] = {
    "vqav2": METRICS["vqa"], "textvqa": METRICS["vqa"], "vizwiz": METRICS["vqa"], "gqa": METRICS["exact_match"],
    "pope": METRICS["pope"], "mme": METRICS["mme"], "scienceqa_img": METRICS["multiple_choice"],
    "ai2d": METRICS["multiple_choice"], "refcoco": METRICS["localization"],
}
_RULES: dict[str, dict[str, Metric]] = {"official": OFFICIAL, "lmms-eval": LMMS_RULES, "lenient": _LENIENT}


def benchmark_family(dataset: str | None, task: str, box_format: str | None = None) -> str:
    """The rule family of a sample: its benchmark's when the task fits, else its task's; boxes
    answered in bins (the embedded model) are "bins"."""
    if task == "localization" and box_format == "bins":
        return "bins"
    family, expected = BENCHMARK_FAMILY.get(str(dataset).lower(), (None, None))
    return family if expected == task else TASK_FAMILY[task]


@dataclass(frozen=True)
class Scoring:
    """A scoring mode and box frame, checked on creation (before any model work): an unknown value or
    lmms-eval missing is a ValueError naming the parameter and the allowed values or the install."""

    mode: str = "official"
    box_frame: str | None = None

    def __post_init__(self) -> None:
        check_choice("scoring", self.mode, SCORING_MODES)
        if self.box_frame is not None:
            check_choice("box_frame", self.box_frame, BOX_FRAMES)
        if self.mode == "lmms-eval":
            require_lmms_eval()
            if self.box_frame == "padded":
                raise ValueError(f"box_frame='padded' cannot be used with scoring='lmms-eval': lmms-eval "
                                 f"{LMMS_EVAL_VERSION} reads boxes as fractions of the image; allowed: 'image' or none")

    def box_format(self, style_format: str) -> str:
        """How boxes are read: bins stay bins; lmms-eval reads "image"; else this frame or the style's."""
        if style_format == "bins":
            return "bins"
        if self.mode == "lmms-eval":
            return "image"
        return self.box_frame or style_format

    def rule(self, family: str) -> Metric:
        """The metric of a family (``benchmark_family``) in this mode."""
        return _SUITE[family] if family in _SUITE else _RULES[self.mode][family]


def frame_of(box_format: str) -> str:
    """The box frame recorded for a box format: "image" for fractions of the image and for bins (fractions too),
    else the format ("padded", "resized_pixels", "thousandths")."""
    return "image" if box_format in ("image", "bins") else box_format
