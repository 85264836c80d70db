"""Evaluation samples, and loaders for the forms benchmarks come in; everything works offline.

Every loader returns ``list[EvalSample]`` in a fixed order; ``limit=N`` keeps the first N samples.
``load_dataset(spec)`` is the one entry point:

    load_dataset("synthetic")                    # the scene suite's test split, generated in memory
    load_dataset("synthetic:validation", per_task=20)
    load_dataset("pope")                         # a registry name: lmms-lab/POPE from the HF hub cache
    load_dataset("pope:test", limit=100)         # name:split
    load_dataset("data/my_bench.jsonl")          # the JSONL + image folder format below
    load_dataset("data/pope_test")               # a folder written by datasets' save_to_disk
    load_dataset("data/copies/datasets--lmms-lab--POPE")   # a copied hub-cache folder (or one snapshot)
    load_dataset("data/refcoco_val.parquet", benchmark="refcoco")
    load_dataset("data/scenes")                  # a folder written by ``python -m analysis_lib.scenes``

Sources
-------
1. The synthetic scene suite (``load_synthetic``): scene task ``localization`` becomes eval task
   "localization" (``box`` = the target box normalised to the image, ``answers`` = the suite's
   box answer in bins, e.g. "[3, 10, 9, 16]"); colour, shape, counting, existence, spatial and
   prior become "exact_match". ``group`` is the scene task, ``relevance`` the ground-truth mask of
   relevant patches. ``box`` is also set for other tasks whose answer depends on exactly one object.

2. JSONL + image folder (``load_jsonl``), a format any benchmark can be converted to. One JSON
   object per line (blank lines are skipped; line numbers in errors count every line)::

       {"id": "pope-1", "image": "images/0001.jpg", "question": "Is there a dog?", "answers": ["yes"], "task": "yes_no"}

   Required keys:
     ``id``        unique sample id (string or integer)
     ``image``     image file, relative to the JSONL file's folder (or absolute)
     ``question``  the raw question / referring expression, without any prompt template
     ``answers``   reference answers: a list of strings, or one string
     ``task``      one of TASKS: "localization", "vqa", "yes_no", "multiple_choice", "mme",
                   "exact_match"
   Optional keys:
     ``options``   list of strings, the choices in order (letters A, B, ...); required for
                   "multiple_choice", whose ``answers`` should then hold the correct letter
     ``box``       [x1, y1, x2, y2] normalised to the image (0..1); required for "localization"
     ``group``     aggregation group (e.g. POPE category, MME subtask)
     ``pair_id``   MME: the id shared by the two questions about one image
     ``dataset``   dataset name (default: the JSONL file's name without ``.jsonl``)
   Other keys are ignored. TallyQA and VSR have no lmms-lab copy: convert them to this format
   (TallyQA: task "exact_match", the count as a string, e.g. ``"answers": ["3"]``, ``group``
   "simple"/"complex"; VSR: task "yes_no", label 1/0 as "yes"/"no", ``group`` the relation).

3. Local copies of the lmms-eval Hugging Face datasets (``load_benchmark``), see ``BENCHMARKS``,
   read with pyarrow (the ``datasets`` package is not needed) in any of these forms:
     * a folder written by ``datasets.Dataset.save_to_disk`` (``state.json``, ``dataset_info.json``,
       ``data-00000-of-0000N.arrow`` Arrow IPC stream files), or by ``DatasetDict.save_to_disk``
       (``dataset_dict.json`` plus one such folder per split);
     * the Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
       ``~/.cache/huggingface/hub`` (as huggingface_hub resolves it; see ``hub_cache_dir``), folder
       ``datasets--lmms-lab--POPE/snapshots/<revision>/`` with parquet files named
       ``<config dir>/<split>-00000-of-0000N.parquet`` (``data/`` is the default config);
     * such a cache folder copied anywhere, one snapshot folder, or a single parquet / arrow file.
   Images are ``{"bytes": ..., "path": ...}`` structs (a relative ``path`` is resolved against the
   dataset's folder when ``bytes`` is empty). Only the rows of the returned samples are read; their
   images are RGB (an RGB file stays encoded in memory until its pixels are first used).

   RefCOCO / RefCOCO+ / RefCOCOg: lmms-lab stores one row per box with a list of referring
   expressions (column ``answer``) and the box in pixels [x, y, w, h] (column ``bbox``). As lmms-eval's
   ``refcoco_bbox_rec`` tasks do, every expression becomes its own sample (id ``"<question_id>#<k>"``,
   k = the expression's index), with ``box`` = (x/W, y/H, (x+w)/W, (y+h)/H) for the image's width W
   and height H, and ``answers`` = that box written as "[x1, y1, x2, y2]" with 3 decimals.
   Multiple choice (ScienceQA, AI2D): ``answers`` is the correct option's letter ("A", "B", ...);
   ScienceQA's hint goes to ``context``; its train split is still among the hub repo's files but no
   longer in the dataset card's split list, so only a snapshot copy has it. MME: ``pair_id`` is ``question_id`` (the image path shared by
   its two questions); repeated ids get "#1", "#2", ... appended so sample ids stay unique.
   GQA keeps its images in a second config (``testdev_balanced_images``), joined on ``imageId``:
   found automatically in a hub snapshot, else pass ``images=<path to that config's copy>``.
"""
from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq
from PIL import Image

from ..validation import check_choice

TASKS: tuple[str, ...] = ("localization", "vqa", "yes_no", "multiple_choice", "mme", "exact_match")
# Task families the analyses split by ("localization vs others"): a benchmark declares its own (GQA is scored by
# exact match but is a VQA benchmark); other data takes its task's (the synthetic suite's non-localization
# tasks are "exact_match").
FAMILIES: tuple[str, ...] = TASKS

# Scene-suite task -> evaluation task (metric family).
SCENE_TASK_MAP: dict[str, str] = {
    "localization": "localization", "colour": "exact_match", "shape": "exact_match", "counting": "exact_match",
    "existence": "exact_match", "spatial": "exact_match", "prior": "exact_match",
}


# ----------------------------------------------------------------------------------------- samples

