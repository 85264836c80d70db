"""Evaluation dataset loaders: every file is written under tmp_path (no network, no downloads)."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from analysis_lib.evaluation.datasets import (BENCHMARKS, TASKS, EvalSample, load_benchmark, load_dataset, load_jsonl,
                                              load_synthetic)
from analysis_lib.evaluation.layouts import hub_snapshot, image_column
from analysis_lib.scenes import generate_split, write_samples


def pixels(width, height, value):
    """An RGB image array whose pixels encode (value, x, y), so any crop, flip or resize is caught."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([np.full_like(xs, value), xs * 3, ys * 5], axis=-1).astype(np.uint8)


def as_rgb(array):
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def pope_table():
    """Three POPE-style rows (lmms-lab/POPE columns) and their image arrays."""
    arrays = [pixels(6, 4, 10 * i) for i in range(3)]
    arrays[1] = arrays[1][:, :, 1]  # one greyscale image: samples are always RGB
    table = pa.table({
        "question_id": [str(100 + i) for i in range(3)],
        "question": [f"Is there a thing {i} in the image?" for i in range(3)],
        "answer": ["yes", "no", "yes"],
        "category": ["adversarial", "popular", "random"],
        "image": image_column(arrays),
    })
    return table, arrays


def write_stream(path, table):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def save_to_disk(folder, table, split, dataset_name=None):
    """The layout datasets.Dataset.save_to_disk writes."""
    folder.mkdir(parents=True)
    write_stream(folder / "data-00000-of-00001.arrow", table)
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": split}))
    info = {"citation": "", "description": "", "features": {}, "homepage": "", "license": ""}
    if dataset_name:
        info["dataset_name"] = dataset_name
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def rgb(sample):
    assert sample.image.mode == "RGB"
    return np.asarray(sample.image)


# ------------------------------------------------------------------------------ save_to_disk

def test_save_to_disk_folder(tmp_path):
    table, arrays = pope_table()
    folder = save_to_disk(tmp_path / "copy", table, "test")
    samples = load_benchmark("pope", path=folder)
    assert [s.sample_id for s in samples] == ["100", "101", "102"]
    assert [s.answers for s in samples] == [["yes"], ["no"], ["yes"]]
    assert [s.group for s in samples] == ["adversarial", "popular", "random"]
    assert samples[1].question == "Is there a thing 1 in the image?"
    assert {s.task for s in samples} == {"yes_no"} and {s.dataset for s in samples} == {"pope"}
    for sample, array in zip(samples, arrays):
        np.testing.assert_array_equal(rgb(sample), as_rgb(array))
        assert sample.box is None and sample.options is None and sample.relevance is None
    # The entry point: benchmark named explicitly, or read from dataset_info.json; limit keeps the first N.
    assert load_dataset(str(folder), benchmark="pope", limit=2) == samples[:2]
    named = save_to_disk(tmp_path / "unnamed", table, "test", dataset_name="pope")
    assert load_dataset(named) == samples
    with pytest.raises(ValueError, match="benchmark=<name>"):
        load_dataset(save_to_disk(tmp_path / "anonymous", table, "test"))


def test_save_to_disk_dataset_dict_and_splits(tmp_path):
    table, arrays = pope_table()
    root = tmp_path / "dict"
    root.mkdir()
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["adversarial", "random"]}))
    save_to_disk(root / "adversarial", table.slice(0, 1), "adversarial")
    save_to_disk(root / "random", table.slice(1, 2), "random")
    samples = load_benchmark("pope", path=root, split="random")
    assert [s.sample_id for s in samples] == ["101", "102"]
    np.testing.assert_array_equal(rgb(samples[1]), arrays[2])
    with pytest.raises(ValueError, match=r"split 'popular' not found.*'adversarial', 'random'"):
        load_benchmark("pope", path=root, split="popular")
    # No split given and the default ('test') is not there: the splits found are listed.
    with pytest.raises(ValueError, match=r"several splits.*'adversarial', 'random'"):
        load_benchmark("pope", path=root)
    # A single-split folder refuses another split by name.
    with pytest.raises(ValueError, match=r"split 'popular' not found.*splits found: \['random'\]"):
        load_benchmark("pope", path=root / "random", split="popular")


# --------------------------------------------------------------------------------- hub cache

