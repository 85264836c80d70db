"""Accuracy studies (analysis_lib.analyses.accuracy): the arms, the aggregations on hand-built rows, and one
small evaluation on the embedded checkpoint (real pruning, a few samples)."""
import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from analysis_lib import stats
from analysis_lib.analyses import accuracy, study
from analysis_lib.evaluation import runner
from analysis_lib.evaluation.datasets import load_dataset
from analysis_lib.evaluation.runner import load_eval_model

TASKS = ["localization", "colour", "counting"]


def rows_of(spec: list[tuple[str, dict, str, list[float]]], relevant: float | None = 0.5,
            dataset: str = "synthetic") -> pd.DataFrame:
    """Sample rows: (arm, coordinates, task, per-sample scores) -> one row per score."""
    out = []
    for arm, coords, task, scores in spec:
        kept = 1.0 if arm == accuracy.UNPRUNED else 0.25
        out += [{"dataset": dataset, "arm": arm, **coords, "task_name": task, "task": task,
                 "family": study.family(dataset, task), "sample_id": f"{task}-{i}", "score": float(s), "kept_fraction": kept,
                 "relevant_kept": relevant} for i, s in enumerate(scores)]
    return pd.DataFrame(out)


def sweep_rows() -> pd.DataFrame:
    """Unpruned and two ratios; colour has 4 samples, counting 1 (so sample and task means differ)."""
    spec = [(accuracy.UNPRUNED, {}, "localization", [1, 0]), (accuracy.UNPRUNED, {}, "colour", [1, 1, 1, 1]),
            (accuracy.UNPRUNED, {}, "counting", [0])]
    for R, loc, colour, counting in ((0.5, [0, 0], [1, 1, 0, 0], [0]), (0.9, [0, 0], [0, 0, 0, 0], [1])):
        coords = {"R": R, "paper_K": 3, "layer": 1}
        spec += [(f"R={R}", coords, "localization", loc), (f"R={R}", coords, "colour", colour),
                 (f"R={R}", coords, "counting", counting)]
    return rows_of(spec)


def test_task_accuracy_is_the_mean_score_per_arm_and_task_in_arm_order():
    table = accuracy.task_accuracy(sweep_rows())
    assert table.arm.unique().tolist() == [accuracy.UNPRUNED, "R=0.5", "R=0.9"]
    row = table[(table.arm == "R=0.5") & (table.task_name == "colour")].iloc[0]
    assert (row.accuracy, row.samples, row.R, row.kept_fraction) == (0.5, 4, 0.5, 0.25)
    assert (row.ci_low, row.ci_high) == pytest.approx(stats.wilson(2, 4))
    assert math.isnan(table[table.arm == accuracy.UNPRUNED].R.iloc[0])


def test_localization_vs_rest_averages_the_other_tasks_unweighted_and_measures_drops():
    table = accuracy.localization_vs_rest(sweep_rows()).set_index(["arm", "family"])
    assert table.loc[(accuracy.UNPRUNED, study.OTHER), "accuracy"] == 0.5  # (1 + 0) / 2, not (4 + 0) / 5
    assert table.loc[("R=0.9", study.OTHER), "accuracy"] == 0.5 and table.loc[("R=0.5", study.OTHER), "accuracy"] == 0.25
    loc = table.loc[("R=0.5", study.LOCALIZATION)]
    assert (loc.change, loc.relative_change) == (-0.5, -1.0) and loc.change_ci_low <= -0.5 <= loc.change_ci_high
    assert table.loc[("R=0.5", study.OTHER), "relative_change"] == -0.5
    assert math.isnan(table.loc[(accuracy.UNPRUNED, study.OTHER), "change"])  # the reference itself
    assert (table.ci_low <= table.accuracy).all() and (table.accuracy <= table.ci_high).all()


def test_relative_drop_is_undefined_without_an_unpruned_accuracy():
    assert accuracy.relative_drop(0.8, 0.2) == pytest.approx(0.75)
    assert math.isnan(accuracy.relative_drop(0.0, 0.2))