@dataclass(eq=False)
class EvalSample:
    """One evaluation question about one image.

    ``question`` is the raw question / referring expression without any prompt template;
    ``answers`` the reference answers (VQAv2: the 10 annotations; others: one); ``task`` one of TASKS
    (the metric family); ``options`` the multiple-choice options in order (letters A, B, ...);
    ``box`` the target box (x1, y1, x2, y2) normalised to the image; ``group`` the aggregation group
    (MME subtask, POPE category, scene task); ``pair_id`` MME's image id shared by its two questions;
    ``relevance`` (synthetic suite only) the boolean (rows, cols) mask of relevant patches;
    ``context`` extra text that belongs to the question (ScienceQA's hint), else None.
    """

    sample_id: str
    image: Image.Image
    question: str
    answers: list[str]
    task: str
    dataset: str
    options: list[str] | None = None
    box: tuple[float, float, float, float] | None = None
    group: str | None = None
    pair_id: str | None = None
    relevance: np.ndarray | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        if not isinstance(self.answers, list) or not all(isinstance(a, str) for a in self.answers):
            raise ValueError(f"sample {self.sample_id!r}: answers must be a list of strings, got {self.answers!r}")
        if self.box is not None:
            if len(self.box) != 4:
                raise ValueError(f"sample {self.sample_id!r}: box must be (x1, y1, x2, y2), got {self.box!r}")
            self.box = tuple(float(c) for c in self.box)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EvalSample):
            return NotImplemented
        same_image = (self.image.mode, self.image.size, self.image.tobytes()) == (
            other.image.mode, other.image.size, other.image.tobytes())
        same_mask = (self.relevance is None) == (other.relevance is None) and (
            self.relevance is None or np.array_equal(self.relevance, other.relevance))
        rest = [k for k in self.__dataclass_fields__ if k not in ("image", "relevance")]
        return same_image and same_mask and all(getattr(self, k) == getattr(other, k) for k in rest)


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive integer, got {limit!r}")


def _format_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{c:.3f}" for c in box) + "]"


# ------------------------------------------------------------------------------ synthetic suite

def _scene_to_eval(sample, dataset: str = "synthetic") -> EvalSample:
    return EvalSample(
        sample_id=sample.sample_id, image=sample.pil_image().convert("RGB"), question=sample.question,
        answers=[sample.answer], task=SCENE_TASK_MAP[sample.task], dataset=dataset,
        box=None if sample.box_normalised is None else tuple(sample.box_normalised), group=sample.task,
        relevance=np.asarray(sample.relevance, dtype=bool),
    )


def _scene_tasks(tasks) -> tuple[str, ...]:
    from ..scenes import TASKS as SCENE_TASKS
    if tasks is None:
        return SCENE_TASKS
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    for t in tasks:
        check_choice("tasks", t, SCENE_TASKS)
    return tasks


def _load_scene_file(path: Path, tasks, per_task, limit) -> list[EvalSample]:
    """Samples of a JSONL file written by analysis_lib.scenes storage."""
    from ..scenes import read_samples
    tasks = _scene_tasks(tasks)
    if per_task is not None and (isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1):
        raise ValueError(f"per_task must be None or a positive integer, got {per_task!r}")
    kept, counts = [], {}
    for s in read_samples(path):
        if s.task not in tasks or (per_task is not None and counts.get(s.task, 0) >= per_task):
            continue
        counts[s.task] = counts.get(s.task, 0) + 1
        kept.append(s)
    if not kept:
        raise ValueError(f"the scene file {path} holds no samples of tasks {tasks}")
    return [_scene_to_eval(s) for s in kept[:limit]]


def load_synthetic(split: str = "test", per_task: int | None = None, tasks: Sequence[str] | None = None,
                   seed: int = 0, directory: str | Path | None = None, limit: int | None = None,
                   scene_config=None) -> list[EvalSample]:
    """The synthetic scene suite as EvalSamples, task by task (the suite's order).

    Without ``directory`` the split is generated in memory (``per_task`` defaults to the suite's
    DEFAULT_PER_TASK; ``scene_config`` a SceneConfig). With ``directory``, ``<directory>/<split>.jsonl``
    written by ``analysis_lib.scenes`` is read (``per_task`` then keeps the first N of each task).
    ``limit`` keeps the first N samples; only those are generated.
    """
    from ..scenes import DEFAULT_PER_TASK, SceneConfig, generate_split
    _check_limit(limit)
    tasks = _scene_tasks(tasks)
    if directory is not None:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"scene folder {directory} does not exist")
        path = directory / f"{split}.jsonl"
        if not path.is_file():
            found = sorted(p.stem for p in directory.glob("*.jsonl"))
            raise ValueError(f"split {split!r} not found in the scene folder {directory}; splits found: {found}")
        return _load_scene_file(path, tasks, per_task, limit)
    config = scene_config if scene_config is not None else SceneConfig()
    if limit is None or (per_task is None and split not in DEFAULT_PER_TASK):
        samples = generate_split(split, per_task, tasks, config, seed)[:limit]  # (raises for a bad split)
    else:  # the first `limit` samples of the split, without generating the rest
        n = DEFAULT_PER_TASK[split] if per_task is None else per_task
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"per_task must be a positive integer, got {n!r}")
        samples = []
        for task in tasks:
            take = min(n, limit - len(samples))
            if take < 1:
                break
            samples += generate_split(split, take, (task,), config, seed)
    return [_scene_to_eval(s) for s in samples]


# ---------------------------------------------------------------------------------------- JSONL

JSONL_REQUIRED: tuple[str, ...] = ("id", "image", "question", "answers", "task")
JSONL_OPTIONAL: tuple[str, ...] = ("options", "box", "group", "pair_id", "dataset")


