"""Methods at matched budgets (notebook 06): the matching logic, the aggregations and the figures."""
import math
from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from analysis_lib import stats
from analysis_lib.analyses import methods as compare
from analysis_lib.evaluation.datasets import load_dataset
from analysis_lib.evaluation.runner import MethodSetting, load_eval_model
from analysis_lib.flops import LMDims, schedule_flops

GEO = compare.Geometry(LMDims(hidden=128, intermediate=384, layers=6), (12, 12), 22)
ALL = ["fastv", "pyramiddrop", "feather", "fopru", "fopru_row", "fopru_fastv", "vispruner", "prumerge",
       "prumerge_plus", "random"]


@pytest.fixture(scope="module")
def plan():
    return {(b.name, b.keep_fraction): b for b in compare.matched_settings(ALL, [0.5, 0.25, 0.1], GEO)}


def test_solve_finds_the_parameter_in_either_direction_and_stops_at_the_ends():
    assert compare.solve(lambda x: x * x, 0.25, 0.0, 1.0) == 0.5
    assert compare.solve(lambda x: 1 - x, 0.3, 0.0, 1.0) == 0.7
    assert compare.solve(lambda x: x, 5.0, 0.0, 0.99) == 0.99  # out of reach: the closest end


def test_paper_layers_are_the_registry_defaults_as_fractions_of_depth():
    assert compare.paper_layers("pyramiddrop", 32) == {"K1": 0.25, "K2": 0.5, "K3": 0.75}
    assert compare.paper_layers("fopru_fastv", 32) == {"K": 2 / 32}
    assert compare.paper_layers("random", 32) == {}  # K=0: before the LLM


def test_single_stage_methods_keep_the_fraction(plan):
    assert plan["unpruned", 1.0].setting == MethodSetting("none")
    assert plan["fastv", 0.25].setting.params == {"K": 2 / 32, "R": 0.75}
    assert plan["fastv", 0.25].layers == (1,)
    assert plan["fopru", 0.25].setting.params == {"R": 0.75}
    assert plan["fopru_row", 0.25].setting == MethodSetting("fopru", {"strategy": "row", "R": 0.75})
    assert plan["vispruner", 0.1].setting.params == {"keep": 0.1}
    for name in ("prumerge", "prumerge_plus"):  # the official non-adaptive branch, FoPru Table 2's retention
        assert plan[name, 0.25].setting == MethodSetting(name, {"keep": 0.25})
        assert plan[name, 0.25].layers == (0,) and plan[name, 0.25].final_kept == 36
    assert plan["random", 0.1].setting.params == {"R": 0.9}
    assert plan["fopru_fastv", 0.25].setting.params == {"K": 2 / 32, "R": 0.5, "R_llm": 0.5}
    # keeping 25% before the LLM on 12x12: 36 tokens in every layer
    expected = schedule_flops(GEO.dims, 144, 22, [(0, 36)]).reduction
    assert plan["fopru", 0.25].nominal_reduction == pytest.approx(expected)
    assert math.isnan(plan["fopru", 0.25].target_reduction) and plan["fopru", 0.25].matched


def test_multi_stage_methods_match_fastvs_flops_or_say_they_cannot(plan):
    for name in ("pyramiddrop", "feather"):
        entry = plan[name, 0.5]
        assert entry.target_reduction == pytest.approx(plan["fastv", 0.5].nominal_reduction)
        assert entry.matched and abs(entry.nominal_reduction - entry.target_reduction) <= compare.MATCH_TOLERANCE
    assert plan["pyramiddrop", 0.5].layers == (2, 3, 5)
    # at 10% FastV prunes after layer 1 of 6; the first stage at layer 2 cannot reach its FLOPs
    far = plan["feather", 0.1]
    assert far.setting.params["R"] == 0.99 and not far.matched and far.nominal_reduction < far.target_reduction
    assert plan["pyramiddrop", 0.1].setting.params["lam"] == 0.01


