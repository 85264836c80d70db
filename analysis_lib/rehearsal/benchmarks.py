"""Tiny copies of the lmms-eval benchmarks in their hub layouts: the columns, Arrow types, image structs, config
folders and split files of the lmms-lab datasets (``datasets--lmms-lab--<name>`` in a hub cache), a few rows
each, with generated pictures. The layouts are written down here, apart from the loaders' registry
(``evaluation.datasets.BENCHMARKS``), and read exactly as a download is read, so a column, type, config or
split the registry gets wrong fails here as it would on a GPU machine.

Each table carries the benchmark's other columns too (COCO file names, GQA's full answers, ScienceQA's
lecture, ...): the loaders must pick their columns out of the real, wider tables.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..evaluation.datasets import BENCHMARKS
from ..evaluation.layouts import hub_snapshot, image_column

#: (width, height) of the pictures, cycled: COCO-like landscape and portrait, and a square one
SIZES = ((640, 480), (480, 640), (500, 500))
ROWS = 3


def picture(index: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """A generated RGB picture (SIZES[index % 3]): a gradient with a few coloured rectangles, the first at
    ``box`` ([x, y, w, h] in pixels) when given."""
    width, height = SIZES[index % len(SIZES)]
    rng = np.random.default_rng(index)
    ys, xs = np.mgrid[0:height, 0:width]
    array = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 40 * index % 255)], -1)
    boxes = [box] if box else []
    for _ in range(3):
        w, h = rng.integers(width // 8, width // 3), rng.integers(height // 8, height // 3)
        boxes.append((rng.integers(0, width - w), rng.integers(0, height - h), w, h))
    for x, y, w, h in boxes:
        array[int(y):int(y + h), int(x):int(x + w)] = rng.integers(0, 256, 3)
    return array.astype(np.uint8)


def _images(count: int, boxes: list | None = None, image_format: str = "JPEG") -> pa.Array:
    return image_column([picture(i, boxes[i] if boxes else None) for i in range(count)], image_format)


def _refcoco() -> pa.Table:
    boxes = [[64.0, 48.0, 256.0, 192.0], [240.0, 320.0, 160.0, 200.0], [0.0, 250.0, 500.0, 250.0]]
    expressions = [["the red box on the left", "top left block"], ["lower right one", "block at the bottom"],
                   ["the wide strip at the bottom", "bottom half"]]
    return pa.table({
        "question_id": [str(1000 + i) for i in range(ROWS)],
        "image": _images(ROWS, boxes),
        "question": ["Please carefully observe the area circled in the image and come up with a caption for the "
                     "area."] * ROWS,
        "answer": expressions,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h] for x, y, w, h in boxes],
        "bbox": boxes,
        "iscrowd": pa.array([0] * ROWS, pa.int8()),
        "file_name": [f"COCO_train2014_{i:012d}.jpg" for i in range(ROWS)],
    })


def _pope() -> pa.Table:
    categories = ["adversarial", "popular", "random"]
    return pa.table({
        "id": [str(i) for i in range(ROWS)],
        "question_id": [str(i + 1) for i in range(ROWS)],
        "question": ["Is there a dog in the image?", "Is there a car in the image?", "Is there a chair in the image?"],
        "answer": ["yes", "no", "no"],
        "image_source": [f"COCO_val2014_{i:012d}" for i in range(ROWS)],
        "image": _images(ROWS),
        "category": categories,
    })


def _textvqa() -> pa.Table:
    answers = [["sony"] * 7 + ["sony tv"] * 3, ["12"] * 10, ["stop"] * 9 + ["stop sign"]]
    return pa.table({
        "image_id": [f"{i:016x}" for i in range(ROWS)],
        "question_id": pa.array([34602 + i for i in range(ROWS)], pa.int32()),
        "question": ["what brand is the television?", "what number is on the shirt?", "what does the sign say?"],
        "question_tokens": [["what", "brand"], ["what", "number"], ["what", "does"]],
        "image": _images(ROWS),
        "image_width": pa.array([SIZES[i % 3][0] for i in range(ROWS)], pa.int32()),
        "image_height": pa.array([SIZES[i % 3][1] for i in range(ROWS)], pa.int32()),
        "flickr_original_url": [f"https://farm.example/{i}.jpg" for i in range(ROWS)],
        "flickr_300k_url": [f"https://farm.example/{i}_z.jpg" for i in range(ROWS)],
        "answers": answers,
        "image_classes": [["Television"], ["Person"], ["Street sign"]],
        "set_name": ["val"] * ROWS,
        "ocr_tokens": [["sony", "bravia"], ["12", "jones"], ["stop", "all", "way"]],
    })


def _gqa() -> dict[str, pa.Table]:
    questions = pa.table({
        "id": [f"2013{i}" for i in range(ROWS)],
        "imageId": ["n161313", "n235859", "n161313"],
        "question": ["Is the sky blue or white?", "What is the man holding?", "Which side is the car on?"],
        "answer": ["blue", "umbrella", "left"],
        "fullAnswer": ["The sky is blue.", "The man is holding an umbrella.", "The car is on the left."],
        "isBalanced": [True] * ROWS,
        "semanticStr": ["select: sky ->choose color: blue|white", "select: man ->relate: holding",
                        "select: car ->choose hposition"],
    })
    images = pa.table({"id": ["n161313", "n235859"], "image": _images(2)})
    return {"testdev_balanced_instructions": questions, "testdev_balanced_images": images}


def _vqav2() -> pa.Table:
    def answers(*words: str) -> list[dict]:
        return [{"answer": w, "answer_confidence": "yes", "answer_id": k + 1} for k, w in enumerate(words)]

    return pa.table({
        "question_type": ["what color is the", "how many", "is this"],
        "multiple_choice_answer": ["red", "2", "yes"],
        "answers": [answers(*["red"] * 8, "dark red", "maroon"), answers(*["2"] * 9, "two"), answers(*["yes"] * 10)],
        "image_id": pa.array([262148 + i for i in range(ROWS)], pa.int64()),
        "answer_type": ["other", "number", "yes/no"],
        "question_id": pa.array([262148000 + i for i in range(ROWS)], pa.int64()),
        "question": ["What color is the bus?", "How many people are there?", "Is this a kitchen?"],
        "image": _images(ROWS),
    })


def _vizwiz() -> pa.Table:
    return pa.table({
        "question_id": [f"VizWiz_val_{i:08d}.jpg" for i in range(ROWS)],
        "image": _images(ROWS),
        "question": ["What is this?", "What color is this shirt?", "Can you tell me what this says?"],
        "answers": [["soup can"] * 6 + ["can"] * 4, ["blue"] * 10, ["unanswerable"] * 10],
        "category": ["other", "other", "unanswerable"],
    })


def _scienceqa() -> pa.Table:
    return pa.table({
        "image": _images(ROWS, image_format="PNG"),
        "question": ["Which of these states is farthest north?", "Which animal's feet are also adapted for "
                     "swimming?", "Which material is this spatula made of?"],
        "choices": [["Maine", "Florida", "Texas", "Arizona"], ["duck", "cat"], ["rubber", "wood", "glass"]],
        "answer": pa.array([0, 0, 1], pa.int8()),
        "hint": ["", "Ducks live near water.", "Select the best answer."],
        "task": ["closed choice"] * ROWS,
        "grade": ["grade2", "grade3", "grade4"],
        "subject": ["social science", "natural science", "natural science"],
        "topic": ["geography", "biology", "physics"],
        "category": ["Geography", "Adaptations", "Materials"],
        "skill": ["Read a map", "Animal adaptations", "Identify materials"],
        "lecture": ["Maps show places.", "Feet are adapted.", "Objects are made of materials."],
        "solution": ["Maine is farthest north.", "Ducks have webbed feet.", "The spatula is wood."],
    })


def _ai2d() -> pa.Table:
    return pa.table({
        "question": ["Which stage comes after the egg?", "What does the arrow point to?",
                     "How many legs does the insect have?"],
        "options": [["larva", "adult", "pupa", "egg"], ["sun", "leaf", "root", "water"], ["4", "6", "8", "10"]],
        "answer": ["0", "1", "1"],
        "image": _images(ROWS, image_format="PNG"),
    })


def _mme() -> pa.Table:
    return pa.table({  # MME asks two questions of every image (one answered Yes, one No)
        "question_id": ["code_reasoning/0020.png", "code_reasoning/0020.png", "color/000000008277.jpg"],
        "image": image_column([picture(0), picture(0), picture(1)], "PNG"),
        "question": ["Is the output of the code 'Hello'? Please answer yes or no.",
                     "Is the output of the code 'World'? Please answer yes or no.",
                     "Is there a white plate in the image? Please answer yes or no."],
        "answer": ["Yes", "No", "Yes"],
        "category": ["code_reasoning", "code_reasoning", "color"],
    })


#: benchmark -> (table maker, hub repo, {config folder: splits}) as the lmms-lab datasets hold them; a maker
#: returning {config: table} gives each config its own table (GQA's questions and images), else every config
#: and split holds the same rows
FIXTURES: dict[str, tuple[Callable[[], pa.Table | dict[str, pa.Table]], str, dict[str, tuple[str, ...]]]] = {
    "refcoco": (_refcoco, "lmms-lab/RefCOCO", {"data": ("val", "test", "testA", "testB")}),
    "refcoco+": (_refcoco, "lmms-lab/RefCOCOplus", {"data": ("val", "testA", "testB")}),
    "refcocog": (_refcoco, "lmms-lab/RefCOCOg", {"data": ("val", "test")}),
    "pope": (_pope, "lmms-lab/POPE", {"data": ("test",), "Full": ("adversarial", "popular", "random")}),
    "textvqa": (_textvqa, "lmms-lab/textvqa", {"data": ("train", "validation", "test")}),
    "gqa": (_gqa, "lmms-lab/GQA", {"testdev_balanced_instructions": ("testdev",),
                                   "testdev_balanced_images": ("testdev",)}),
    "vqav2": (_vqav2, "lmms-lab/VQAv2", {"data": ("validation", "testdev", "test")}),
    "vizwiz": (_vizwiz, "lmms-lab/VizWiz-VQA", {"data": ("val", "test")}),
    "scienceqa_img": (_scienceqa, "lmms-lab/ScienceQA", {"ScienceQA-IMG": ("train", "validation", "test"),
                                                        "ScienceQA-FULL": ("train", "validation", "test")}),
    "ai2d": (_ai2d, "lmms-lab/ai2d", {"data": ("test",)}),
    "mme": (_mme, "lmms-lab/MME", {"data": ("test",)}),
}


def write_benchmarks(cache: str | Path) -> list[Path]:
    """Every benchmark of the registry written into the hub cache folder ``cache`` (one shard per split:
    ``<config>/<split>-00000-of-00001.parquet``); returns the repo folders."""
    if set(FIXTURES) != set(BENCHMARKS):
        raise RuntimeError(f"fixtures for {sorted(FIXTURES)} but the registry has {sorted(BENCHMARKS)}")
    folders = []
    for make, repo, configs in FIXTURES.values():
        made = make()
        files = {f"{config}/{split}-00000-of-00001.parquet": made[config] if isinstance(made, dict) else made
                 for config, splits in configs.items() for split in splits}
        folders.append(hub_snapshot(cache, repo, files)[0])
    return folders