def _jsonl_sample(record, path: Path, line_no: int, default_dataset: str) -> EvalSample:
    where = f"{path}, line {line_no}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in JSONL_REQUIRED:
        if key not in record:
            raise ValueError(f"{where}: missing key {key!r}; required keys: {', '.join(JSONL_REQUIRED)}; "
                             f"optional: {', '.join(JSONL_OPTIONAL)}; found: {', '.join(map(str, record))}")
    task = record["task"]
    if task not in TASKS:
        raise ValueError(f"{where}: key 'task' is {task!r}; allowed values: {', '.join(TASKS)}")
    if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
        raise ValueError(f"{where}: key 'id' must be a string or an integer, got {record['id']!r}")
    if not isinstance(record["question"], str):
        raise ValueError(f"{where}: key 'question' must be a string, got {record['question']!r}")
    answers = record["answers"]
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{where}: key 'answers' must be a string or a non-empty list of strings, "
                         f"got {record['answers']!r}")
    options = record.get("options")
    if options is not None and (not isinstance(options, list) or not options
                                or not all(isinstance(o, str) for o in options)):
        raise ValueError(f"{where}: key 'options' must be a non-empty list of strings, got {options!r}")
    if task == "multiple_choice" and options is None:
        raise ValueError(f"{where}: task 'multiple_choice' needs key 'options' (the choices, in order)")
    box = record.get("box")
    if box is not None:
        ok = (isinstance(box, list) and len(box) == 4
              and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in box))
        if not ok or not (0 <= box[0] <= box[2] <= 1 and 0 <= box[1] <= box[3] <= 1):
            raise ValueError(f"{where}: key 'box' must be [x1, y1, x2, y2] normalised to the image "
                             f"(0 <= x1 <= x2 <= 1, 0 <= y1 <= y2 <= 1), got {box!r}")
    if task == "localization" and box is None:
        raise ValueError(f"{where}: task 'localization' needs key 'box' ([x1, y1, x2, y2] normalised to the image)")
    if not isinstance(record["image"], str):
        raise ValueError(f"{where}: key 'image' must be a file path, got {record['image']!r}")
    image_path = path.parent / record["image"]
    if not image_path.is_file():
        raise FileNotFoundError(f"{where}: image {record['image']!r} not found (looked at {image_path})")
    try:
        image = _rgb_image(image_path.read_bytes())
    except OSError as e:
        raise ValueError(f"{where}: cannot read image {image_path}: {e}") from None
    optional_text = {k: (None if record.get(k) is None else str(record[k])) for k in ("group", "pair_id")}
    return EvalSample(sample_id=str(record["id"]), image=image, question=record["question"], answers=answers,
                      task=task, dataset=str(record.get("dataset") or default_dataset), options=options,
                      box=None if box is None else tuple(box), **optional_text)


def load_jsonl(path: str | Path, limit: int | None = None, dataset: str | None = None) -> list[EvalSample]:
    """Samples of a JSONL file in the format of this module's docstring (images relative to its folder).
    Every line up to ``limit`` samples is validated; errors name the file, the line and the key."""
    _check_limit(limit)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {path} does not exist")
    default_dataset = dataset or path.stem
    samples: list[EvalSample] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {line_no}: not UTF-8 text ({e.reason} at byte {e.start}); save the "
                                 "file as UTF-8") from None
            if not line.strip():
                continue
            if limit is not None and len(samples) >= limit:
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {line_no}: not valid JSON ({e})") from None
            sample = _jsonl_sample(record, path, line_no, default_dataset)
            if sample.sample_id in seen:
                raise ValueError(f"{path}, line {line_no}: key 'id' {sample.sample_id!r} repeats line "
                                 f"{seen[sample.sample_id]}; ids must be unique")
            seen[sample.sample_id] = line_no
            samples.append(sample)
    if not samples:
        raise ValueError(f"dataset {path} is empty: no samples")
    return samples


# ----------------------------------------------------------------------- lmms-eval HF datasets

COLUMN_ROLES: tuple[str, ...] = ("id", "image", "question", "answers", "options", "box", "group", "pair_id", "context")
# Roles that may be absent from a dataset's files (then None; an id becomes "<name>-<split>-<row>").
OPTIONAL_ROLES: tuple[str, ...] = ("id", "group", "pair_id", "context")


@dataclass(frozen=True)
class Benchmark:
    """How to read one lmms-lab dataset. ``columns`` maps a role (COLUMN_ROLES) to its column; for a
    list of structs (VQAv2 answers) the field "answer" is taken. ``answer_index``: the answers column
    holds the index of the correct option (becomes its letter). ``one_per_expression``: the question
    column holds a list of expressions, one sample each (RefCOCO). ``box_format``: "xywh_pixels" or
    "xyxy_normalised". ``images``: (config, key column here, key column there) of a separate image table.
    ``split_configs``: splits kept in another config (POPE's subsets in "Full"). ``family``: the task family
    (FAMILIES) when it is not ``task``."""

    name: str
    hub_id: str
    config: str | None
    split: str
    task: str
    columns: dict[str, str | None]
    splits: tuple[str, ...] = ()
    answer_index: bool = False
    one_per_expression: bool = False
    box_format: str = "xyxy_normalised"
    images: tuple[str, str, str] | None = None
    split_configs: dict[str, str] = field(default_factory=dict)
    family: str | None = None

    def __post_init__(self) -> None:
        check_choice("family", self.task_family, FAMILIES)

    @property
    def task_family(self) -> str:
        """The family the analyses count this benchmark in (FAMILIES)."""
        return self.family or self.task


def _refcoco(name: str, hub_id: str, splits: tuple[str, ...]) -> Benchmark:
    return Benchmark(name, hub_id, None, "val", "localization",
                     {"id": "question_id", "image": "image", "question": "answer", "box": "bbox"},
                     splits=splits, one_per_expression=True, box_format="xywh_pixels")