def test_quartile_table_per_layer_and_quarter():
    spec = [(accuracy.UNPRUNED, {}, "localization", [1]), (accuracy.UNPRUNED, {}, "colour", [1])]
    for q in range(1, 5):
        coords = {"paper_K": 3, "layer": 1, "q": q}
        spec += [(f"K=3 q={q}", coords, "localization", [float(q == 2)]),
                 (f"K=3 q={q}", coords, "colour", [float(q in (2, 3))])]
    table = accuracy.quartile_table(rows_of(spec))
    by_family = {fam: part.set_index("q") for fam, part in table.groupby("family")}
    assert by_family[study.ALL].accuracy.tolist() == [0.0, 1.0, 0.5, 0.0]
    assert by_family[study.LOCALIZATION].accuracy.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert (table.paper_K == 3).all() and (table.layer == 1).all() and {"ci_low", "ci_high"} <= set(table)
    sweep = accuracy.localization_vs_rest(sweep_rows())
    summary = accuracy.where_pruning_hurts_summary(sweep, sweep, table, accuracy.task_accuracy(sweep_rows()))
    assert "highest q2" in summary
    assert "localization 0.00 [0.00, 0.66], change -0.50 [" in summary
    assert "one answer moves a task's accuracy by 1.00" in summary


def leakage_rows() -> pd.DataFrame:
    values = {accuracy.UNPRUNED: (0.75, 1.0), "fastv": (0.5, 0.75), "before_llm": (0.25, 0.75), "text_only": (0.0, 0.5),
              "random": (0.5, 0.5)}
    relevant = {accuracy.UNPRUNED: 1.0, "fastv": 0.5, "before_llm": 0.5, "text_only": 0.0, "random": 0.25}
    frames = []
    for arm, (loc, colour) in values.items():
        frames.append(rows_of([(arm, {}, "localization", [1] * int(4 * loc) + [0] * (4 - int(4 * loc))),
                               (arm, {}, "colour", [1] * int(4 * colour) + [0] * (4 - int(4 * colour)))],
                              relevant=relevant[arm]))
    frames.append(rows_of([(arm, {}, "pope", [1, 0]) for arm in ("fastv", "before_llm", "text_only")]
                          + [(accuracy.UNPRUNED, {}, "pope", [1, 1])], relevant=None, dataset="pope"))
    return pd.concat(frames, ignore_index=True)


def test_leakage_table_gaps_per_dataset_and_task():
    table = accuracy.leakage_table(leakage_rows()).set_index("task_name")
    assert list(table.columns)[:4] == ["dataset", "unpruned", "unpruned_ci_low", "unpruned_ci_high"]
    assert {"transfer_ci_low", "image_need_ci_high", "text_only_ci_low"} <= set(table.columns)
    assert table.loc["localization", "transfer"] == 0.25 and table.loc["localization", "image_need"] == 0.75
    assert table.loc["colour", "transfer"] == 0.0 and table.loc["colour", "image_need"] == 0.5
    assert table.loc["pope", "dataset"] == "pope" and table.loc["pope", "image_need"] == 0.5


def test_relevance_table_and_correlation():
    rows = leakage_rows()
    table = accuracy.relevance_table(rows)
    assert "pope" not in set(table.task_name)  # no ground-truth relevance outside the synthetic suite
    overall = table[table.task_name == "all tasks"].set_index("arm")
    assert overall.loc["fastv", "accuracy"] == pytest.approx(0.625)
    r = accuracy.relevance_correlation(table)  # over fastv, before_llm and random only
    assert r["localization"] == pytest.approx(pd.Series([0.5, 0.5, 0.25]).corr(pd.Series([0.5, 0.25, 0.5])))
    assert r["colour"] == pytest.approx(1.0)  # accuracy 0.75, 0.75, 0.5 against relevant 0.5, 0.5, 0.25

    summary = accuracy.leakage_summary(accuracy.leakage_table(rows), table, rows)
    assert "localization +0.25 [" in summary and "colour +0.00 [+0.00, +0.00] (interval contains 0" in summary
    assert "pope: unpruned minus text-only accuracy (how much a task needs the image): +0.50 [" in summary
    assert "most relevant kept first: fastv 50% / 0.62 [" in summary and "8 samples per arm" in summary


