"""Task families: each benchmark declares one, and every analysis splits "localization vs others" by it."""
import json

import pandas as pd
import pytest

from analysis_lib.analyses import accuracy, criteria, dispersion, study
from analysis_lib.evaluation.datasets import BENCHMARKS, FAMILIES, Benchmark, task_family

EXPECTED = {"refcoco": "localization", "refcoco+": "localization", "refcocog": "localization", "pope": "yes_no",
            "textvqa": "vqa", "gqa": "vqa", "vqav2": "vqa", "vizwiz": "vqa", "scienceqa_img": "multiple_choice",
            "ai2d": "multiple_choice", "mme": "mme"}


def test_every_benchmark_declares_its_family():
    assert {k: b.task_family for k, b in BENCHMARKS.items()} == EXPECTED
    assert BENCHMARKS["gqa"].task == "exact_match"  # scored by exact match, counted as VQA


def test_a_benchmark_with_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="family.*'captioning'.*localization"):
        Benchmark("x", "o/x", None, "test", "vqa", {}, family="captioning")


@pytest.mark.parametrize("dataset, task, family", [
    ("refcoco", "localization", "localization"), ("RefCOCO+:testA", "localization", "localization"),
    ("refcoco_plus", "localization", "localization"),
    ("/data/hub/datasets--lmms-lab--RefCOCOg/snapshots/abc", "localization", "localization"),
    ("/copies/datasets--lmms-lab-encoder--GQA", "exact_match", "vqa"), ("gqa:testdev", "exact_match", "vqa"),
    ("data/pope.jsonl", "yes_no", "yes_no"), ("scienceqa", "multiple_choice", "multiple_choice"),
    ("synthetic", "localization", "localization"), ("synthetic:validation", "exact_match", "exact_match"),
    ("my_boxes.jsonl", "localization", "localization"), ("gqa", "localization", "localization"), (None, "vqa", "vqa"),
])
def test_task_family_of_names_paths_and_other_data(dataset, task, family):
    assert task_family(dataset, task) == family
    assert family in FAMILIES


def _rows(spec):
    """Raw run_grid-shaped rows: (dataset, task, group, scores)."""
    out = []
    for dataset, task, group, scores in spec:
        out += [{"dataset": dataset, "task": task, "group": group, "sample_id": f"{dataset}-{i}", "score": s,
                 "n_visual": 4, "kept": json.dumps([]), "kept_counts": json.dumps([]), "relevant_kept": None}
                for i, s in enumerate(scores)]
    return pd.DataFrame(out)


MIXED = [("refcoco", "localization", None, [1, 0]), ("refcoco+:testA", "localization", None, [1, 1]),
         ("pope", "yes_no", "adversarial", [1, 1, 1, 0]), ("gqa", "exact_match", None, [0]),
         ("textvqa", "vqa", None, [1, 0, 0, 0])]


def test_tidy_splits_real_datasets_by_benchmark_family():
    rows = study.tidy(_rows(MIXED))
    by_dataset = rows.groupby("dataset", sort=False).family.first().to_dict()
    assert by_dataset == {"refcoco": "localization", "refcoco+:testA": "localization", "pope": "other tasks",
                          "gqa": "other tasks", "textvqa": "other tasks"}
    table = study.accuracy_table(rows.assign(arm="a"), ["arm"], "family").set_index("family")
    assert table.accuracy[study.LOCALIZATION] == pytest.approx((0.5 + 1.0) / 2)  # the two RefCOCO sets alike
    assert table.accuracy[study.OTHER] == pytest.approx((0.75 + 0 + 0.25) / 3)
    assert table.samples[study.LOCALIZATION] == 4 and table.samples[study.OTHER] == 9


def test_tidy_splits_the_synthetic_suite_by_its_localization_task():
    rows = study.tidy(_rows([("synthetic", "localization", "localization", [1]),
                             ("synthetic", "exact_match", "colour", [0, 1])]))
    assert rows.family.tolist() == [study.LOCALIZATION, study.OTHER, study.OTHER]
    assert rows.task_name.tolist() == ["localization", "colour", "colour"]


def _arm_rows(spec):
    rows = study.tidy(_rows(spec))
    return pd.concat([rows.assign(arm=study.UNPRUNED), rows.assign(arm="fastv", R=0.5)], ignore_index=True)


def test_localization_vs_rest_on_real_data_reports_refcoco_against_the_rest():
    table = accuracy.localization_vs_rest(_arm_rows(MIXED))
    assert set(table.family) == {study.LOCALIZATION, study.OTHER, study.ALL}
    local = table[(table.arm == study.UNPRUNED) & (table.family == study.LOCALIZATION)].iloc[0]
    assert local.samples == 4 and local.accuracy == pytest.approx(0.75)


NO_LOCALIZATION = [("pope", "yes_no", "random", [1, 0]), ("textvqa", "vqa", None, [1])]


@pytest.mark.parametrize("analysis", [
    accuracy.localization_vs_rest,
    lambda rows: criteria.criteria_table(rows, pd.DataFrame()),
    lambda rows: accuracy.quartile_table(rows.assign(q=1, paper_K=2, layer=1)),
])
def test_a_split_without_a_localization_dataset_is_refused_with_the_reason(analysis):
    with pytest.raises(ValueError, match=r"dataset: .* splits localization .*\(pope, textvqa\) have no "
                                         r"localization samples; add one of refcoco, refcoco\+, refcocog"):
        analysis(_arm_rows(NO_LOCALIZATION))


def test_the_dispersion_pruning_accuracy_on_pope_alone_reports_the_other_tasks():
    """VisPruner Fig. 3c compares the attentions on POPE: no localization family, no relevant tokens."""
    rows = study.tidy(_rows(NO_LOCALIZATION)).assign(R=0.0, criterion=study.UNPRUNED, relevant_kept=float("nan"))
    pruned = [rows.assign(R=0.5, criterion=c) for c in ("[CLS]", "last")]
    rows = pd.concat([rows, *pruned], ignore_index=True)
    table = dispersion.pruning_accuracy(rows)
    assert set(table.family) == {study.OTHER, study.ALL}
    assert len(dispersion.accuracy_figure(table).axes) == 1  # other tasks; no localization, no relevant panel
    stats = pd.DataFrame({"kind": ["[CLS]"], "top_fraction": 0.2, "entropy": [0.5], "top_mass": [0.8], "peak": [9.0],
                          "top_mass_uniform": 0.2})
    layers = pd.DataFrame({"layer": [0], "kind": "received", "top_mass": [0.3], "entropy": [0.95]})
    text = dispersion.summary(stats, layers, table, rows)
    assert "Unpruned accuracy: other tasks 0.75" in text and "localization" not in text  # tasks 0.5 and 1
    assert "(other tasks accuracy / relevant tokens kept)" in text and "/ n/a" in text