# The column tables below follow lmms-eval's task code for these datasets; correct them here, or per
# call with columns={...}, if a dataset's copy differs.
BENCHMARKS: dict[str, Benchmark] = {
    "refcoco": _refcoco("refcoco", "lmms-lab/RefCOCO", ("val", "test", "testA", "testB")),
    "refcoco+": _refcoco("refcoco+", "lmms-lab/RefCOCOplus", ("val", "testA", "testB")),
    "refcocog": _refcoco("refcocog", "lmms-lab/RefCOCOg", ("val", "test")),
    "pope": Benchmark("pope", "lmms-lab/POPE", None, "test", "yes_no",
                      {"id": "question_id", "image": "image", "question": "question", "answers": "answer",
                       "group": "category"}, splits=("test", "adversarial", "popular", "random"),
                      split_configs={"adversarial": "Full", "popular": "Full", "random": "Full"}),
    "textvqa": Benchmark("textvqa", "lmms-lab/textvqa", None, "validation", "vqa",
                         {"id": "question_id", "image": "image", "question": "question", "answers": "answers",
                          "context": "ocr_tokens"}, splits=("train", "validation", "test")),
    "gqa": Benchmark("gqa", "lmms-lab/GQA", "testdev_balanced_instructions", "testdev", "exact_match",
                     {"id": "id", "question": "question", "answers": "answer"},
                     splits=("testdev",), images=("testdev_balanced_images", "imageId", "id"), family="vqa"),
    "vqav2": Benchmark("vqav2", "lmms-lab/VQAv2", None, "validation", "vqa",
                       {"id": "question_id", "image": "image", "question": "question", "answers": "answers",
                        "group": "answer_type"}, splits=("validation", "testdev", "test")),
    "vizwiz": Benchmark("vizwiz", "lmms-lab/VizWiz-VQA", None, "val", "vqa",
                        {"id": "question_id", "image": "image", "question": "question", "answers": "answers",
                         "group": "category"}, splits=("val", "test")),
    "scienceqa_img": Benchmark("scienceqa_img", "lmms-lab/ScienceQA", "ScienceQA-IMG", "test", "multiple_choice",
                               {"image": "image", "question": "question", "options": "choices",
                                "answers": "answer", "context": "hint", "group": "subject"},
                               splits=("train", "validation", "test"), answer_index=True),
    "ai2d": Benchmark("ai2d", "lmms-lab/ai2d", None, "test", "multiple_choice",
                      {"image": "image", "question": "question", "options": "options", "answers": "answer"},
                      splits=("test",), answer_index=True),
    "mme": Benchmark("mme", "lmms-lab/MME", None, "test", "mme",
                     {"id": "question_id", "image": "image", "question": "question", "answers": "answer",
                      "group": "category", "pair_id": "question_id"}, splits=("test",)),
}
# lmms-eval 0.7.3 downloads the same datasets from lmms-lab-encoder/<name>.
HUB_OWNERS: tuple[str, ...] = ("lmms-lab", "lmms-lab-encoder")
ALIASES: dict[str, str] = {"refcocoplus": "refcoco+", "refcoco_plus": "refcoco+", "scienceqa": "scienceqa_img",
                           "scienceqa-img": "scienceqa_img", "vizwiz_vqa": "vizwiz", "vizwiz-vqa": "vizwiz"}


def _benchmark_name(name: str) -> str | None:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in BENCHMARKS else None


def _hub_folder_benchmark(name: str) -> str | None:
    """The registry name of a hub-cache folder name ("datasets--lmms-lab--POPE"), else None."""
    m = re.match(r"^datasets--(.+?)--(.+)$", name)
    if not m:
        return None
    by_hub = {hub_id.lower(): k for k, b in BENCHMARKS.items() for hub_id in hub_ids(b)}
    return by_hub.get(f"{m[1]}/{m[2]}".lower())


def task_family(dataset: str | None, task: str) -> str:
    """The task family (FAMILIES) of a sample or row: its benchmark's when ``dataset`` names one whose task
    it has (a registry name or alias, "<name>:<split>", or a path whose last name, file stem or hub-cache
    folder names it), else its task's."""
    path = Path(str(dataset or ""))
    names = [n.partition(":")[0] for n in (*reversed(path.parts), path.stem)]
    key = next((k for n in names if (k := _benchmark_name(n) or _hub_folder_benchmark(n))), None)
    bench = BENCHMARKS.get(key)
    return bench.task_family if bench is not None and bench.task == task else task


def _unknown_name_error(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}: use 'synthetic' (or 'synthetic:<split>'), one of the benchmark "
                      f"names {', '.join(BENCHMARKS)} (optionally '<name>:<split>'), or a path to a .jsonl file, "
                      f"a parquet/arrow file, or a dataset folder (save_to_disk, hub cache snapshot, scene suite)")


def _absent_spec_error(text: str, path: Path) -> Exception:
    """A spec that is no name and no existing path: a missing path when it looks like one, else unknown."""
    if os.sep in text or "/" in text or text.startswith((".", "~")) or path.suffix in (".jsonl", ".parquet", ".arrow"):
        return FileNotFoundError(f"dataset path {path} does not exist")
    return _unknown_name_error(text)


