"""The on-disk form of a suite: DIR/<name>.jsonl (one JSON object per sample) plus PNG images in
DIR/images/. PNG is lossless, so reading back gives samples equal to those written.

A line holds: sample_id, split, task, template, clutter, image (file name relative to DIR), question,
answer, objects ([{shape, colour, box}]), targets, relevance (one '0'/'1' string per patch row, top
row first), box and box_normalised (null unless the answer depends on exactly one object),
image_size, patch_size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .drawing import SceneObject
from .grid import mask_to_rows, rows_to_mask
from .suite import Sample

IMAGE_DIR = "images"


def sample_to_record(sample: Sample) -> dict:
    """A sample's JSON line (without the image pixels, which live in the PNG)."""
    return {
        "sample_id": sample.sample_id,
        "split": sample.split,
        "task": sample.task,
        "template": sample.template,
        "clutter": sample.clutter,
        "image": f"{IMAGE_DIR}/{sample.sample_id}.png",
        "question": sample.question,
        "answer": sample.answer,
        "objects": [o.to_dict() for o in sample.objects],
        "targets": list(sample.targets),
        "relevance": mask_to_rows(sample.relevance),
        "box": None if sample.box is None else list(sample.box),
        "box_normalised": None if sample.box_normalised is None else list(sample.box_normalised),
        "image_size": sample.image_size,
        "patch_size": sample.patch_size,
    }


def write_samples(samples: list[Sample], directory: str | Path, name: str) -> Path:
    """Write `samples` as DIR/<name>.jsonl plus their images; returns the JSONL path."""
    directory = Path(directory)
    (directory / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.jsonl"
    with path.open("w") as f:
        for sample in samples:
            record = sample_to_record(sample)
            sample.pil_image().save(directory / record["image"])
            f.write(json.dumps(record) + "\n")
    return path


def read_samples(path: str | Path) -> list[Sample]:
    """Read a JSONL file written by write_samples (images are resolved relative to its folder)."""
    path = Path(path)
    samples = []
    with path.open() as f:
        for line in f:
            record = json.loads(line)
            samples.append(
                Sample(
                    sample_id=record["sample_id"],
                    split=record["split"],
                    task=record["task"],
                    template=record["template"],
                    clutter=record["clutter"],
                    image=np.array(Image.open(path.parent / record["image"]).convert("RGB"), dtype=np.uint8),
                    question=record["question"],
                    answer=record["answer"],
                    objects=[SceneObject.from_dict(o) for o in record["objects"]],
                    targets=tuple(record["targets"]),
                    relevance=rows_to_mask(record["relevance"]),
                    box=None if record["box"] is None else tuple(record["box"]),
                    box_normalised=None if record["box_normalised"] is None else tuple(record["box_normalised"]),
                    image_size=record["image_size"],
                    patch_size=record["patch_size"],
                )
            )
    return samples