def test_a_budget_reached_only_by_keeping_one_token_is_not_matched(plan):
    """At 25% on 6 layers both multi-stage methods reach FastV's FLOPs, but only by keeping 1 token."""
    for name in ("pyramiddrop", "feather"):
        entry = plan[name, 0.25]
        assert abs(entry.nominal_reduction - entry.target_reduction) <= compare.MATCH_TOLERANCE
        assert entry.final_kept == 1 and not entry.matched
    assert plan["feather", 0.5].final_kept == 36 and plan["feather", 0.5].matched
    assert plan["fastv", 0.25].final_kept == 36 and plan["fopru", 0.25].final_kept == 36


def test_unknown_method_or_fraction_is_rejected():
    with pytest.raises(ValueError, match="method='fastvv'"):
        compare.matched_settings(["fastvv"], [0.5], GEO)
    with pytest.raises(ValueError, match="keep fraction=1.0"):
        compare.matched_settings(["fastv"], [1.0], GEO)
    with pytest.raises(ValueError, match="method='dart'.*allowed.*prumerge_plus"):  # counts only, not FLOPs
        compare.matched_settings(["dart"], [0.5], GEO)


def _rows() -> pd.DataFrame:
    rows = []
    for name, f, loc, other, kept in (("unpruned", 1.0, [1, 0], [1, 1, 0, 1], []),
                                      ("fastv", 0.5, [0, 0], [1, 0, 0, 1], [72]),
                                      ("fopru", 0.5, [1, 1], [1, 1, 1, 0], [72])):
        common = {"dataset": "synthetic", "name": name, "keep_fraction": f, "flops_reduction": 0.4,
                  "kept_counts": kept, "matched": True}
        rows += [{**common, "sample_id": f"l{i}", "task": "localization", "task_name": "localization",
                  "family": "localization", "score": s, "relevant_kept": 0.5 if name != "unpruned" else 1.0}
                 for i, s in enumerate(loc)]
        rows += [{**common, "sample_id": f"o{i}", "task": "exact_match", "task_name": g, "family": "other tasks",
                  "score": s, "relevant_kept": None}
                 for i, (s, g) in enumerate(zip(other, ["colour", "colour", "shape", "shape"]))]
    return pd.DataFrame(rows)


def test_accuracy_table_by_family_and_task():
    family = compare.accuracy_table(_rows()).set_index(["name", "family"])
    assert family.loc[("fopru", "localization"), "accuracy"] == 1.0
    assert family.loc[("fastv", "other tasks"), "accuracy"] == 0.5
    assert family.loc[("unpruned", "localization"), "samples"] == 2
    assert family.loc[("fastv", "localization"), "ci_high"] == pytest.approx(stats.wilson(0, 2)[1])
    task = compare.accuracy_table(_rows(), by="task_name").set_index(["name", "task_name"])
    assert task.loc[("fopru", "shape"), "accuracy"] == 0.5
    assert list(dict.fromkeys(task.index.get_level_values(0))) == ["unpruned", "fastv", "fopru"]  # plan order


def test_budget_table_means_the_measured_reduction_and_kept_counts():
    plan = compare.matched_settings(["fastv", "fopru"], [0.5], GEO)
    rows = _rows()
    rows["kept_counts"] = [[74] if i == 6 else [70] if n == "fastv" else k
                           for i, (n, k) in enumerate(zip(rows.name, rows.kept_counts))]
    budget = compare.budget_table(plan, rows).set_index("name")
    assert budget.loc["fastv", "kept_per_stage"] == [pytest.approx(70 + 4 / 6, abs=0.05)]
    assert budget.loc["unpruned", "kept_per_stage"] == []
    assert budget.loc["fopru", "flops_reduction"] == pytest.approx(0.4)