def hub_cache_dir() -> tuple[Path, str]:
    """The Hugging Face hub cache folder, resolved as huggingface_hub does, and where it came from."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser(), f"${var}"
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub", "$HF_HOME/hub"
    if os.environ.get("XDG_CACHE_HOME"):
        xdg = Path(os.environ["XDG_CACHE_HOME"]).expanduser()
        return xdg / "huggingface" / "hub", "$XDG_CACHE_HOME/huggingface/hub"
    return Path.home() / ".cache" / "huggingface" / "hub", "the default ~/.cache/huggingface/hub"


def _missing_copy_error(bench: Benchmark, looked: Path, cache: Path, origin: str) -> FileNotFoundError:
    repo_folder = "datasets--" + bench.hub_id.replace("/", "--")
    configs = [c for c in (bench.config, bench.images[0] if bench.images else None) if c]
    only = (" (to fetch only what is needed add --include " + " ".join(f'"{c}/*"' for c in configs) + ")"
            if configs else "")
    config_arg = f'"{bench.config}", ' if bench.config else ""
    saved = f"{bench.name}-{bench.split}"
    images = ""
    if bench.images:
        images = (f"; its images are the separate config \"{bench.images[0]}\": save it the same way and pass "
                  f"images='/path/to/that copy'")
    return FileNotFoundError(
        f"no local copy of benchmark {bench.name!r} (Hugging Face dataset {bench.hub_id}).\n"
        f"Looked for: {looked}, and the same under {' and '.join(hub_ids(bench)[1:])} (lmms-eval's download)  "
        f"(hub cache {cache}, from {origin}; set HF_HUB_CACHE or HF_HOME to look elsewhere)\n"
        f"To get it, on a machine with network access run\n"
        f"    huggingface-cli download {bench.hub_id} --repo-type dataset\n"
        f"(`hf download` with newer huggingface_hub){only}, then copy the folder {repo_folder} from that "
        f"machine's hub cache (~/.cache/huggingface/hub) to {cache / repo_folder}, or anywhere and pass its "
        f"path: load_benchmark({bench.name!r}, path=...) / load_dataset('/path/to/{repo_folder}').\n"
        f"Or, with the `datasets` package there: datasets.load_dataset(\"{bench.hub_id}\", {config_arg}"
        f"split=\"{bench.split}\").save_to_disk(\"{saved}\"), copy that folder here and load it with "
        f"load_dataset('/path/to/{saved}', benchmark={bench.name!r}){images}.")


@dataclass
class _Table:
    """One split of a dataset on disk: ordered shards of one kind."""

    files: list[Path]
    kind: str  # "parquet" or "arrow"
    where: Path  # shown in messages; base folder of relative image paths
    split: str | None = None

    def schema(self) -> pa.Schema:
        if self.kind == "parquet":
            return pq.read_schema(self.files[0])
        with pa.memory_map(str(self.files[0])) as source:
            return _open_ipc(source, self.files[0]).schema

    def num_rows(self) -> int | None:
        if self.kind == "parquet":
            return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        return None

    def batches(self, columns: list[str], batch_size: int = 32) -> Iterator[pa.RecordBatch]:
        for f in self.files:
            if self.kind == "parquet":
                yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)
            else:
                with pa.memory_map(str(f)) as source:
                    for batch in _open_ipc(source, f):
                        batch = batch.select(columns)
                        for start in range(0, batch.num_rows, batch_size):
                            yield batch.slice(start, batch_size)


def _open_ipc(source, path: Path):
    """An Arrow IPC reader: save_to_disk writes the stream format; the file format is accepted too."""
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        try:
            return pa.ipc.open_file(source)
        except pa.ArrowInvalid as e:
            raise ValueError(f"{path} is not an Arrow IPC stream or file: {e}") from None


_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}(?:-[0-9a-f]+)?\.parquet$")
_NUMBERED = re.compile(r"^\d+\.parquet$")


def _parquet_groups(root: Path) -> dict[str, dict[str, list[Path]]]:
    """Parquet files under root, grouped as {config folder: {split: [shards]}}. Names follow the hub:
    <config>/<split>-00000-of-00001[-hash].parquet, <config>/<split>/0000.parquet or <config>/<split>.parquet."""
    groups: dict[str, dict[str, list[Path]]] = {}
    for f in sorted(root.rglob("*.parquet")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if m := _SHARD.match(f.name):
            config, split = rel.parent, m["split"]
        elif _NUMBERED.match(f.name):
            config, split = rel.parent.parent, rel.parent.name
        else:
            config, split = rel.parent, f.stem
        groups.setdefault(config.as_posix(), {}).setdefault(split, []).append(f)
    return groups


def _describe_groups(groups: dict[str, dict[str, list[Path]]]) -> str:
    return "; ".join(f"{c!r}: splits {sorted(s)}" for c, s in groups.items())


def _snapshot_tables(root: Path, config: str | None, strict: bool = False) -> dict[str, _Table]:
    """The splits of one config in a folder of parquet files (a hub snapshot). A config that is not
    found falls back to the only config there unless ``strict``."""
    groups = _parquet_groups(root)
    if not groups:
        raise ValueError(f"dataset {root} is empty: no parquet files under it")
    chosen = None
    if config is not None:
        matches = [c for c in groups if c == config or c.split("/")[0] == config or c.split("/")[-1] == config]
        if len(matches) == 1:
            chosen = matches[0]
        elif len(groups) > 1 or matches or strict:
            raise ValueError(f"config {config!r} not found in {root}; configs (folders) found: "
                             f"{_describe_groups(groups)}")
    if chosen is None:
        if "data" in groups:
            chosen = "data"
        elif len(groups) == 1:
            chosen = next(iter(groups))
        else:
            raise ValueError(f"{root} holds several configs; pass config=... with one of: {_describe_groups(groups)}")
    return {split: _Table(files, "parquet", root, split) for split, files in groups[chosen].items()}


def _pick_snapshot(repo: Path) -> Path | None:
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    candidates = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    return max(candidates, key=lambda p: (p.stat().st_mtime, p.name)) if candidates else None


def _arrow_table(folder: Path) -> _Table:
    """A save_to_disk Dataset folder (state.json + arrow shards)."""
    state = json.loads((folder / "state.json").read_text())
    names = [d["filename"] for d in state.get("_data_files", [])] or sorted(p.name for p in folder.glob("*.arrow"))
    files = [folder / n for n in names]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{folder}/state.json lists {f.name}, which is missing")
    if not files:
        raise ValueError(f"dataset {folder} is empty: no .arrow files")
    return _Table(files, "arrow", folder, state.get("_split"))


def _local_tables(path: Path, config: str | None) -> dict[str | None, _Table]:
    """The splits found at a user-given path (key None: a single table whose split is unknown)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".parquet":
            m = _SHARD.match(path.name)
            return {m["split"] if m else None: _Table([path], "parquet", path.parent, m["split"] if m else None)}
        if path.suffix == ".arrow":
            return {None: _Table([path], "arrow", path.parent)}
        raise ValueError(f"{path}: expected a .parquet or .arrow file, or a dataset folder")
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        return {s: _arrow_table(path / s) for s in splits}
    if (path / "state.json").is_file():
        table = _arrow_table(path)
        return {table.split: table}
    if (path / "snapshots").is_dir():
        snapshot = _pick_snapshot(path)
        if snapshot is None:
            raise FileNotFoundError(f"{path / 'snapshots'} holds no snapshot folder")
        path = snapshot
    return dict(_snapshot_tables(path, config))


def _choose_split(tables: dict[str | None, _Table], split: str | None, default: str, where) -> _Table:
    if None in tables and len(tables) == 1:
        return tables[None]
    if split is not None:
        if split not in tables:
            raise ValueError(f"split {split!r} not found in {where}; splits found: {sorted(map(str, tables))}")
        return tables[split]
    if default in tables:
        return tables[default]
    if len(tables) == 1:
        return next(iter(tables.values()))
    raise ValueError(f"{where} holds several splits and the default {default!r} is not among them; "
                     f"pass split=... with one of: {sorted(map(str, tables))}")


def _choose_split_in_snapshot(root: Path, config: str | None, split: str | None, default: str) -> _Table:
    """Like _choose_split for a folder of parquet files; a bad split's error also lists the other configs."""
    try:
        return _choose_split(_snapshot_tables(root, config), split, default, root)
    except ValueError as e:
        groups = _parquet_groups(root)
        if len(groups) < 2:
            raise
        raise ValueError(f"{e}\n(configs there, pass config=... to use another: {_describe_groups(groups)})") from None


def hub_ids(bench: Benchmark) -> list[str]:
    """The repos a benchmark's copy may come from: its lmms-lab id, then the lmms-lab-encoder one that
    lmms-eval 0.7.3 downloads."""
    return [f"{owner}/{bench.hub_id.split('/', 1)[1]}" for owner in HUB_OWNERS]


