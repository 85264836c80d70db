"""Scoring a model on the scene suite by greedy generation."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from ..scenes import Sample, accuracy_by_task, generate_split
from ..scenes.attributes import SPLITS
from ..validation import check_choice, check_int
from .model import SCENE_CONFIG_FILE, load_pretrained
from .prompts import prompt

MAX_NEW_TOKENS = 12  # a box answer is 9 tokens plus the end-of-turn token


@torch.no_grad()
def generate_answers(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, samples: list[Sample], batch_size: int = 64
) -> list[str]:
    """Greedy single-turn answers (left-padded batches), special tokens removed."""
    tokenizer = processor.tokenizer
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            inputs = processor(
                images=[s.pil_image() for s in chunk], text=[prompt(s.question) for s in chunk],
                padding=True, return_tensors="pt",
            )
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers


def evaluate_model(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, samples: list[Sample], box_bins: int
) -> dict[str, float]:
    """Accuracy per task: localization at IoU >= 0.5 (RefCOCO's rule), exact answers elsewhere."""
    return accuracy_by_task(samples, generate_answers(model, processor, samples), box_bins)


def evaluate_checkpoint(directory: str | Path, split: str = "test", per_task: int | None = None, seed: int = 0) -> dict[str, float]:
    """Score a directory written by save_pretrained on a split of its own scene suite (the split, the count
    and the folder are checked before the model loads)."""
    check_choice("split", split, SPLITS)
    if per_task is not None:
        check_int("per_task", per_task, minimum=1)
    if not (Path(directory) / SCENE_CONFIG_FILE).is_file():
        raise ValueError(f"model={str(directory)!r}: not a checkpoint folder of this repository's embedded model "
                         f"(no {SCENE_CONFIG_FILE}); give a folder written by training, e.g. data/embedded-model")
    model, processor, scene = load_pretrained(directory)
    return evaluate_model(model, processor, generate_split(split, per_task, config=scene, seed=seed), scene.box_bins)
