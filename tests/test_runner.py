"""The evaluation runner on a tiny untrained checkpoint in the embedded model's format (real tokenizer,
processor and LLaVA classes; predictions are noise but deterministic)."""
import json

import pandas as pd
import pytest

from analysis_lib.cli import main
from analysis_lib.evaluation import runner
from analysis_lib.evaluation.runner import TIMING_COLUMNS, MethodSetting, run_grid, summarize

METHODS = ["none", "fastv:K=0.5,R=0.5", "vispruner:keep=0.5", "fopru:R=0.5,strategy=row"]
VARYING = list(TIMING_COLUMNS) + ["batch_index", "batch_size"]


def stable(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["model", "dataset", "setting", "sample_id"]
    return frame.drop(columns=VARYING).sort_values(keys).reset_index(drop=True)


def test_rows_hold_predictions_scores_kept_sets_and_flops(model, tmp_path):
    rows = run_grid([model], METHODS, ["synthetic"], tmp_path, batch_size=4, limit=8, progress=False)
    assert len(rows) == 8 * len(METHODS)
    assert (tmp_path / "results.parquet").exists() and (tmp_path / "results.csv").exists()
    unpruned = rows[rows.method == "none"]
    assert (unpruned.flops_reduction == 0).all() and (unpruned.kept == "[]").all()
    fastv = rows[rows.method == "fastv"]
    for _, row in fastv.iterrows():
        (kept,) = json.loads(row.kept)
        assert len(kept) == row.n_visual // 2 and 0 < row.flops_reduction < 1
    assert rows.score.between(0, 1).all() and rows.library_version.notna().all()
    relevant = rows[rows.method == "none"].relevant_kept.dropna()
    assert len(relevant) > 0 and (relevant == 1.0).all()  # nothing pruned: every relevant token kept
    summary = summarize(rows)
    assert set(summary.setting) == {MethodSetting.parse(m).label for m in METHODS}


def test_a_killed_run_resumes_to_the_same_table(model, tmp_path, monkeypatch):
    reference = run_grid([model], METHODS[:2], ["synthetic"], tmp_path / "once", batch_size=2, limit=6, progress=False)
    real, calls = runner.evaluate_batch, []

    def dies_on_the_fourth_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(runner, "evaluate_batch", dies_on_the_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        run_grid([model], METHODS[:2], ["synthetic"], tmp_path / "twice", batch_size=2, limit=6, progress=False)
    assert len(list((tmp_path / "twice").rglob("batch-*.parquet"))) == 3
    assert not list((tmp_path / "twice").rglob("*.tmp"))
    calls.clear()
    resumed = run_grid([model], METHODS[:2], ["synthetic"], tmp_path / "twice", batch_size=2, limit=6,
                       progress=False)
    assert len(calls) == 3  # only the batches that were not finished
    pd.testing.assert_frame_equal(stable(resumed), stable(reference))


def test_a_batch_equals_its_samples_one_by_one(model, tmp_path):
    batched = run_grid([model], METHODS, ["synthetic"], tmp_path / "b", batch_size=4, limit=8, progress=False)
    single = run_grid([model], METHODS, ["synthetic"], tmp_path / "s", batch_size=1, limit=8, progress=False)
    columns = ["setting", "sample_id", "prediction", "score", "kept", "n_visual", "n_text", "flops_reduction"]
    pd.testing.assert_frame_equal(stable(batched)[columns], stable(single)[columns])


def test_settings_share_a_batch_encoding_without_changing_a_row(model, tmp_path):
    """Per batch the images are encoded once for the unpruned model and FastV (which leave the tower alone)
    and again for VisPruner and FoPru, which read its attention; the rows equal fresh encodings'."""
    layer = model.adapter.vision_layers[0]
    encodings = []
    handle = layer.register_forward_hook(lambda *_: encodings.append(1))
    try:
        fresh = run_grid([model], METHODS, ["synthetic"], tmp_path / "fresh", batch_size=4, limit=8, progress=False,
                         reuse_images=False)
        assert len(encodings) == 2 * len(METHODS)
        encodings.clear()
        shared = run_grid([model], METHODS, ["synthetic"], tmp_path / "shared", batch_size=4, limit=8,
                          progress=False)
        assert len(encodings) == 2 * 3
    finally:
        handle.remove()
    pd.testing.assert_frame_equal(stable(shared), stable(fresh))
    assert list(shared.setting) == list(fresh.setting)  # the table keeps the grid's order


def test_grids_sharing_a_store_compute_a_common_batch_once(model, tmp_path, monkeypatch):
    real, calls = runner.evaluate_batch, []

    def counted(em, setting, *args, **kwargs):
        calls.append(setting.method)
        return real(em, setting, *args, **kwargs)
    monkeypatch.setattr(runner, "evaluate_batch", counted)
    store = tmp_path / "store"
    first = run_grid([model], METHODS[:2], ["synthetic"], tmp_path / "a", batch_size=4, limit=8, progress=False,
                     store=store)
    calls.clear()
    second = run_grid([model], METHODS[1:3], ["synthetic"], tmp_path / "b", batch_size=4, limit=8, progress=False,
                      store=store)
    assert calls == ["vispruner", "vispruner"]  # FastV's two batches were the first grid's
    assert not (tmp_path / "a" / "parts").exists() and (tmp_path / "b" / "results.parquet").exists()
    pd.testing.assert_frame_equal(stable(second[second.method == "fastv"]), stable(first[first.method == "fastv"]))


def test_bad_input_fails_before_any_model_loads(tmp_path):
    missing_model = str(tmp_path / "no-model")
    with pytest.raises(ValueError, match="method='fastvv'"):
        run_grid([missing_model], ["fastvv"], ["synthetic"], tmp_path)
    with pytest.raises(ValueError, match="R=1.5"):
        run_grid([missing_model], ["fastv:R=1.5"], ["synthetic"], tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match="nowhere.jsonl"):
        run_grid([missing_model], ["none"], [str(tmp_path / "nowhere.jsonl")], tmp_path)
    with pytest.raises(ValueError, match="batch_size=0"):
        run_grid([missing_model], ["none"], ["synthetic"], tmp_path, batch_size=0)


def test_a_method_too_deep_for_the_model_is_refused_before_running(model, tmp_path):
    with pytest.raises(ValueError, match="outside this 2-layer model"):
        run_grid([model], ["fastv:K=8"], ["synthetic"], tmp_path, limit=2, progress=False)
    assert not (tmp_path / "parts").exists()


def test_eval_command_writes_rows_and_prints_a_summary(checkpoint, tmp_path, capsys):
    code = main(["eval", "--model", str(checkpoint), "--methods", "none", "random:R=0.5", "--dataset", "synthetic",
                 "--limit", "4", "--batch-size", "2", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "random R=0.5" in out and "results.parquet" in out
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 8


def test_eval_command_reports_an_unknown_method(tmp_path, capsys):
    assert main(["eval", "--model", "x", "--methods", "nope", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "method='nope'" in capsys.readouterr().err


def test_batching_benchmark_reports_identical_rows(checkpoint):
    from analysis_lib.benchmarks.batching import format_table, run
    rows = run(str(checkpoint), samples=4, repeats=1, methods=("none", "random:R=0.5"), sizes=(1, 4))
    assert [(r["method"], r["batch_size"]) for r in rows] == [("none", 1), ("none", 4), ("random R=0.5", 1),
                                                              ("random R=0.5", 4)]
    assert all(r["identical"] for r in rows) and "identical rows" in format_table(rows)


def test_a_setting_has_one_label_whatever_the_order_of_its_parameters():
    """Rows are stored and looked up by label: the same parameters in another order are the same setting."""
    a = MethodSetting("sparsevlm", {"keep": 0.25, "K1": 0.1, "K2": 0.2, "K3": 0.5})
    b = MethodSetting("sparsevlm", {"K3": 0.5, "K1": 0.1, "keep": 0.25, "K2": 0.2})
    assert a.label == b.label == "sparsevlm keep=0.25 K1=0.1 K2=0.2 K3=0.5" and a.key == b.key
