"""Attention dispersion (analyses.dispersion): concentration numbers, their aggregation, the captured
distributions against the model's own attention weights, and the pruning arms' custom settings."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_lib.analyses import dispersion, study
from analysis_lib.evaluation.datasets import load_dataset
from analysis_lib.evaluation.runner import load_eval_model, prompt_inputs
from analysis_lib.pruning import Schedule, TextAttentionScorer, VisionAttentionScorer


@pytest.fixture(scope="module")
def embedded():
    """The embedded checkpoint with eager attention (so the model can return its attention weights)."""
    return load_eval_model("data/embedded-model", attn_implementation="eager")


@pytest.fixture(scope="module")
def samples():
    return load_dataset("synthetic", split="test", per_task=1)[:3]


def test_concentration_of_uniform_and_one_hot_distributions():
    uniform = dispersion.concentration(np.full(10, 3.0), 0.2)  # unnormalised on purpose
    assert uniform == pytest.approx({"entropy": 1.0, "top_mass": 0.2, "peak": 1.0})
    one_hot = dispersion.concentration(np.array([0.0, 0.0, 5.0, 0.0, np.nan]), 0.2)  # NaN dropped: N = 4
    assert one_hot == pytest.approx({"entropy": 0.0, "top_mass": 1.0, "peak": 4.0})


def test_concentration_takes_the_ceiling_of_the_top_fraction_and_normalises_entropy_by_log_n():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    c = dispersion.concentration(p, 0.3)  # ceil(1.2) = 2 tokens
    assert c["top_mass"] == pytest.approx(0.7)
    assert c["entropy"] == pytest.approx(-(p * np.log(p)).sum() / math.log(4))
    assert c["peak"] == pytest.approx(1.6)


def _frame(kind, per_sample):
    return pd.concat([pd.DataFrame({"sample": s, "kind": kind, "layer": 0, "rank": range(len(p)), "attention": p})
                      for s, p in enumerate(per_sample)])


def test_dispersion_stats_and_cumulative_average_over_samples():
    flat, peaked = np.full(5, 0.2), np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    frame = pd.concat([_frame("last", [flat, flat]), _frame("[CLS]", [peaked, flat])])
    stats = dispersion.dispersion_stats(frame, 0.2).set_index("kind")
    assert stats.top_mass["last"] == pytest.approx(0.2)
    assert stats.top_mass["[CLS]"] == pytest.approx((0.6 + 0.2) / 2)
    assert stats.samples["[CLS]"] == 2 and stats.top_mass_uniform["[CLS]"] == pytest.approx(0.2)
    assert stats.entropy["[CLS]"] < stats.entropy["last"] == pytest.approx(1.0)
    curves = dispersion.cumulative(frame, points=11).set_index(["kind", "token_fraction"]).attention_share
    assert curves["last"].to_numpy() == pytest.approx(np.linspace(0, 1, 11))  # uniform: the diagonal
    assert curves["[CLS]"][0.2] == pytest.approx(0.4)  # (0.6 + 0.2) / 2 at the top fifth
    assert curves["[CLS]"][1.0] == pytest.approx(1.0)


def test_pruning_accuracy_groups_by_criterion_ratio_and_family():
    rows = study.tidy(pd.DataFrame({  # as study.run labels them
        "criterion": [study.UNPRUNED] * 2 + ["[CLS]"] * 3 + ["last"], "R": [0.0, 0.0, 0.5, 0.5, 0.5, 0.9],
        "task": ["localization", "exact_match", "localization", "exact_match", "exact_match", "localization"],
        "score": [1.0, 0.0, 0.0, 1.0, 0.0, 1.0],
        "relevant_kept": [1.0, 1.0, 0.5, 0.25, 0.75, 0.1],
        "flops_reduction": [0.0, 0.0, 0.4, 0.4, 0.4, 0.7],
        "dataset": "synthetic", "group": ["localization", "colour", "localization", "colour", "colour", "localization"],
        "sample_id": ["a", "b", "a", "b", "c", "a"], "kept_counts": [[]] * 2 + [[72]] * 4,
        "kept": [[]] * 6, "n_visual": 144}))
    acc = dispersion.pruning_accuracy(rows).set_index(["criterion", "R", "family"])
    assert acc.accuracy[("unpruned", 0.0, "localization")] == 1.0
    assert acc.accuracy[("[CLS]", 0.5, "other tasks")] == pytest.approx(0.5)
    assert acc.accuracy[("[CLS]", 0.5, "all tasks")] == pytest.approx(0.25)  # mean of the tasks' 0 and 0.5
    assert acc.relevant_kept[("[CLS]", 0.5, "all tasks")] == pytest.approx(0.5)
    assert acc.samples[("[CLS]", 0.5, "other tasks")] == 2
    assert acc.ci_high[("[CLS]", 0.5, "localization")] == pytest.approx(0.7935, abs=1e-4)  # Wilson, 0 of 1
    assert acc.flops_reduction[("last", 0.9, "localization")] == pytest.approx(0.7)


def test_pruning_arms_differ_only_in_the_scores():
    arms = dispersion.pruning_arms(3, 32, [0.5, 0.75])
    settings = [a.setting for a in arms]
    assert [s.method for s in settings] == ["none"] + ["cls", "last", "equi_last", "random"] * 2
    assert arms[0].name == study.UNPRUNED and arms[0].coords == {"criterion": study.UNPRUNED, "R": 0.0}
    for a in arms[1:]:
        assert a.coords == {"criterion": dispersion.CRITERIA[a.setting.method], "R": a.setting.params["R"]}
        (layer, stage), = a.setting.schedule().resolve(6)
        assert layer == 1 and stage.keep == pytest.approx(1 - a.coords["R"])
        assert a.setting.schedule().positions == "keep"
    scorers = {s.method: s.schedule().stages[0].scorer for s in settings[1:5]}
    assert scorers["cls"] == VisionAttentionScorer("cls")
    assert isinstance(scorers["equi_last"], TextAttentionScorer) and scorers["equi_last"].spec.rope == "equi"
    assert scorers["last"].spec.rope == "applied"
    assert len({s.key for s in settings}) == len({s.label for s in settings}) == len(arms)  # each run on its own
    assert len({a.name for a in arms}) == len(arms)


def test_distributions_match_the_models_own_attention_weights(embedded, samples):
    """[CLS]: the tower's attention row at the feature layer; last: the decoder's last-token row at layer
    K-1 averaged over heads, renormalised over the visual keys."""
    dist = dispersion.attention_distributions(embedded, samples, 3, 32, batch_size=2)
    layer = 1 - 1  # K = 3/32 of 6 layers -> 1
    inputs = prompt_inputs(embedded, samples)
    with torch.no_grad():
        vision = embedded.model.model.vision_tower(inputs["pixel_values"], output_attentions=True)
        text = embedded.model(**inputs, output_attentions=True)
    cls = vision.attentions[embedded.adapter.vision_feature_encoder_layer].mean(dim=1)[:, 0, 1:]
    visual = inputs["input_ids"] == embedded.adapter.image_token_id
    for b in range(len(samples)):
        got = dist[dist["sample"] == b].groupby("kind").attention.apply(np.asarray)
        assert all(len(v) == 144 and v.sum() == pytest.approx(1.0) for v in got)
        assert got["[CLS]"] == pytest.approx((cls[b] / cls[b].sum()).numpy(), abs=1e-6)
        row = text.attentions[layer][b, :, -1][:, visual[b]].mean(dim=0)
        expected = row / row.sum()
        assert got["last"] == pytest.approx(expected.numpy(), abs=1e-6)
        assert not np.allclose(got["equi last"], got["last"])  # the shared key position changes the row
    assert set(dist.layer[dist.kind == "last"]) == {layer}


def test_encoder_concentration_covers_every_tower_layer_and_agrees_at_the_feature_layer(embedded, samples):
    layers = dispersion.encoder_concentration(embedded, samples, 0.2, batch_size=3)
    tower = len(embedded.adapter.vision_layers)
    assert sorted(layers.layer.unique()) == list(range(tower)) and set(layers.kind) == {"[CLS]", "received"}
    feature = layers[layers.feature_layer]
    assert set(feature.layer) == {embedded.adapter.vision_feature_encoder_layer}
    stats = dispersion.dispersion_stats(dispersion.attention_distributions(embedded, samples, 3, 32, 3), 0.2)
    cls = stats.set_index("kind").loc["[CLS]"]
    row = feature[feature.kind == "[CLS]"].iloc[0]
    assert row.top_mass == pytest.approx(cls.top_mass) and row.entropy == pytest.approx(cls.entropy)
    assert ((layers.top_mass >= 0.2) & (layers.top_mass <= 1) & (layers.entropy <= 1 + 1e-9)).all()


def test_the_grid_keeps_the_top_tokens_of_each_attention(embedded, samples, tmp_path):
    """study.run runs the custom settings, each row labelled with its criterion and R; [CLS] and last keep
    the top 36 of 144 tokens of the captured distributions (the engine and the capture agree); a re-run
    resumes from the saved parts."""
    arms = dispersion.pruning_arms(3, 32, [0.75])
    rows = study.run(embedded, [("synthetic", samples)], arms, tmp_path, batch_size=3)
    labels = rows.groupby("arm", sort=False)[["criterion", "R"]].first()
    assert labels.to_dict("index") == {a.name: a.coords for a in arms}
    dist = dispersion.attention_distributions(embedded, samples, 3, 32, batch_size=3)
    for kind in ("[CLS]", "last", "equi last"):
        for b, sample in enumerate(samples):
            kept = rows[(rows.criterion == kind) & (rows.sample_id == sample.sample_id)].kept.iloc[0][-1]
            attention = dist[(dist.kind == kind) & (dist["sample"] == b)].attention.to_numpy()
            assert len(kept) == 36
            assert attention[kept].min() >= np.sort(attention)[::-1][35] - 1e-7
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "parts").rglob("*.parquet"))
    study.run(embedded, [("synthetic", samples)], arms, tmp_path, batch_size=3)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "parts").rglob("*.parquet")) == before


def test_schedule_setting_is_what_run_grid_reads():
    schedule = dispersion.pruning_arms(3, 32, [0.5])[3].setting.schedule()
    assert isinstance(schedule, Schedule) and schedule.name == "equi_last"


def test_summary_reports_the_numbers():
    stats = pd.DataFrame({"kind": ["[CLS]", "last"], "top_fraction": 0.2, "entropy": [0.5, 0.9],
                          "top_mass": [0.8, 0.3], "peak": [9.0, 2.0], "top_mass_uniform": 0.2})
    layers = pd.DataFrame({"layer": [0, 1], "kind": "received", "top_mass": [0.3, 0.6], "entropy": [0.95, 0.7]})
    rows = pd.DataFrame([{"dataset": "synthetic", "sample_id": f"{task}{i}", "task": task, "group": task,
                          "criterion": criterion, "R": 0.0 if criterion == study.UNPRUNED else 0.5,
                          "score": float(score), "relevant_kept": 1.0 if criterion == study.UNPRUNED else 0.3,
                          "flops_reduction": 0.4, "kept_counts": [], "kept": [], "n_visual": 144}
                         for criterion, scores in ((study.UNPRUNED, (1, 0)), ("[CLS]", (0, 0)), ("last", (1, 1)))
                         for task in ("localization", "colour") for i, score in enumerate(scores * 5)])
    rows = study.tidy(rows)  # as study.run labels them
    text = dispersion.summary(stats, layers, dispersion.pruning_accuracy(rows), rows)
    assert "[CLS]: entropy 0.500, top 20% of the tokens hold 80%" in text
    assert "most concentrated is [CLS]" in text and "30%, 60%" in text
    assert "R=0.5 (localization / other tasks accuracy / relevant tokens kept): [CLS] 0.00 [0.00, 0.28] / 0.00 [" in text
    assert "last minus [CLS] on localization: +1.00 [+1.00, +1.00]." in text