def _repo_folder(cache: Path, bench: Benchmark) -> Path:
    """The cache folder of a benchmark's repo, under any of ``hub_ids``. The hub ignores case in repo
    ids and the cache keeps the spelling it was downloaded with (lmms-eval asks for
    "lmms-lab/RefCOCOPlus"), so another case matches when the exact folder is missing."""
    names = ["datasets--" + hub_id.replace("/", "--") for hub_id in hub_ids(bench)]
    folders = sorted(p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []
    for name in names:
        if (cache / name).is_dir():
            return cache / name
        found = next((p for p in folders if p.name.lower() == name.lower()), None)
        if found is not None:
            return found
    return cache / names[0]


def _cached_snapshot(bench: Benchmark, cache_dir: str | Path | None = None) -> Path:
    """The hub-cache snapshot of a benchmark, or a FileNotFoundError saying where it looked and how to get it."""
    cache, origin = (Path(cache_dir), "cache_dir") if cache_dir is not None else hub_cache_dir()
    repo = _repo_folder(cache, bench)
    snapshot = _pick_snapshot(repo) if repo.is_dir() else None
    if snapshot is None:
        raise _missing_copy_error(bench, repo / "snapshots" / "<revision>", cache, origin)
    return snapshot


def check_local_copy(spec: str) -> None:
    """Whether the dataset ``spec`` (as ``load_dataset`` takes it) is on this machine, reading no data:
    the synthetic suite always is; a benchmark name needs its hub-cache copy and a path must exist.
    Raises the FileNotFoundError ``load_dataset`` would (where it looked, how to get it), or a ValueError
    for an unknown name."""
    text = str(spec).strip()
    name = text.partition(":")[0]
    if name.lower() == "synthetic":
        return
    key = _benchmark_name(name)
    if key is not None:
        _cached_snapshot(BENCHMARKS[key])
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise _absent_spec_error(text, path)


def _resolve(bench: Benchmark, path, split, config, cache_dir) -> tuple[_Table, str, Path | None]:
    """The table of the requested split, its name, and the snapshot it came from (None if not one)."""
    if path is None:
        snapshot = _cached_snapshot(bench, cache_dir)
        table = _choose_split_in_snapshot(snapshot, config, split, bench.split)
        return table, table.split or bench.split, snapshot
    path = Path(path).expanduser()
    saved = path.is_dir() and any((path / n).is_file() for n in ("dataset_dict.json", "state.json"))
    if path.is_dir() and not saved:  # a hub-cache repo folder, one of its snapshots, or any parquet folder
        if (path / "snapshots").is_dir():
            snapshot = _pick_snapshot(path)
            if snapshot is None:
                raise FileNotFoundError(f"{path / 'snapshots'} holds no snapshot folder")
            path = snapshot
        table = _choose_split_in_snapshot(path, config, split, bench.split)
        return table, table.split or split or bench.split, path
    tables = _local_tables(path, config)
    if not tables:
        raise ValueError(f"dataset {path} is empty: it lists no splits")
    table = _choose_split(tables, split, bench.split, path)
    return table, table.split or split or bench.split, None


def _rgb_image(data: bytes) -> Image.Image:
    """An RGB image from encoded bytes. An image that already is RGB (most JPEGs) is returned unloaded:
    it keeps only its encoded bytes until its pixels are first used, so a loaded dataset costs about
    its file size in memory; other modes are decoded and converted now."""
    img = Image.open(io.BytesIO(data))
    if img.mode == "RGB":
        return img
    with img:
        return img.convert("RGB")


def _decode_image(value, base: Path, where: str) -> Image.Image:
    data = file = None
    if isinstance(value, dict):
        data, file = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = value
    elif isinstance(value, str):
        file = value
    if not data and file:
        full = Path(file) if Path(file).is_absolute() else base / file
        if not full.is_file():
            raise FileNotFoundError(f"{where}: image has no bytes and its path {file!r} is not a file "
                                    f"(looked at {full})")
        data = full.read_bytes()
    if not data:
        raise ValueError(f"{where}: no image (got {type(value).__name__})")
    try:
        return _rgb_image(bytes(data))
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"{where}: cannot read the image: {e}") from None


def _answers(value, options, answer_index: bool, where: str) -> list[str]:
    if answer_index:
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: the answer {value!r} is not an option index") from None
        if not options or not 0 <= index < len(options):
            raise ValueError(f"{where}: answer index {index} is outside the {len(options or [])} options")
        return [chr(ord("A") + index)]
    items = value if isinstance(value, list) else [value]
    answers = [str(a["answer"] if isinstance(a, dict) else a) for a in items if a is not None]
    if not answers:
        raise ValueError(f"{where}: no reference answers (this split may hide them; use a validation split)")
    return answers


def _box(value, image: Image.Image, box_format: str, where: str) -> tuple[float, float, float, float]:
    if value is None or len(value) != 4:
        raise ValueError(f"{where}: box must hold 4 numbers, got {value!r}")
    if box_format == "xywh_pixels":
        x, y, w, h = (float(v) for v in value)
        width, height = image.size
        return (x / width, y / height, (x + w) / width, (y + h) / height)
    return tuple(float(v) for v in value)


def _read_joined_images(table: _Table, key: str, image_column: str, wanted: set) -> dict:
    """{key value: image struct} for the wanted keys of a separate image table."""
    missing = [c for c in (key, image_column) if c not in table.schema().names]
    if missing:
        raise ValueError(f"image table {table.where} lacks columns {missing}; it has {table.schema().names}")
    found = {}
    value_set = pa.array(sorted(wanted, key=str))
    for batch in table.batches([key, image_column], batch_size=256):
        keys = batch.column(0)
        chosen = batch.filter(pc.is_in(keys, value_set=value_set.cast(keys.type)))
        for k, img in zip(chosen.column(0).to_pylist(), chosen.column(1).to_pylist()):
            found.setdefault(k, img)
        if len(found) == len(wanted):
            break
    return found