def test_summary_ranks_each_family_with_numbers():
    plan = compare.matched_settings(["fastv", "fopru"], [0.5], GEO)
    budget = compare.budget_table(plan, _rows())
    text = compare.summary(budget, compare.accuracy_table(_rows()), compare.versus(_rows(), "fastv", "keep_fraction"))
    assert "localization, accuracy over 2 samples (unpruned 0.50 [0.09, 0.91]): fopru 1.00 [0.34, 1.00], fastv 0.00" in text
    assert "other tasks, accuracy over 4 samples (unpruned 0.75 [" in text
    assert "minus FastV on the same samples: fopru +1.00 [+1.00, +1.00]." in text
    assert "FastV's FLOPs reduction 40%" in text


def test_accuracy_figure_has_a_line_per_method():
    fig = compare.accuracy_figure(compare.accuracy_table(_rows()))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["unpruned", "fastv", "fopru"]
    plt.close(fig)


@pytest.fixture(scope="module")
def embedded():
    em = load_eval_model("data/embedded-model")
    samples = load_dataset("synthetic", split="test", per_task=1)
    return em, samples


DEEP = compare.Geometry(LMDims(hidden=128, intermediate=384, layers=32), (24, 24), 40)


@pytest.mark.parametrize("geo, fastv, feather, pyramiddrop", [(GEO, [1], [2, 3], [2, 3, 5]),
                                                              (DEEP, [2], [8, 16], [8, 16, 24])])
def test_paper_settings_keep_their_relative_depth(geo, fastv, feather, pyramiddrop):
    depth = geo.dims.layers
    frame = compare.arm_frame(compare.paper_arms(["fastv", "fastv_feather", "feather", "pyramiddrop"]), depth)
    layers = dict(zip(frame.name, frame.layers))
    assert layers == {"unpruned": [], "fastv": fastv, "fastv_feather": [max(1, round(3 / 32 * depth))],
                      "feather": feather, "pyramiddrop": pyramiddrop}
    assert compare.published("fastv_feather") == ("fastv", {"K": 3, "R": 0.75})
    assert compare.published("feather")[1] == {"K1": 8, "K2": 16, "R": 0.7, "stride": 3}


def test_paper_settings_scale_token_counts_and_keep_the_rest_as_published():
    vispruner = compare.paper_setting("vispruner")
    assert vispruner == MethodSetting("vispruner", {"keep": 64 / 576})
    assert compare.final_kept(vispruner, GEO) == 16  # 1/9 of 12x12, as 64 of 24x24
    assert compare.paper_setting("fopru_row") == MethodSetting("fopru", {"strategy": "row"})  # R=0.75 is the default
    assert compare.paper_setting("pyramiddrop").params == {"K1": 0.25, "K2": 0.5, "K3": 0.75}
    assert compare.paper_setting("vispruner", paper_tokens=288).params == {"keep": 64 / 288}
    assert compare.paper_setting("visionzip") == MethodSetting("visionzip", {"keep": 64 / 576})
    for name in ("prumerge", "prumerge_plus"):  # keep=0, the adaptive count, is not a count to scale
        assert compare.paper_setting(name) == MethodSetting(name, {})
    assert compare.paper_setting("dart") == MethodSetting("dart", {"K": 2 / 32})  # after layer 2 of 32, as FastV
    assert compare.paper_setting("divprune") == MethodSetting("divprune", {})  # R=0.902 before the LLM
    assert compare.final_kept(compare.paper_setting("dart"), GEO) == 32  # 128 of 576, scaled


def test_bad_paper_settings_are_rejected_by_name():
    with pytest.raises(ValueError, match="paper setting='fastvv'"):
        compare.paper_arms(["fastvv"])
    with pytest.raises(ValueError, match="paper settings: fastv given more than once"):
        compare.paper_arms(["fastv", "fastv"])
    with pytest.raises(ValueError, match="keep"):
        compare.paper_setting("vispruner", paper_tokens=32)  # 64 of 32 tokens: more than all


