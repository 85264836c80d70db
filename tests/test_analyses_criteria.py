"""FEATHER's criteria (analyses.criteria): the settings, the preset FLOPs against Table 1, the table's
aggregation, and the kept cells drawn for the examples."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis_lib import stats
from analysis_lib.analyses import criteria, study
from analysis_lib.evaluation.datasets import load_dataset
from analysis_lib.evaluation.runner import load_eval_model


@pytest.fixture(scope="module")
def embedded():
    return load_eval_model("data/embedded-model")


def test_knn_keeps_as_many_tokens_as_the_stride_2_grid():
    assert criteria.matched_knn_ratio((27, 27)) == pytest.approx(1 - 196 / 729)
    assert criteria.matched_knn_ratio((12, 12)) == pytest.approx(0.75)
    assert criteria.matched_knn_ratio((5, 5)) == pytest.approx(1 - 9 / 25)


def test_arms_cover_every_criterion_at_every_layer():
    arms = criteria.criterion_arms([3, 8], 32, 0.75, (12, 12))
    assert [a.setting.method for a in arms] == ["none"] + list(criteria.CRITERIA) * 2
    assert arms[0].name == study.UNPRUNED and arms[0].coords == {"criterion": study.UNPRUNED, "paper_K": 0}
    assert len({a.name for a in arms}) == len({a.setting.label for a in arms}) == len(arms)
    for a in arms[1:]:
        assert a.coords["criterion"] == criteria.CRITERIA[a.setting.method]
        assert a.setting.params["K"] == a.coords["paper_K"] / 32 and a.coords["paper_K"] in (3, 8)
        (layer, _), *_ = a.setting.schedule().resolve(32)
        assert layer in ((0,) if a.setting.method == "before_llm" else (3, 8))
        a.setting.schedule().resolve(6)  # fits the embedded model too
    knn = [a.setting for a in arms if a.setting.method == "knn"][0]
    assert knn.params["R"] == pytest.approx(0.75)
    assert [a.setting for a in arms if a.setting.method == "before_llm"][0].params["criterion"] == "fastv_norope"


def test_preset_flops_reproduce_feather_table_1():
    """Table 1's FLOPs reductions (whole percent, truncated): K=3: 68 / 68 / 66 / 66 / 61; K=8: 56 / 56 / 55 /
    55 / 50 for φ_original, φ-R, φ_KNN, φ_uniform, φ-R + φ_uniform."""
    flops = criteria.preset_flops([3, 8], 32, 0.75).set_index(["criterion", "paper_K"])
    percent = (100 * flops.preset_flops_reduction).map(math.floor)
    expected = {"φ_original": (68, 56), "φ-R": (68, 56), "φ_KNN": (66, 55), "φ_uniform": (66, 55),
                "φ-R + φ_uniform": (61, 50)}
    for name, (k3, k8) in expected.items():
        assert (percent[(name, 3)], percent[(name, 8)]) == (k3, k8), name
    assert flops.preset_kept[("φ_uniform", 3)] == 196 and flops.preset_kept[("φ-R", 8)] == 182
    assert flops.preset_kept[("φ-R + φ_uniform", 3)] == pytest.approx(243, abs=2)


def _rows():
    """Rows as ``study.run`` labels them: the unpruned arm, φ_original at K=3 and φ_uniform at K=8, each on
    a localization and a colour sample."""
    return study.tidy(pd.DataFrame({
        "dataset": "synthetic", "group": ["localization", "colour"] * 3,
        "sample_id": ["a", "b", "a", "b", "a", "b"],
        "method": ["none", "none", "fastv", "fastv", "uniform", "uniform"],
        "arm": [study.UNPRUNED] * 2 + ["φ_original K=3"] * 2 + ["φ_uniform K=8"] * 2,
        "criterion": [study.UNPRUNED] * 2 + ["φ_original"] * 2 + ["φ_uniform"] * 2,
        "paper_K": [0, 0, 3, 3, 8, 8],
        "task": ["localization", "exact_match"] * 3,
        "score": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0],
        "relevant_kept": [1.0, 1.0, 0.2, 0.6, 0.5, 0.3],
        "kept_counts": [[], [], [36], [36], [36], [40]],
        "kept": [[], [], [[0, 13]], [[1]], [[143]], [[2]]],
        "n_visual": [144] * 6,
        "flops_reduction": [0.0, 0.0, 0.58, 0.58, 0.46, 0.44]}))


def test_criteria_table_aggregates_per_criterion_layer_and_family():
    preset = pd.DataFrame({"criterion": ["φ_original"], "paper_K": [3], "preset_kept": [182],
                           "preset_flops_reduction": [0.686]})
    table = criteria.criteria_table(_rows(), preset).set_index(["criterion", "paper_K"])
    assert list(table.index) == [("unpruned", 0), ("φ_original", 3), ("φ_uniform", 8)]
    assert table.accuracy_localization[("φ_original", 3)] == 0.0
    assert table.accuracy_other[("φ_original", 3)] == 1.0
    assert table.accuracy_all[("φ_uniform", 8)] == 0.5
    assert table.relevant_kept_localization[("φ_uniform", 8)] == 0.5
    assert table.relevant_kept_all[("φ_original", 3)] == pytest.approx(0.4)
    assert table.kept_tokens[("unpruned", 0)] == 144 and table.kept_tokens[("φ_uniform", 8)] == 38
    assert table.flops_reduction[("φ_uniform", 8)] == pytest.approx(0.45)
    assert table.preset_kept[("φ_original", 3)] == 182 and np.isnan(table.preset_kept[("unpruned", 0)])
    assert table.accuracy_localization_ci_high[("φ_original", 3)] == pytest.approx(stats.wilson(0, 1)[1])


def test_summary_states_accuracies_and_changes_with_intervals():
    rows = _rows()
    preset = criteria.preset_flops([3, 8], 32, 0.75)
    text = criteria.summary(criteria.criteria_table(rows, preset), rows)
    assert "Unpruned: localization accuracy 1.00 [0.21, 1.00], other tasks 1.00 [0.21, 1.00] (2 samples)" in text
    assert "φ_original 0.00 [0.00, 0.79] / 1.00 [0.21, 1.00] / 40% at 58% FLOPs reduction" in text
    assert "Localization minus unpruned on the same samples: φ_original -1.00 [-1.00, -1.00]." in text
    assert "Most relevant tokens kept on localization: φ_uniform (50%)" in text


def test_examples_prefer_localization_samples():
    samples = load_dataset("synthetic", split="test", per_task=2)
    chosen = criteria.example_samples(samples, 3)
    assert len(chosen) == 2 and all(s.task == "localization" and s.box for s in chosen)
    others = [s for s in samples if s.task != "localization"]
    assert criteria.example_samples(others, 3) == others[:3]


def test_kept_cells_map_recorded_indices_to_grid_cells(embedded):
    samples = load_dataset("synthetic", split="test", per_task=1)[:2]
    rows = _rows().assign(sample_id=[s.sample_id for s in samples] * 3)
    cells = criteria.kept_cells(embedded, rows, samples)
    first = cells[(cells.sample_id == samples[0].sample_id) & (cells.criterion == "φ_original")]
    assert sorted(zip(first.row, first.col)) == [(0, 0), (1, 1)]
    last = cells[(cells.sample_id == samples[0].sample_id) & (cells.criterion == "φ_uniform")]
    assert list(zip(last.row, last.col)) == [(11, 11)] and set(last.paper_K) == {8}
    assert set(cells.criterion) == {"φ_original", "φ_uniform"}  # unpruned rows are not drawn
    assert (cells.grid_rows == 12).all() and (cells.grid_cols == 12).all()


def test_arms_run_labelled_and_their_kept_cells_are_the_recorded_indices(embedded, tmp_path):
    """``study.run`` on the embedded checkpoint: every row carries its arm's criterion and paper K; the cells
    drawn for a criterion are the kept indices its last stage recorded."""
    samples = load_dataset("synthetic", split="test", per_task=1)[:2]
    arms = criteria.criterion_arms([3], 32, 0.75, (12, 12))
    rows = study.run(embedded, [("synthetic", samples)], arms, tmp_path, batch_size=2)
    assert rows.groupby("arm", sort=False).size().to_dict() == {a.name: 2 for a in arms}
    labels = rows.groupby("arm", sort=False)[["criterion", "paper_K"]].first()
    assert labels.to_dict("index") == {a.name: a.coords for a in arms}
    cells = criteria.kept_cells(embedded, rows, samples)
    assert set(cells.criterion) == set(criteria.CRITERIA.values()) - {criteria.CRITERIA["before_llm"]}
    for _, row in rows[rows.criterion.isin(set(cells.criterion))].iterrows():
        drawn = cells[(cells.criterion == row.criterion) & (cells.sample_id == row.sample_id)]
        assert 0 < len(drawn) == len(row.kept[-1]) < 144


def test_kept_tokens_figure_washes_out_the_pruned_cells():
    from PIL import Image

    from analysis_lib.evaluation.datasets import EvalSample

    sample = EvalSample("s", Image.new("RGB", (96, 96)), "where?", ["[0, 0, 1, 1]"], "localization", "synthetic",
                        box=(0.5, 0.5, 1.0, 1.0))
    cells = pd.DataFrame({"sample_id": "s", "criterion": ["φ-R", "φ_uniform"], "paper_K": 3, "row": [0, 1],
                          "col": [0, 1], "grid_rows": 2, "grid_cols": 2})
    fig = criteria.kept_tokens_figure(cells, [sample], 3)
    assert [ax.get_ylabel() for ax in fig.axes] == ["φ-R", "φ_uniform"]
    fig.canvas.draw()
    ax = fig.axes[0]
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = pixels.shape[0]

    def brightness(x, y):  # data coordinates (0..1, top = 0) -> pixel brightness
        px, py = ax.transData.transform((x, y))
        return pixels[height - int(py), int(px)].sum()
    assert brightness(0.25, 0.25) < 50  # kept: the black image itself
    assert brightness(0.75, 0.25) > 400  # pruned: washed out
    assert len(ax.patches) == 1  # the target box
