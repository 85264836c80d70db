"""Benchmark smoke run: every variant is measured and compared with its FLOPs prediction."""
import pytest

from analysis_lib.benchmarks.prefill import LLAVA, QUICK, QWEN_QUICK, format_table, run


@pytest.mark.parametrize("geometry", [LLAVA, QWEN_QUICK], ids=lambda g: g.family)
def test_benchmark_smoke_run_reports_every_variant(geometry):
    rows = run(QUICK, repeats=1, geometry=geometry)
    assert [r["variant"] for r in rows] == ["unpruned (sdpa)", "FastV K=2 R=0.75 (remove)",
                                            "FoPru R=0.75 (before the LLM)", "capture every layer (sdpa)",
                                            "eager + output_attentions"]
    assert all(r["predicted_speedup"] > 1 for r in rows[1:3])
    assert "measured / predicted" in format_table(rows)



def test_the_qwen_geometry_counts_merged_cells():
    assert QWEN_QUICK.grid(QUICK) == (4, 4) and LLAVA.grid(QUICK) == (8, 8)