@pytest.fixture(scope="module")
def counted():
    return compare.count_arms(list(compare.COUNTED), [128, 64, 32], GEO)


def test_every_method_of_both_tables_has_a_count_rule():
    table1 = {"fastv", "vispruner", "visionzip", "prumerge_plus", "divprune", "dart", "sparsevlm", "tome", "random"}
    assert set(compare.SUPPORTED) | table1 | {"prumerge"} == set(compare.COUNTED)
    assert not set(compare.COUNT_RULES) & set(compare.DIRECT_COUNTS)
    assert set(compare.DIRECT_COUNTS.values()) <= set(compare.COUNT_PARAMETERS)


def test_matched_counts_keep_the_same_nominal_count_after_the_last_stage(counted):
    arms = counted[1:]
    assert counted[0].name == "unpruned" and counted[0].coords["kept_count"] == 144
    assert {a.coords["kept_count"] for a in arms} == {32, 16, 8}  # 128/64/32 of 576, scaled to 144
    for arm in arms:
        nominal = compare.final_kept(arm.setting, GEO)
        assert nominal == arm.coords["nominal_kept"]
        if arm.name not in ("fopru_row", "sparsevlm"):
            assert nominal == arm.coords["kept_count"], arm
    rows = {(a.name, a.coords["kept_count"]): a for a in arms}
    # SparseVLM's 64 is its mean over the layers: 66, 30, 17 of 576 (+ recycled) -> 16, 7, 4 (+1) of 144
    assert rows["sparsevlm", 16].setting.params == {"keep": 64 / 576, "K1": 3 / 32, "K2": 7 / 32, "K3": 16 / 32}
    assert rows["sparsevlm", 16].setting.label == compare.paper_setting("sparsevlm").label
    assert rows["sparsevlm", 16].coords["nominal_kept"] < 16
    for name in ("vispruner", "visionzip", "prumerge", "prumerge_plus"):
        # the paper's 64 of 576 keeps exactly 16 of 144: its published fraction, the same run as paper_setting
        assert rows[name, 16].setting.params == {"keep": 64 / 576}
        assert rows[name, 16].setting.label == compare.paper_setting(name).label or name.startswith("prumerge")
    uneven = compare.count_arms(["vispruner"], [64], replace(GEO, same_tokens=False))
    assert uneven[1].setting.params == {"keep": 16}  # varying token counts: the count itself
    assert rows["dart", 16].setting.params["K"] == 2 / 32 and 0.8 < rows["dart", 16].setting.params["R"] < 0.9
    assert rows["divprune", 8].setting.params.keys() == {"R"}
    assert rows["pyramiddrop", 16].setting.params["K1"] == 0.25  # the paper's layers, scaled
    # whole rows of 12 tokens: 8 is out of reach, the closest is one row
    assert [rows["fopru_row", n].coords["nominal_kept"] for n in (8, 16, 32)] == [12, 12, 36]


def test_solve_count_lands_inside_the_plateau_and_takes_the_closest_when_none_gives_the_count():
    value = compare.solve_count(lambda x: int(x * 10), 3, 0.0, 1.0)
    assert int(value * 10) == 3 and 0.33 < value < 0.37
    rows = compare.solve_count(lambda x: 12 * int(x * 3), 16, 0.0, 1.0)  # 0, 12, 24, 36: 16 is out of reach
    assert 12 * int(rows * 3) == 12


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="method='fastvv'"):
        compare.count_arms(["fastvv"], [64], GEO)
    with pytest.raises(ValueError, match="method='uniform'.*allowed.*'divprune', 'dart'"):  # a stride fixes its count
        compare.count_arms(["fastv", "uniform"], [64], GEO)
    with pytest.raises(ValueError, match="kept count 576"):
        compare.count_arms(["fastv"], [576], GEO)
    with pytest.raises(ValueError, match="kept count 6.5"):
        compare.count_arms(["fastv"], [6.5], GEO)
    with pytest.raises(ValueError, match="kept counts: 64 given more than once"):
        compare.count_arms(["fastv"], [64, 64], GEO)