def test_figures_draw_from_the_tables():
    rows = leakage_rows()
    for fig in (accuracy.sweep_figure(accuracy.localization_vs_rest(sweep_rows()), accuracy.task_accuracy(sweep_rows()),
                                      "R", "pruning ratio R", "t"),
                accuracy.leakage_figure(accuracy.leakage_table(rows), 3, 0.75),
                accuracy.relevance_figure(accuracy.relevance_table(rows)),
                accuracy.relevance_figure(accuracy.relevance_table(rows[rows.dataset == "pope"]))):
        assert fig.axes
        plt.close(fig)


def test_uniform_stride():
    assert [accuracy.uniform_stride(R) for R in (0.5, 0.75, 0.9, 0.05)] == [2, 2, 3, 1]


def test_arms_scale_layers_and_build_valid_schedules():
    ratio = accuracy.ratio_arms([0.25, 0.9], 3, 32)
    assert [a.name for a in ratio] == [accuracy.UNPRUNED, "R=0.25", "R=0.9"]
    assert ratio[1].setting.params == {"K": 3 / 32, "R": 0.25}
    assert len(accuracy.quartile_arms([3, 8], 32)) == 1 + 2 * 4
    arms = accuracy.relevance_arms(8, 0.75, 32) + accuracy.layer_arms([3, 24], 0.5, 32)
    for arm in arms:
        schedule = arm.setting.schedule()
        assert schedule is None or schedule.resolve(6)
    names = [a.name for a in accuracy.relevance_arms(3, 0.75, 32)]
    assert names[:4] == list(accuracy.LEAKAGE_COLUMNS)
    assert {"fastv_norope", "uniform", "fopru", "vispruner", "random"} <= set(names)


@pytest.fixture(scope="module")
def embedded():
    return load_eval_model("data/embedded-model")


def test_evaluate_labels_rows_and_runs_each_setting_once(embedded, tmp_path, monkeypatch):
    samples = load_dataset("synthetic", per_task=1)[:3]
    real, calls = runner.evaluate_batch, []

    def counted(em, setting, *args, **kwargs):
        calls.append(setting.label)
        return real(em, setting, *args, **kwargs)
    monkeypatch.setattr(runner, "evaluate_batch", counted)
    arms = accuracy.leakage_arms(3, 0.75, 32) + accuracy.ratio_arms([0.75], 3, 32)[1:]  # FastV's setting twice
    rows = accuracy.evaluate(embedded, [("synthetic", samples)], arms, tmp_path, batch_size=2)
    assert len(calls) == 4 * 2  # four distinct settings, two batches each
    assert len(rows) == len(arms) * 3 and rows.arm.value_counts().eq(3).all()
    assert rows.task_name.tolist()[:3] == [s.group for s in samples]
    by_arm = {arm: part.reset_index(drop=True) for arm, part in rows.groupby("arm")}
    assert by_arm["fastv"].kept.tolist() == by_arm["before_llm"].kept.tolist()  # the same kept set
    assert (by_arm["fastv"].layer == 1).all() and (by_arm["R=0.75"].R == 0.75).all()
    assert (by_arm["text_only"].kept_fraction == 0).all() and (by_arm["text_only"].relevant_kept.fillna(0) == 0).all()
    assert (by_arm[accuracy.UNPRUNED].kept_fraction == 1).all()
    kept = [len(k[0]) for k in by_arm["fastv"].kept]
    assert by_arm["fastv"].kept_fraction.tolist() == [k / n for k, n in zip(kept, by_arm["fastv"].n_visual)]
    again = accuracy.evaluate(embedded, [("synthetic", samples)], arms, tmp_path, batch_size=2)
    assert len(calls) == 8  # finished batches reused
    pd.testing.assert_frame_equal(again.drop(columns=list(runner.TIMING_COLUMNS)),
                                  rows.drop(columns=list(runner.TIMING_COLUMNS)))
