"""Scoring a predicted answer against a sample, as the benchmarks the tasks imitate do."""

from __future__ import annotations

from collections import defaultdict

from .boxes import box_iou, parse_box
from .suite import Sample

IOU_THRESHOLD = 0.5  # RefCOCO's accuracy@0.5


def normalise_answer(text: str) -> str:
    """Lower case, no spaces and no final full stop: word-level decoding adds spaces ("[ 3 , 4 ...")."""
    return "".join(text.lower().split()).rstrip(".")


def is_correct(sample: Sample, prediction: str, box_bins: int) -> bool:
    """Localization: the predicted box has IoU >= 0.5 with the drawn target box; every other task:
    exact match after normalise_answer."""
    if sample.task == "localization":
        predicted = parse_box(prediction, sample.image_size, box_bins)
        return predicted is not None and box_iou(predicted, sample.box) >= IOU_THRESHOLD
    return normalise_answer(prediction) == normalise_answer(sample.answer)


def accuracy_by_task(samples: list[Sample], predictions: list[str], box_bins: int) -> dict[str, float]:
    """Fraction of correct predictions per task."""
    if len(samples) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(samples)} samples")
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, prediction in zip(samples, predictions):
        hits[sample.task].append(is_correct(sample, prediction, box_bins))
    return {task: sum(v) / len(v) for task, v in hits.items()}


def constant_answer_baseline(samples: list[Sample], box_bins: int) -> dict[str, float]:
    """Per task, the accuracy of always giving that task's most frequent answer: the bar a model must
    beat to show it reads the image (for localization, the most frequent box)."""
    by_task: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_task[sample.task].append(sample)
    scores = {}
    for task, group in by_task.items():
        answers = [s.answer for s in group]
        best = max(set(answers), key=answers.count)
        scores[task] = sum(is_correct(s, best, box_bins) for s in group) / len(group)
    return scores