def _counted_rows() -> pd.DataFrame:
    """fastv and feather at 16 tokens and the unpruned model; feather keeps 15 on one sample."""
    rows = []
    for name, n, paper, loc, other, kept in (("unpruned", 144, 576, [1, 1, 0], [1, 1, 1, 0], [144] * 7),
                                             ("fastv", 16, 64, [0, 0, 0], [1, 0, 1, 0], [16] * 7),
                                             ("feather", 16, 64, [1, 1, 1], [1, 1, 1, 1], [16, 15] + [16] * 5)):
        scores = [("localization", "localization", s) for s in loc] + [
            ("other tasks", g, s) for s, g in zip(other, ["colour", "colour", "shape", "shape"])]
        rows += [{"dataset": "synthetic", "sample_id": f"s{i}", "name": name, "kept_count": n, "paper_count": paper,
                  "nominal_kept": n, "family": fam, "task_name": task, "score": float(s), "kept_tokens": k,
                  "flops_reduction": 0.5, "tower_flops_reduction": 0.0} for i, ((fam, task, s), k) in enumerate(zip(scores, kept))]
    return pd.DataFrame(rows)


def test_count_table_and_differences_from_the_rows():
    rows = _counted_rows()
    table = compare.count_table(rows).set_index(["name", "family"])
    assert table.loc[("fastv", "localization"), "accuracy"] == 0.0
    assert table.loc[("fastv", "localization"), "ci_high"] == pytest.approx(stats.wilson(0, 3)[1])
    assert table.loc[("fastv", "all tasks"), "same_count"] and not table.loc[("feather", "all tasks"), "same_count"]
    assert {"ci_low", "ci_high", "samples", "kept_tokens", "flops_reduction"} <= set(table.columns)
    diffs = compare.versus(rows, "fastv", "kept_count").set_index(["name", "family"])
    assert list(diffs.index.get_level_values(0).unique()) == ["feather"]
    assert diffs.loc[("feather", "localization"), "difference"] == 1.0
    assert diffs.loc[("feather", "localization"), "excludes_zero"]
    text = compare.count_summary(compare.count_table(rows), compare.versus(rows, "fastv", "kept_count"), "fastv")
    assert "**16 tokens** (64 of 576 scaled)" in text
    assert "feather 1.00 [0.44, 1.00] (not the matched count on every sample), fastv 0.00" in text
    assert "whose 95% interval excludes zero: feather +1.00 [+1.00, +1.00] on localization at 16 tokens" in text
    assert "feather at 16 (mean 15.9 kept)" in text
    assert "not implemented" not in text and "except that" not in text  # no layer-mean method among these
    shaped = compare.paper_shape(compare.count_table(rows), "paper_count")
    assert list(shaped.index) == ["unpruned", "fastv", "feather"]
    assert list(shaped.columns) == [("localization", 576), ("other tasks", 576), ("localization", 64),
                                    ("other tasks", 64)]
    assert shaped.loc["feather", ("localization", 64)] == "1.00 [0.44, 1.00]"
    assert shaped.loc["feather", ("localization", 576)] == ""
    fig = compare.count_figure(compare.count_table(rows))
    assert fig.axes[0].get_legend_handles_labels()[1] == ["unpruned", "fastv", "feather"]
    plt.close(fig)


def test_count_summary_says_when_every_interval_contains_zero():
    rows = _counted_rows()
    rows.loc[rows.name == "feather", "score"] = rows.loc[rows.name == "fastv", "score"].to_numpy()
    text = compare.count_summary(compare.count_table(rows), compare.versus(rows, "fastv", "kept_count"), "fastv")
    assert "none — every interval contains zero, so no method is shown to differ from fastv" in text
    assert "(interval contains 0: no difference shown)" in text