def load_benchmark(name: str, path: str | Path | None = None, split: str | None = None, limit: int | None = None,
                   columns: dict[str, str | None] | None = None, config: str | None = None,
                   cache_dir: str | Path | None = None, images: str | Path | None = None) -> list[EvalSample]:
    """A benchmark of BENCHMARKS read from a local copy (see the module docstring).

    ``path``: a save_to_disk folder, a hub-cache folder or snapshot, or a parquet/arrow file; without
    it the hub cache (``cache_dir`` or the HF environment) is searched for the benchmark's hub id.
    ``split``/``config`` default to the registry's; ``columns`` overrides the column of a role
    (COLUMN_ROLES; None drops an optional role); ``images``: GQA's image table when not in a snapshot.
    """
    key = _benchmark_name(name)
    if key is None:
        raise _unknown_name_error(name)
    bench = BENCHMARKS[key]
    _check_limit(limit)
    mapping = dict(bench.columns)
    for role, column in (columns or {}).items():
        check_choice("columns key", role, COLUMN_ROLES)
        mapping[role] = column
    if split is not None and bench.splits and split not in bench.splits:
        raise ValueError(f"split={split!r} does not exist for benchmark {key!r}; allowed values: "
                         f"{', '.join(map(repr, bench.splits))}")
    if config is None:
        config = bench.split_configs.get(split, bench.config)
    table, split_name, snapshot = _resolve(bench, path, split, config, cache_dir)

    # Check the columns (cheap: the schema only) before reading any row.
    available = table.schema().names
    required = ["question"]
    if not (bench.task == "localization" and mapping.get("answers") is None):
        required.append("answers")  # (a localization benchmark without answers writes its box as the answer)
    if bench.task == "multiple_choice":
        required.append("options")
    if bench.task == "localization":
        required.append("box")
    joined = bench.images is not None and mapping.get("image") not in available
    if not joined:
        required.append("image")
    user_roles = set(columns or {})
    roles = {}
    for role in COLUMN_ROLES:
        column = mapping.get(role)
        if role == "image" and joined:
            continue
        if column is None:
            if role in required:
                raise ValueError(f"benchmark {key!r} needs a column for {role!r}; pass columns={{{role!r}: ...}}")
            continue
        if column not in available:
            if role in OPTIONAL_ROLES and role not in user_roles:
                continue
            raise ValueError(f"{table.where}: column {column!r} (for {role!r}) not found; columns found: "
                             f"{', '.join(available)}; correct it with columns={{{role!r}: '<column>'}}")
        roles[role] = column
    if joined:
        if bench.images[1] not in available:
            raise ValueError(f"{table.where}: neither an image column {mapping.get('image')!r} nor the key column "
                             f"{bench.images[1]!r} of the separate image table was found; columns found: "
                             f"{', '.join(available)}")
        roles["_join"] = bench.images[1]
    if table.num_rows() == 0:
        raise ValueError(f"dataset {key!r} at {table.where} (split {split_name!r}) is empty: no rows")
    image_table = None
    if joined:
        if images is not None:
            image_tables = _local_tables(Path(images).expanduser(), bench.images[0])
            image_table = _choose_split(image_tables, split_name, split_name, images)
        elif snapshot is not None:
            image_tables = _snapshot_tables(snapshot, bench.images[0], strict=True)
            image_table = _choose_split(image_tables, split_name, split_name, snapshot)
        else:
            raise ValueError(f"benchmark {key!r} keeps its images in the separate config {bench.images[0]!r}; "
                             f"pass images=<path to a copy of that config> (a save_to_disk folder or parquet file)")

    # Read rows until `limit` samples are made.
    wanted = list(dict.fromkeys(roles.values()))
    records: list[tuple[int, dict]] = []
    produced = 0
    row_index = 0
    for batch in table.batches(wanted):
        for row in batch.to_pylist():
            question = row[roles["question"]]
            records.append((row_index, row))
            produced += len(question) if bench.one_per_expression and isinstance(question, list) else 1
            row_index += 1
            if limit is not None and produced >= limit:
                break
        if limit is not None and produced >= limit:
            break
    if not records:
        raise ValueError(f"dataset {key!r} at {table.where} (split {split_name!r}) is empty: no rows")
    if joined:
        keys = {row[roles["_join"]] for _, row in records}
        found = _read_joined_images(image_table, bench.images[2], mapping.get("image") or "image", keys)
        for i, row in records:
            if row[roles["_join"]] not in found:
                raise ValueError(f"{table.where}, row {i}: image {row[roles['_join']]!r} not found in "
                                 f"{image_table.where}")
            row["_image"] = found[row[roles["_join"]]]

    samples: list[EvalSample] = []
    seen: dict[str, int] = {}
    for i, row in records:
        where = f"{table.where} (split {split_name!r}), row {i}"
        image = _decode_image(row["_image"] if joined else row[roles["image"]], table.where, where)
        options = row.get(roles["options"]) if "options" in roles else None
        options = None if options is None else [str(o) for o in options]
        box = _box(row[roles["box"]], image, bench.box_format, where) if "box" in roles else None
        base_id = str(row[roles["id"]]) if "id" in roles else f"{key}-{split_name}-{i:06d}"

        def text(role: str) -> str | None:
            value = row[roles[role]] if role in roles else None
            if isinstance(value, list):  # TextVQA's OCR tokens, listed as its prompt lists them
                value = ", ".join(map(str, value))
            return None if value in (None, "") else str(value)

        common = dict(image=image, task=bench.task, dataset=key, options=options, box=box, group=text("group"),
                      pair_id=text("pair_id"), context=text("context"))
        if bench.one_per_expression:
            expressions = row[roles["question"]]
            expressions = [expressions] if isinstance(expressions, str) else list(expressions or [])
            answers = (_answers(row[roles["answers"]], options, bench.answer_index, where)
                       if "answers" in roles else [_format_box(box)])
            items = [(f"{base_id}#{k}", str(e), answers) for k, e in enumerate(expressions)]
        else:
            answers = _answers(row[roles["answers"]], options, bench.answer_index, where)
            items = [(base_id, str(row[roles["question"]]), answers)]
        for sample_id, question, answers in items:
            if sample_id in seen:
                seen[sample_id] += 1
                sample_id = f"{sample_id}#{seen[sample_id]}"
            else:
                seen[sample_id] = 0
            samples.append(EvalSample(sample_id=sample_id, question=question, answers=list(answers), **common))
    if not samples:
        raise ValueError(f"dataset {key!r} at {table.where} (split {split_name!r}) is empty: no samples")
    return samples[:limit]


