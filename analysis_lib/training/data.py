"""Training batches: token ids with answer-only labels for LLaVA conversations, pixel values, and
dense per-patch targets for the vision tower."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import LlavaProcessor

from ..scenes import COLOURS, SHAPES, TASKS, Sample, SceneConfig, generate_sample, object_mask, quantise_box
from ..scenes.tasks import FOLLOW_UP_TASKS, follow_up_questions
from .prompts import answer, follow_up, prompt

IGNORE = -100
# Per-patch classes: 0 is the background, then the suite's colours / shapes in their fixed order.
COLOUR_CLASSES = ("background", *COLOURS)
SHAPE_CLASSES = ("background", *SHAPES)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    patch_colour: torch.Tensor  # (B, N) class ids
    patch_shape: torch.Tensor  # (B, N) class ids
    patch_box: torch.Tensor  # (B, N, 4) box bins of the patch's object, IGNORE on the background
    patch_centre: torch.Tensor  # (B, N) 1.0 where the patch holds its object's centre
    relevance: torch.Tensor  # (B, N) the first question's ground-truth relevant patches

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "pixel_values": self.pixel_values, "labels": self.labels}


def conversation_ids(tokenizer, turns: list[tuple[str, str]], image_tokens: int) -> tuple[list[int], list[int]]:
    """Token ids of a conversation about one image and labels that keep only the answer tokens
    (answer words and the end-of-turn token). The first turn holds the image placeholder, expanded to
    `image_tokens` tokens as LlavaProcessor does."""
    image_text = tokenizer.image_token * image_tokens
    ids: list[int] = [tokenizer.bos_token_id]
    labels: list[int] = [IGNORE]
    for turn, (question, reply) in enumerate(turns):
        text = prompt(question) if turn == 0 else follow_up(question)
        question_ids = tokenizer(text.replace(tokenizer.image_token, image_text), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer(reply), add_special_tokens=False)["input_ids"]
        ids += question_ids + answer_ids
        labels += [IGNORE] * len(question_ids) + answer_ids
    return ids, labels


def patch_targets(sample: Sample, config: SceneConfig) -> tuple[np.ndarray, ...]:
    """Per patch (raster order): colour class, shape class, box bins of the object covering most of
    the patch's pixels, and whether the patch holds that object's centre."""
    n = config.grid**2
    colour = np.zeros(n, dtype=np.int64)
    shape = np.zeros(n, dtype=np.int64)
    box = np.full((n, 4), IGNORE, dtype=np.int64)
    centre = np.zeros(n, dtype=np.float32)
    if sample.objects:
        p, g = config.patch_size, config.grid
        coverage = np.stack([object_mask(o, config.image_size) for o in sample.objects])
        coverage = coverage.reshape(len(sample.objects), g, p, g, p).sum(axis=(2, 4)).reshape(len(sample.objects), n)
        owner = coverage.argmax(axis=0)
        covered = coverage.max(axis=0) > 0
        for k, obj in enumerate(sample.objects):
            mine = covered & (owner == k)
            colour[mine] = COLOUR_CLASSES.index(obj.colour)
            shape[mine] = SHAPE_CLASSES.index(obj.shape)
            box[mine] = quantise_box(obj.box, config.image_size, config.box_bins)
            cx, cy = obj.centre
            centre[int(cy) // p * g + int(cx) // p] = 1.0
    return colour, shape, box, centre


def training_samples(step: int, batch_size: int, config: SceneConfig, seed: int,
                     tasks: tuple[str, ...] | None = None) -> list[Sample]:
    """The main samples of a step: tasks (all of the suite's when None) in rotation over the endless
    train split, so a step's batch is a pure function of its arguments and resuming reproduces it."""
    tasks = TASKS if tasks is None else tasks
    first = step * batch_size
    return [generate_sample("train", tasks[k % len(tasks)], k // len(tasks), config, seed)
            for k in range(first, first + batch_size)]


def task_follow_ups(rng: np.random.Generator, objects, config: SceneConfig, count: int,
                    tasks: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """scenes.tasks.follow_up_questions of the follow-up tasks among `tasks` (all of them when None)."""
    allowed = FOLLOW_UP_TASKS if tasks is None else tuple(t for t in FOLLOW_UP_TASKS if t in tasks)
    return follow_up_questions(rng, objects, config, count, allowed)


def collate(processor: LlavaProcessor, samples: list[Sample], turns: list[list[tuple[str, str]]], config: SceneConfig) -> Batch:
    """Right-padded batch of conversations (one per sample) with pixel values and patch targets."""
    encoded = [conversation_ids(processor.tokenizer, t, config.grid**2) for t in turns]
    length = max(len(ids) for ids, _ in encoded)
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    pixel_values = processor.image_processor([s.pil_image() for s in samples], return_tensors="pt")["pixel_values"]
    colour, shape, box, centre = (torch.from_numpy(np.stack(t)) for t in zip(*(patch_targets(s, config) for s in samples)))
    relevance = torch.from_numpy(np.stack([s.relevance.reshape(-1) for s in samples]))
    return Batch(input_ids, attention_mask, labels, pixel_values, colour, shape, box, centre, relevance)


def training_batch(processor: LlavaProcessor, step: int, batch_size: int, config: SceneConfig, follow_ups: int, seed: int,
                   tasks: tuple[str, ...] | None = None, main_tasks: tuple[str, ...] | None = None) -> Batch:
    """Batch of `step`: each main sample's question (of `main_tasks`; None: of `tasks`), then
    `follow_ups` more questions on its image, of `tasks` (None: every task)."""
    samples = training_samples(step, batch_size, config, seed, tasks if main_tasks is None else main_tasks)
    turns = []
    for row, sample in enumerate(samples):
        rng = np.random.default_rng([seed, step, row])
        turns.append([(sample.question, sample.answer)] + task_follow_ups(rng, sample.objects, config, follow_ups, tasks))
    return collate(processor, samples, turns, config)