def test_evaluate_and_examples_on_the_embedded_model(embedded, tmp_path):
    em, samples = embedded
    geo = compare.geometry(em, samples, batch_size=4)
    assert geo.grid == (12, 12) and geo.dims.layers == 6 and 10 < geo.n_text < 60
    plan = compare.matched_settings(["fastv", "fopru_row"], [0.25], geo)
    rows = compare.evaluate_arms(em, samples[:3], compare.plan_arms(plan), tmp_path, batch_size=3)
    assert sorted(set(zip(rows.name, rows.keep_fraction))) == [("fastv", 0.25), ("fopru_row", 0.25), ("unpruned", 1.0)]
    kept = rows[rows.name == "fopru_row"].kept_counts  # list columns, parsed once
    assert all(k == [36] for k in kept)
    fig = compare.examples_figure(em, samples, rows, 0.25, count=1)
    assert len(fig.axes) == 2 and fig.axes[0].get_ylabel() == "fastv"
    plt.close(fig)


def test_paper_and_count_arms_on_the_embedded_model(embedded, tmp_path):
    """Every method at one matched count really keeps that count on every sample (the rows' kept_counts);
    FEATHER's first-stage union with the grid may move its last count by a token, and FoPru's whole rows of
    12 keep the closest whole-row count, which the table says is not the same."""
    em, samples = embedded
    geo = compare.geometry(em, samples, batch_size=4)
    arms = compare.count_arms(list(compare.COUNTED), [64], geo)
    rows = compare.evaluate_arms(em, samples[:3], arms, tmp_path, batch_size=3)
    last = rows[rows.name != "unpruned"].groupby("name").kept_tokens.agg(["min", "max"])
    exact = last.drop(index=["feather", "fopru_row", "sparsevlm", "tome"])
    assert len(exact) == len(compare.COUNTED) - 4
    assert (exact["min"] == 16).all() and (exact["max"] == 16).all(), last
    # SparseVLM's 64 is a mean over layers: 4 + 1 recycled after its last stage; ToMe's 3 merging layers reach 18
    assert last.loc["sparsevlm"].tolist() == [5, 5] and last.loc["tome"].tolist() == [18, 18]
    assert abs(last.loc["feather", "min"] - 16) <= 1 and abs(last.loc["feather", "max"] - 16) <= 1
    assert last.loc["fopru_row"].tolist() == [12, 12]
    table = compare.count_table(rows).set_index("name")
    assert table.loc["vispruner"].same_count.all() and not table.loc["fopru_row"].same_count.any()
    assert table.loc["sparsevlm"].same_count.all() and not table.loc["tome"].same_count.any()
    # the tower's saving: ToMe's own (3 merging layers of 4 down to 18 patches), nothing for the others
    assert 0.3 < table.loc["tome"].tower_flops_reduction.min() < 0.9
    assert (table.drop(index="tome").tower_flops_reduction == 0).all()
    assert compare.fewest_kept("tome", geo) == 18 and compare.fewest_kept("vispruner", geo) == 1
    paper = compare.paper_arms(["fastv", "vispruner", "prumerge"])
    table = compare.paper_table(compare.evaluate_arms(em, samples[:3], paper, tmp_path, batch_size=3), paper, 6)
    kept = table[table.family == "all tasks"].set_index("name").kept_tokens.to_dict()
    assert {k: kept[k] for k in ("unpruned", "fastv", "vispruner")} == {"unpruned": 144, "fastv": 72, "vispruner": 16}
    assert 1 <= kept["prumerge"] < 144  # adaptive: IQR outliers of each image, measured
    assert "prumerge: adaptive counts, the mean over the samples" in compare.paper_summary(table)
    assert {"accuracy", "ci_low", "ci_high", "samples", "flops_reduction", "published", "layers"} <= set(table.columns)
    fig = compare.paper_figure(table)
    assert len(fig.axes) == 3
    plt.close(fig)