# -------------------------------------------------------------------------------- entry point

def _is_scene_jsonl(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and {"sample_id", "relevance", "objects", "answer"} <= set(record)
    return False


def _infer_benchmark(path: Path) -> str:
    """The registry name a dataset path holds, from a hub-cache folder name, dataset_info.json, or the
    path's last two names; else a ValueError asking for benchmark=..."""
    by_repo = {b.hub_id.split("/")[1].lower(): k for k, b in BENCHMARKS.items()}
    for part in (*path.parts, *path.resolve().parts):
        if key := _hub_folder_benchmark(part):
            return key
    folder = path if path.is_dir() else path.parent
    infos = [folder / "dataset_info.json", *sorted(folder.glob("*/dataset_info.json"))]
    for info in infos:
        if info.is_file():
            data = json.loads(info.read_text())
            for field_name in ("dataset_name", "config_name", "builder_name"):
                value = str(data.get(field_name) or "").lower()
                if value in by_repo or _benchmark_name(value):
                    return by_repo.get(value) or _benchmark_name(value)
    tokens = {t for p in (path.name, path.parent.name) for t in re.split(r"[-_ .]+", p.lower()) if t}
    tokens |= {p.lower() for p in (path.stem, path.parent.name)}
    matches = {_benchmark_name(t) or by_repo.get(t) for t in tokens} - {None}
    if len(matches) == 1:
        return matches.pop()
    raise ValueError(f"cannot tell which benchmark {path} holds (its column mapping is needed); pass "
                     f"benchmark=<name> with one of: {', '.join(BENCHMARKS)}")


_BENCHMARK_OPTIONS = ("columns", "config", "cache_dir", "images")
_SYNTHETIC_OPTIONS = ("per_task", "tasks", "directory", "scene_config")


def _check_options(options: dict, allowed: tuple[str, ...], kind: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"option(s) {unknown} do not apply to {kind}; allowed options: {', '.join(allowed) or 'none'}")


def load_dataset(spec: str | Path, split: str | None = None, limit: int | None = None, seed: int = 0,
                 **options) -> list[EvalSample]:
    """Samples of ``spec``: "synthetic" / "synthetic:<split>", a BENCHMARKS name (or "<name>:<split>"),
    a ``.jsonl`` file, a parquet/arrow file, or a folder (save_to_disk, hub cache folder or snapshot,
    a scene-suite folder, or a folder with one JSONL file). ``seed`` only affects the synthetic suite.
    ``options``: per_task, tasks, directory, scene_config (synthetic); columns, config, cache_dir,
    images and benchmark=<name> (benchmarks; ``benchmark`` names the registry entry of a path);
    dataset (JSONL). Names win over paths: a folder called "pope" is loaded as "./pope". Bad names,
    paths, splits and options fail before any data is read."""
    _check_limit(limit)
    text = str(spec).strip()
    name, _, sub = text.partition(":")
    if name.lower() == "synthetic":
        if sub and split and sub != split:
            raise ValueError(f"{text!r} names split {sub!r} but split={split!r} was given")
        _check_options(options, _SYNTHETIC_OPTIONS, "the synthetic suite")
        return load_synthetic(split=sub or split or "test", seed=seed, limit=limit, **options)
    key = _benchmark_name(name)
    if key is not None:
        if sub and split and sub != split:
            raise ValueError(f"{text!r} names split {sub!r} but split={split!r} was given")
        _check_options(options, _BENCHMARK_OPTIONS, f"benchmark {key!r}")
        return load_benchmark(key, split=sub or split, limit=limit, **options)
    path = Path(text).expanduser()
    if not path.exists():
        raise _absent_spec_error(text, path)

    benchmark = options.pop("benchmark", None)
    if path.is_file() and path.suffix == ".jsonl":
        if _is_scene_jsonl(path):
            _check_options(options, ("per_task", "tasks"), "a scene-suite file")
            return _load_scene_file(path, options.get("tasks"), options.get("per_task"), limit)
        _check_options(options, ("dataset",), "a JSONL file")
        return load_jsonl(path, limit=limit, **options)
    is_hf = path.is_file() and path.suffix in (".parquet", ".arrow")
    if path.is_dir():
        is_hf = any((path / n).exists() for n in ("dataset_dict.json", "state.json", "snapshots")) or any(
            True for _ in path.rglob("*.parquet"))
        if not is_hf:
            jsonl = sorted(path.glob("*.jsonl"))
            if not jsonl:
                raise ValueError(f"{path} is not a recognised dataset folder: expected a save_to_disk folder "
                                 f"(state.json or dataset_dict.json), a hub cache folder or snapshot (parquet files), "
                                 f"or .jsonl files")
            if split is not None and (path / f"{split}.jsonl").is_file():
                chosen = path / f"{split}.jsonl"
            elif len(jsonl) == 1 and split is None:
                chosen = jsonl[0]
            elif split is None and (path / "test.jsonl").is_file() and _is_scene_jsonl(path / "test.jsonl"):
                chosen = path / "test.jsonl"
            else:
                raise ValueError(f"{path} holds several JSONL files or none for split {split!r}; pass split=... "
                                 f"with one of: {[p.stem for p in jsonl]}")
            if _is_scene_jsonl(chosen):
                _check_options(options, ("per_task", "tasks"), "a scene-suite folder")
                return _load_scene_file(chosen, options.get("tasks"), options.get("per_task"), limit)
            _check_options(options, ("dataset",), "a JSONL file")
            return load_jsonl(chosen, limit=limit, **options)
    if not is_hf:
        raise ValueError(f"{path}: expected a .jsonl, .parquet or .arrow file, or a dataset folder")
    if benchmark is None:
        benchmark = _infer_benchmark(path)
    elif _benchmark_name(benchmark) is None:
        raise _unknown_name_error(benchmark)
    _check_options(options, _BENCHMARK_OPTIONS, f"benchmark {benchmark!r}")
    return load_benchmark(benchmark, path=path, split=split, limit=limit, **options)


__all__ = ["TASKS", "FAMILIES", "task_family", "SCENE_TASK_MAP", "EvalSample", "Benchmark", "BENCHMARKS", "COLUMN_ROLES", "HUB_OWNERS",
           "hub_cache_dir", "hub_ids", "check_local_copy", "load_synthetic", "load_jsonl", "load_benchmark", "load_dataset"]
