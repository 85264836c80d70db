"""The main job and the figure export: real files, byte-identical on re-runs."""
import matplotlib.pyplot as plt
import pandas as pd

from analysis_lib.benchmarks.prefill import QUICK, format_table, run
from analysis_lib.figures import paper_style, save_figure
from analysis_lib.reproduce import reproduce


def test_figures_are_byte_identical_across_runs(tmp_path):
    paper_style()
    blobs = []
    for attempt in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2])
        paths = save_figure(fig, tmp_path / str(attempt) / "fig")
        blobs.append([p.read_bytes() for p in paths])
    assert blobs[0] == blobs[1]
    assert b"CreationDate" not in blobs[0][0]


def test_reproduce_writes_figures_and_tables(tmp_path):
    written = reproduce(tmp_path)
    names = {p.name for p in written}
    assert {"attention_by_row.pdf", "attention_by_row.png", "fastv_kept_frequency.pdf", "flops.csv"} <= names
    kept = pd.read_parquet(tmp_path / "data/results/reproduce/fastv_kept_frequency.parquet")
    # FastV R=0.75 keeps a quarter of 144 tokens: mean keep frequency per cell is 36/144 at every K
    assert kept.groupby("paper_K").kept_frequency.mean().round(6).eq(0.25).all()
    assert sorted(kept.layer.unique()) == [1, 2, 4, 6]  # 3, 8, 16, 24 of 32 scaled to 8 layers
    flops = pd.read_csv(tmp_path / "data/results/reproduce/flops.csv")
    assert len(flops) == 10 and flops.reduction.between(0, 1).all()


def test_benchmark_smoke_run_reports_every_variant():
    rows = run(QUICK, repeats=1)
    assert [r["variant"] for r in rows] == ["unpruned (sdpa)", "FastV K=2 R=0.75 (remove)",
                                            "FoPru R=0.75 (before the LLM)", "capture every layer (sdpa)",
                                            "eager + output_attentions"]
    assert all(r["predicted_speedup"] > 1 for r in rows[1:3])
    assert "measured / predicted" in format_table(rows)
