"""The rehearsal: the stand-in and benchmark copies built offline, then all seven notebooks run on the
``rehearsal`` profile (llava-1.5-7b's settings, capped) at LLaVA-1.5-7B's geometry: what ``make rehearsal`` runs."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest
from transformers import AutoConfig

from analysis_lib.analyses import study
from analysis_lib.evaluation.datasets import BENCHMARKS, load_benchmark
from analysis_lib.notebooks.availability import dataset_specs
from analysis_lib.notebooks.batch import read_profile, run_batch
from analysis_lib.notebooks.parameters import NOTEBOOKS
from analysis_lib.rehearsal import build

LOCALIZATION = ("refcoco", "refcoco+", "refcocog")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Build into a temporary folder and run the rehearsal profile there (a profile on top of it naming
    the folder); returns the folder (model/, hub/, out/, run/)."""
    folder = tmp_path_factory.mktemp("rehearsal")
    built = build(folder)
    profile = folder / "here.yaml"
    profile.write_text(f"base: rehearsal\nhub_cache: {built['hub']}\ncommon: {{model: {built['model']}}}\n")
    run_batch(profile, run_dir=folder / "run", root=folder / "out", progress=False, jobs=2)
    return folder


def test_the_stand_in_has_llava_1_5_7b_geometry_and_processor(rehearsal):
    config = AutoConfig.from_pretrained(rehearsal / "model")
    assert config.text_config.num_hidden_layers == 32 and config.image_seq_length == 576
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    image = json.loads((rehearsal / "model" / "processor_config.json").read_text())["image_processor"]
    assert image["size"] == {"shortest_edge": 336} and image["crop_size"] == {"height": 336, "width": 336}
    executed = nbformat.read(rehearsal / "run" / "01_positional_bias.ipynb", as_version=4)
    assert "2 samples, 32 decoder layers" in json.dumps([c.get("outputs") for c in executed.cells])
    cells = pd.read_parquet(rehearsal / "out" / "data" / "results" / "05_criteria" / "kept_cells.parquet")
    assert set(cells.grid_rows) == set(cells.grid_cols) == {24}  # 576 visual tokens


def test_every_benchmark_copy_reads_back_in_its_lmms_eval_layout(rehearsal):
    for name in BENCHMARKS:
        samples = load_benchmark(name, cache_dir=rehearsal / "hub")
        assert len(samples) >= 2 and {s.image.mode for s in samples} == {"RGB"}, name
    refcoco = load_benchmark("refcoco", cache_dir=rehearsal / "hub", split="testA")
    assert refcoco[0].box == pytest.approx((0.1, 0.1, 0.5, 0.5))  # [64, 48, 256, 192] px on 640 x 480
    adversarial = load_benchmark("pope", split="adversarial", cache_dir=rehearsal / "hub")  # config "Full"
    assert [s.sample_id for s in adversarial] == ["1", "2", "3"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_writes_well_formed_tables_and_figures(rehearsal, name):
    figures = list((rehearsal / "out" / "figures" / name).iterdir())
    assert figures and all(p.stat().st_size > 0 for p in figures)
    assert {p.stem for p in figures if p.suffix == ".pdf"} == {p.stem for p in figures if p.suffix == ".png"}
    tables = sorted((rehearsal / "out" / "data" / "results" / name).glob("*.parquet"))
    assert tables
    for path in tables:
        table = pd.read_parquet(path)
        assert len(table) and path.with_suffix(".csv").stat().st_size > 0, path.name
        accuracies = [c for c in table.columns if c == "accuracy" or c.startswith("accuracy_")
                      and not c.endswith(("_ci_low", "_ci_high"))]  # 05 has one per family, its data's non-empty
        assert not accuracies or any(table[c].notna().any() for c in accuracies), path.name
        for column in accuracies:
            low, high = ("ci_low", "ci_high") if column == "accuracy" else (f"{column}_ci_low", f"{column}_ci_high")
            shown = table[table[column].notna()]
            assert (shown[low] <= shown[column] + 1e-9).all(), (path.name, column)
            assert (shown[column] <= shown[high] + 1e-9).all() and shown[high].le(1).all(), (path.name, column)


def test_the_localization_split_is_the_refcoco_family_and_each_notebook_sees_its_benchmarks(rehearsal):
    results = rehearsal / "out" / "data" / "results"
    by_ratio = pd.read_parquet(results / "02_where_pruning_hurts" / "accuracy_vs_ratio.parquet")
    unpruned = by_ratio[by_ratio.arm == study.UNPRUNED].set_index("family").samples
    settings = read_profile("rehearsal").settings["02_where_pruning_hurts"]
    named = dataset_specs("02_where_pruning_hurts", settings)
    assert unpruned[study.LOCALIZATION] == 2 * len(LOCALIZATION)  # two samples of each
    assert unpruned[study.OTHER] == 2 * (len(named) - len(LOCALIZATION))
    per_task = pd.read_parquet(results / "02_where_pruning_hurts" / "accuracy_vs_ratio_per_task.parquet")
    assert set(per_task.dataset) == set(named)
    leakage = pd.read_parquet(results / "04_benchmark_leakage" / "leakage.parquet")
    assert set(leakage.dataset) >= set(read_profile("rehearsal").settings["04_benchmark_leakage"]["extra_datasets"])
    relevant = pd.read_parquet(results / "04_benchmark_leakage" / "relevant_kept_vs_accuracy.parquet")
    relevant = relevant[relevant.task_name == "refcoco"].set_index("arm").relevant_kept
    assert relevant[study.UNPRUNED] == 1.0 and relevant["text_only"] == 0.0 and 0 < relevant["fastv"] < 1