def test_hub_cache(tmp_path, monkeypatch):
    table, arrays = pope_table()
    cache = tmp_path / "hub"
    root, snapshot = hub_snapshot(cache, "lmms-lab/POPE", {"data/test-00000-of-00001.parquet": table,
                                                           "Full/random-00000-of-00001.parquet": table.slice(2)})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    samples = load_dataset("pope")
    assert [s.sample_id for s in samples] == ["100", "101", "102"]
    np.testing.assert_array_equal(rgb(samples[2]), arrays[2])
    assert load_dataset("pope:test", limit=2) == samples[:2]
    assert load_dataset("POPE", split="test", seed=3) == samples  # runner passes seed to every loader
    # The same copy elsewhere: the repo folder (its name gives the benchmark) or the snapshot itself.
    assert load_dataset(str(root)) == samples
    assert load_benchmark("pope", path=snapshot) == samples
    other_configs = r"(?s)split 'test' not found.*splits found: \['random'\].*'data': splits \['test'\]"
    with pytest.raises(ValueError, match=other_configs):
        load_dataset("pope", split="test", config="Full")
    # Another config of the same snapshot.
    assert load_dataset("pope", split="random", config="Full") == samples[2:]


def test_hub_cache_from_hf_home(tmp_path, monkeypatch):
    table, _ = pope_table()
    hub_snapshot(tmp_path / "home" / "hub", "lmms-lab/POPE", {"data/test-00000-of-00001.parquet": table})
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert [s.sample_id for s in load_dataset("pope")] == ["100", "101", "102"]


def test_hub_cache_folder_in_another_case(tmp_path, monkeypatch):
    # lmms-eval downloads "lmms-lab/RefCOCOPlus"; the hub id is "lmms-lab/RefCOCOplus": the cache keeps the first.
    table, _ = pope_table()
    hub_snapshot(tmp_path / "hub", "lmms-lab/pope", {"data/test-00000-of-00001.parquet": table})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert [s.sample_id for s in load_dataset("pope")] == ["100", "101", "102"]


def test_missing_copy_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("pope")
    message = str(error.value)
    assert str(tmp_path / "empty-cache" / "datasets--lmms-lab--POPE" / "snapshots") in message
    assert "huggingface-cli download lmms-lab/POPE --repo-type dataset" in message
    assert "save_to_disk" in message and "$HF_HUB_CACHE" in message
    with pytest.raises(FileNotFoundError, match="ScienceQA-IMG"):
        load_dataset("scienceqa_img")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "nowhere" / "bench.jsonl"))


def test_unknown_name_lists_the_registry(tmp_path):
    with pytest.raises(ValueError) as error:
        load_dataset("popee")
    message = str(error.value)
    for name in BENCHMARKS:
        assert name in message
    assert "synthetic" in message and "path" in message
    assert set(BENCHMARKS) == {"refcoco", "refcoco+", "refcocog", "pope", "textvqa", "gqa", "vqav2", "vizwiz",
                               "scienceqa_img", "ai2d", "mme"}
    with pytest.raises(ValueError, match="refcocog"):
        load_benchmark("coco")
    with pytest.raises(TypeError, match="per_task"):
        load_dataset("pope", per_task=3)


def test_empty_dataset(tmp_path, monkeypatch):
    table, _ = pope_table()
    empty = table.slice(0, 0)
    folder = save_to_disk(tmp_path / "empty_copy", empty, "test")
    with pytest.raises(ValueError, match=r"'pope'.*empty"):
        load_benchmark("pope", path=folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_snapshot(tmp_path / "hub", "lmms-lab/POPE", {"data/test-00000-of-00001.parquet": empty})
    with pytest.raises(ValueError, match=r"'pope'.*empty"):
        load_dataset("pope")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="blank.jsonl is empty"):
        load_dataset(str(tmp_path / "blank.jsonl"))


# ------------------------------------------------------------------------- column mappings

