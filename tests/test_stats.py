"""95% intervals (analysis_lib.stats) and the study's tables built on them (analysis_lib.analyses.study)."""
import numpy as np
import pandas as pd
import pytest

from analysis_lib import stats
from analysis_lib.analyses import study


def test_wilson_matches_published_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775
    assert stats.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    iv = stats.mean_interval([1] * 8 + [0] * 2)
    assert iv.method == "wilson" and iv.value == 0.8 and iv.samples == 10


def test_bounded_scores_and_means_over_tasks_use_a_seeded_bootstrap():
    vqa = [0.0, 0.3, 0.6, 1.0, 1.0, 0.6]
    first, again = stats.mean_interval(vqa), stats.mean_interval(vqa)
    assert first == again and first.method == "bootstrap" and first.low < np.mean(vqa) < first.high
    # two tasks of 4 and 1 samples: the unweighted mean of task means, not the sample mean
    iv = stats.mean_interval([1, 1, 1, 1, 0], strata=["a"] * 4 + ["b"])
    assert iv.value == 0.5 and iv.method == "bootstrap"


def test_paired_difference_uses_the_pairs():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 200).astype(float)
    same = stats.paired_difference(base, base)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero
    better = base.copy()
    better[np.flatnonzero(base == 0)[:40]] = 1.0  # 40 of 200 answers fixed: +0.20
    iv = stats.paired_difference(better, base)
    assert iv.value == pytest.approx(0.2) and iv.excludes_zero and iv.low > 0.1
    # unpaired, two independent samples with these means would give a far wider interval
    assert iv.high - iv.low < 2 * (stats.mean_interval(better).high - stats.mean_interval(better).low)
    assert "contains 0" in stats.describe(same) and "contains 0" not in stats.describe(iv)
    with pytest.raises(ValueError, match="same samples"):
        stats.paired_difference([1, 0], [1])


def rows(arm, scores_by_task):
    return pd.DataFrame([{"dataset": "synthetic", "arm": arm, "sample_id": f"{task}-{i}", "task": task,
                          "task_name": task, "family": study.family("synthetic", task), "score": float(s)}
                         for task, scores in scores_by_task.items() for i, s in enumerate(scores)])


def test_accuracy_table_and_differences_share_one_definition_of_families():
    frame = pd.concat([rows(study.UNPRUNED, {"localization": [1, 1, 0, 0], "colour": [1, 1, 1, 1], "counting": [0]}),
                       rows("pruned", {"localization": [0, 0, 0, 0], "colour": [1, 1, 1, 1], "counting": [0]})])
    table = study.accuracy_table(frame, ["arm"], "family").set_index(["arm", "family"])
    assert table.loc[(study.UNPRUNED, study.OTHER), "accuracy"] == 0.5  # (1 + 0) / 2, not 4 / 5
    assert table.loc[(study.UNPRUNED, study.LOCALIZATION), ["accuracy", "samples"]].tolist() == [0.5, 4]
    assert table.loc[(study.UNPRUNED, study.ALL), "accuracy"] == pytest.approx(0.5)
    assert (table.ci_low <= table.accuracy).all() and (table.accuracy <= table.ci_high).all()
    diff = study.differences(frame[frame.arm == "pruned"], frame[frame.arm == study.UNPRUNED], ["arm"], "family")
    loc = diff.set_index("family").loc[study.LOCALIZATION]
    assert loc.difference == -0.5 and loc.ci_high <= 0
    assert diff.set_index("family").loc[study.OTHER, "difference"] == 0.0

