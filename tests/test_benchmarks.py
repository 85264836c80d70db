"""Benchmark smoke run: every variant is measured and compared with its FLOPs prediction."""
from analysis_lib.benchmarks.prefill import QUICK, format_table, run


def test_benchmark_smoke_run_reports_every_variant():
    rows = run(QUICK, repeats=1)
    assert [r["variant"] for r in rows] == ["unpruned (sdpa)", "FastV K=2 R=0.75 (remove)",
                                            "FoPru R=0.75 (before the LLM)", "capture every layer (sdpa)",
                                            "eager + output_attentions"]
    assert all(r["predicted_speedup"] > 1 for r in rows[1:3])
    assert "measured / predicted" in format_table(rows)