def test_refcoco_boxes_and_one_sample_per_expression(tmp_path):
    array = pixels(200, 100, 7)  # width 200, height 100
    table = pa.table({
        "question_id": ["ann7"], "question": ["Please carefully observe the area circled..."],
        "answer": [["left dog", "the brown dog"]], "bbox": [[20.0, 10.0, 50.0, 40.0]],
        "file_name": ["COCO_1.jpg"], "image": image_column([array]),
    })
    path = tmp_path / "val-00000-of-00001.parquet"
    pq.write_table(table, path)
    samples = load_benchmark("refcoco", path=path)
    assert [s.question for s in samples] == ["left dog", "the brown dog"]
    assert [s.sample_id for s in samples] == ["ann7#0", "ann7#1"]
    # [x, y, w, h] = [20, 10, 50, 40] px on 200 x 100 -> (20/200, 10/100, 70/200, 50/100)
    for s in samples:
        assert s.box == pytest.approx((0.1, 0.1, 0.35, 0.5))
        assert s.answers == ["[0.100, 0.100, 0.350, 0.500]"] and s.task == "localization"
        np.testing.assert_array_equal(rgb(s), array)
    assert load_dataset(str(path), benchmark="refcocog", limit=1)[0].dataset == "refcocog"
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['val'\]"):
        load_benchmark("refcoco", path=path, split="test")


def test_multiple_choice_mme_vqav2_and_column_override(tmp_path):
    arrays = [pixels(5, 5, 1), pixels(4, 3, 2)]
    sqa = pa.table({"image": image_column(arrays), "question": ["Which is a mammal?", "Which is hot?"],
                    "choices": [["fish", "cat"], ["ice", "fire", "snow"]], "answer": [1, 0],
                    "hint": ["", "Think of temperature."], "subject": ["natural science", "natural science"]})
    _, snapshot = hub_snapshot(tmp_path / "hub", "lmms-lab/ScienceQA", {
        "ScienceQA-IMG/test-00000-of-00001.parquet": sqa,
        "ScienceQA-FULL/test-00000-of-00001.parquet": sqa.slice(0, 1)})
    samples = load_benchmark("scienceqa_img", cache_dir=tmp_path / "hub")
    assert [s.options for s in samples] == [["fish", "cat"], ["ice", "fire", "snow"]]
    assert [s.answers for s in samples] == [["B"], ["A"]]
    assert [s.context for s in samples] == [None, "Think of temperature."]
    assert [s.sample_id for s in samples] == ["scienceqa_img-test-000000", "scienceqa_img-test-000001"]
    assert {s.task for s in samples} == {"multiple_choice"}
    with pytest.raises(ValueError, match="ScienceQA-FULL"):
        load_benchmark("scienceqa_img", cache_dir=tmp_path / "hub", config="nope")

    mme = pa.table({"question_id": ["code/0020.png", "code/0020.png"], "image": image_column([arrays[0]] * 2),
                    "question": ["Is it Python? Please answer yes or no.", "Is it C? Please answer yes or no."],
                    "answer": ["Yes", "No"], "category": ["code_reasoning"] * 2})
    pq.write_table(mme, tmp_path / "test-00000-of-00001.parquet")
    samples = load_benchmark("mme", path=tmp_path / "test-00000-of-00001.parquet")
    assert [s.sample_id for s in samples] == ["code/0020.png", "code/0020.png#1"]
    assert [s.pair_id for s in samples] == ["code/0020.png"] * 2 and samples[1].answers == ["No"]
    assert {s.group for s in samples} == {"code_reasoning"} and {s.task for s in samples} == {"mme"}

    vqa = pa.table({"question_id": [5], "question": ["What colour?"], "image": image_column([arrays[1]]),
                    "answers": [[{"answer": "red", "answer_confidence": "yes", "answer_id": 1},
                                 {"answer": "dark red", "answer_confidence": "maybe", "answer_id": 2}]],
                    "kind": ["other"]})
    folder = save_to_disk(tmp_path / "vqa", vqa, "validation")
    sample, = load_benchmark("vqav2", path=folder, columns={"group": "kind"})
    assert sample.answers == ["red", "dark red"] and sample.group == "other" and sample.sample_id == "5"
    with pytest.raises(ValueError, match=r"column 'query'.*question_id, question, image, answers, kind"):
        load_benchmark("vqav2", path=folder, columns={"question": "query"})
    with pytest.raises(ValueError, match="allowed values"):
        load_benchmark("vqav2", path=folder, columns={"questions": "question"})


def test_gqa_images_joined_from_their_config(tmp_path):
    arrays = {"img1": pixels(3, 3, 1), "img2": pixels(4, 2, 2)}
    questions = pa.table({"id": ["q1", "q2", "q3"], "imageId": ["img2", "img1", "img2"],
                          "question": ["Q1?", "Q2?", "Q3?"], "answer": ["a", "b", "c"]})
    images = pa.table({"id": list(arrays), "image": image_column(list(arrays.values()))})
    hub_snapshot(tmp_path / "hub", "lmms-lab/GQA", {
        "testdev_balanced_instructions/testdev-00000-of-00001.parquet": questions,
        "testdev_balanced_images/testdev-00000-of-00001.parquet": images})
    samples = load_benchmark("gqa", cache_dir=tmp_path / "hub")
    assert [s.sample_id for s in samples] == ["q1", "q2", "q3"] and samples[2].answers == ["c"]
    for sample, key in zip(samples, ["img2", "img1", "img2"]):
        np.testing.assert_array_equal(rgb(sample), arrays[key])
    # A save_to_disk copy of the questions alone needs the image table's path.
    folder = save_to_disk(tmp_path / "gqa_q", questions, "testdev")
    with pytest.raises(ValueError, match="images="):
        load_benchmark("gqa", path=folder)
    image_folder = save_to_disk(tmp_path / "gqa_images", images, "testdev")
    joined = load_benchmark("gqa", path=folder, images=image_folder, limit=2)
    assert joined == samples[:2]


# ------------------------------------------------------------------------------------- JSONL

def test_jsonl_with_images(tmp_path):
    (tmp_path / "images").mkdir()
    red = pixels(8, 6, 200)
    Image.fromarray(red).save(tmp_path / "images" / "a.png")
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "b.png")
    lines = [
        {"id": "x1", "image": "images/a.png", "question": "Is it red?", "answers": "yes", "task": "yes_no",
         "group": "colour"},
        {"id": 2, "image": "b.png", "question": "the top row", "answers": ["[0, 0, 1, 0.33]", "row 1"],
         "task": "localization", "box": [0, 0, 1, 0.33], "pair_id": "p"},
        {"id": "x3", "image": "b.png", "question": "Which?", "answers": ["B"], "task": "multiple_choice",
         "options": ["dark", "bright"], "dataset": "mine"},
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    samples = load_dataset(str(path))
    assert [s.sample_id for s in samples] == ["x1", "2", "x3"]
    assert samples[0].answers == ["yes"] and samples[0].group == "colour" and samples[0].dataset == "bench"
    np.testing.assert_array_equal(rgb(samples[0]), red)
    np.testing.assert_array_equal(rgb(samples[1]), np.repeat(gray[:, :, None], 3, axis=2))
    assert samples[1].box == (0.0, 0.0, 1.0, 0.33) and samples[1].pair_id == "p"
    assert samples[1].answers == ["[0, 0, 1, 0.33]", "row 1"]
    assert samples[2].options == ["dark", "bright"] and samples[2].dataset == "mine"
    assert load_jsonl(path, limit=1) == samples[:1]
    assert load_dataset(tmp_path) == samples  # a folder with one JSONL file


@pytest.mark.parametrize("record, match", [
    ({"id": "b", "image": "a.png", "question": "Q?", "task": "vqa"}, r"line 2: missing key 'answers'.*id, image"),
    ({"id": "b", "image": "a.png", "question": "Q?", "answers": ["x"], "task": "caption"},
     r"line 2: key 'task' is 'caption'; allowed values: localization, vqa, yes_no, multiple_choice, mme, exact_match"),
    ({"id": "b", "image": "a.png", "question": "Q?", "answers": ["A"], "task": "multiple_choice"},
     r"line 2: task 'multiple_choice' needs key 'options'"),
    ({"id": "b", "image": "a.png", "question": "Q?", "answers": ["x"], "task": "localization", "box": [0, 0, 20, 20]},
     r"line 2: key 'box' must be \[x1, y1, x2, y2\] normalised"),
    ({"id": "a", "image": "a.png", "question": "Q?", "answers": ["x"], "task": "vqa"}, r"line 2: key 'id' 'a' repeats"),
    ({"id": "b", "image": "missing.png", "question": "Q?", "answers": ["x"], "task": "vqa"}, r"line 2: image"),
])
def test_bad_jsonl_line_names_file_line_and_key(tmp_path, record, match):
    Image.fromarray(pixels(2, 2, 0)).save(tmp_path / "a.png")
    good = {"id": "a", "image": "a.png", "question": "Q?", "answers": ["x"], "task": "vqa"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=match) as error:
        load_jsonl(path)
    assert str(path) in str(error.value)


# --------------------------------------------------------------------------------- synthetic

def test_synthetic_suite(tmp_path):
    scenes = generate_split("test", per_task=3)
    samples = load_dataset("synthetic", per_task=3)
    assert len(samples) == len(scenes) == 21
    for scene, sample in zip(scenes, samples):
        assert sample.sample_id == scene.sample_id and sample.group == scene.task
        assert sample.question == scene.question and sample.answers == [scene.answer]
        assert sample.task == ("localization" if scene.task == "localization" else "exact_match")
        np.testing.assert_array_equal(rgb(sample), scene.image)
        np.testing.assert_array_equal(sample.relevance, scene.relevance)
        assert sample.relevance.dtype == bool and sample.relevance.shape == (12, 12)
    localization = [s for s in samples if s.task == "localization"]
    assert len(localization) == 3
    for sample, scene in zip(localization, scenes):
        assert sample.box == scene.box_normalised and sample.answers[0].startswith("[")
        assert all(0 <= c <= 1 for c in sample.box)
    # limit: the first N of the same split; tasks choose and order the tasks.
    assert load_dataset("synthetic:test", limit=4, per_task=3) == samples[:4]
    counting = load_synthetic(per_task=2, tasks=["counting"])
    assert [s.sample_id for s in counting] == ["test-counting-000000", "test-counting-000001"]
    # The suite's on-disk form round-trips.
    write_samples(scenes, tmp_path / "scenes", "test")
    assert load_dataset(str(tmp_path / "scenes")) == samples
    assert load_synthetic(directory=tmp_path / "scenes", per_task=1, tasks=("shape",)) == [
        s for s in samples if s.group == "shape"][:1]
    with pytest.raises(ValueError, match=r"split 'validation' not found.*\['test'\]"):
        load_synthetic("validation", directory=tmp_path / "scenes")
    with pytest.raises(ValueError, match="allowed values"):
        load_synthetic(tasks=["colours"])


def test_eval_sample_checks_task():
    image = Image.new("RGB", (2, 2))
    with pytest.raises(ValueError, match="allowed values"):
        EvalSample("a", image, "Q?", ["x"], "caption", "d")
    assert EvalSample("a", image, "Q?", ["x"], "vqa", "d").task in TASKS


# ------------------------------------------------------------------- lmms-eval's downloads, subsets

def test_lmms_eval_cache_under_lmms_lab_encoder_and_pope_subsets(tmp_path, monkeypatch):
    table, _ = pope_table()
    cache = tmp_path / "hub"
    root, _ = hub_snapshot(cache, "lmms-lab-encoder/POPE", {"data/test-00000-of-00001.parquet": table,
                                                            "Full/adversarial-00000-of-00001.parquet": table.slice(0, 1),
                                                            "Full/popular-00000-of-00001.parquet": table.slice(1, 1),
                                                            "Full/random-00000-of-00001.parquet": table.slice(2)})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert [s.sample_id for s in load_dataset("pope")] == ["100", "101", "102"]
    for subset, ids in [("adversarial", ["100"]), ("popular", ["101"]), ("random", ["102"])]:
        assert [s.sample_id for s in load_dataset(f"pope:{subset}")] == ids  # config "Full", as lmms-eval's pope_full
    assert load_dataset(str(root))[0].dataset == "pope"  # the folder name gives the benchmark
    with pytest.raises(ValueError, match=r"split='adversarail' does not exist.*'adversarial', 'popular', 'random'"):
        load_dataset("pope:adversarail")


def test_the_lmms_lab_copy_is_preferred_and_a_missing_copy_names_both(tmp_path, monkeypatch):
    table, _ = pope_table()
    cache = tmp_path / "hub"
    hub_snapshot(cache, "lmms-lab/POPE", {"data/test-00000-of-00001.parquet": table.slice(0, 1)})
    hub_snapshot(cache, "lmms-lab-encoder/POPE", {"data/test-00000-of-00001.parquet": table})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert len(load_dataset("pope")) == 1
    with pytest.raises(FileNotFoundError, match=r"datasets--lmms-lab--MME.*lmms-lab-encoder/MME"):
        load_dataset("mme")


def test_textvqa_ocr_tokens_become_the_context(tmp_path):
    table = pa.table({"question_id": ["7"], "question": ["what brand?"], "answers": [["sony"] * 10],
                      "ocr_tokens": [["sony", "tv"]], "image": image_column([pixels(4, 4, 1)])})
    (sample,) = load_benchmark("textvqa", path=save_to_disk(tmp_path / "t", table, "validation"))
    assert sample.context == "sony, tv"
