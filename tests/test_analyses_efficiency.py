"""Measured efficiency (notebook 07): cache accounting, the medians and speed-ups, and real runs."""
import json
import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from transformers import DynamicCache

from analysis_lib.adapters.calls import cache_tensors
from analysis_lib.analyses import efficiency
from analysis_lib.analyses import methods as compare
from analysis_lib.evaluation.datasets import load_dataset
from analysis_lib.evaluation.runner import load_eval_model, prompt_inputs


def test_cache_bytes_and_tokens_read_every_layers_tensors():
    cache = DynamicCache()
    cache.update(torch.zeros(2, 4, 10, 8), torch.zeros(2, 4, 10, 8), 0)
    cache.update(torch.zeros(2, 4, 3, 8, dtype=torch.float16), torch.zeros(2, 4, 3, 8, dtype=torch.float16), 1)
    layers = cache_tensors(cache)
    assert efficiency.cache_tokens(layers) == [10, 3]
    assert efficiency.cache_bytes(layers) == 2 * (2 * 4 * 10 * 8 * 4) + 2 * (2 * 4 * 3 * 8 * 2)


def test_timing_samples_spread_over_the_list():
    assert efficiency.timing_samples(list(range(14)), 7) == [0, 2, 4, 6, 8, 10, 12]
    assert efficiency.timing_samples(list(range(3)), 7) == [0, 1, 2]


def _runs() -> pd.DataFrame:
    rows = []
    for r, (base, fast) in enumerate([(100, 50), (120, 40), (90, 60)]):
        rows.append({"name": "unpruned", "keep_fraction": 1.0, "setting": "none", "round": r, "prefill_ms": base,
                     "decode_ms_per_token": 10.0, "kv_cache_mb": 8.0, "peak_memory_mb": math.nan,
                     "flops_reduction": 0.0, "kept_visual": 144.0, "kv_tokens_per_layer": "[10, 10]"})
        rows.append({"name": "fastv", "keep_fraction": 0.5, "setting": "fastv R=0.5", "round": r,
                     "prefill_ms": fast, "decode_ms_per_token": 8.0 + r, "kv_cache_mb": 6.0,
                     "peak_memory_mb": math.nan, "flops_reduction": 0.5, "kept_visual": 72.0,
                     "kv_tokens_per_layer": "[10, 5]"})
    return pd.DataFrame(rows)


def test_efficiency_table_takes_medians_and_sets_measured_against_predicted():
    table = efficiency.efficiency_table(_runs()).set_index("name")
    assert table.loc["unpruned", "prefill_ms"] == 100 and table.loc["fastv", "prefill_ms"] == 50
    assert table.loc["fastv", "prefill_speedup"] == pytest.approx(2.0)
    assert table.loc["fastv", "predicted_speedup"] == pytest.approx(2.0)
    assert table.loc["fastv", "decode_speedup"] == pytest.approx(10 / 9)
    assert table.loc["fastv", "kv_cache_ratio"] == pytest.approx(0.75)
    assert table.loc["fastv", "rounds"] == 3


def test_summary_and_figures_from_a_table():
    table = efficiency.efficiency_table(_runs())
    text = efficiency.summary(table, "test CPU", 7, 16)
    assert "Device: test CPU; a batch of 7 prompts, 16 greedy tokens" in text
    assert "fastv 2.00× of 2.00× predicted (decode 1.11×, KV cache 75%)" in text
    assert "peak memory is not measured on CPU" in text
    for fig in (efficiency.speedup_figure(table), efficiency.kv_cache_figure(table)):
        assert fig.axes
        plt.close(fig)


@pytest.fixture(scope="module")
def embedded():
    em = load_eval_model("data/embedded-model")
    samples = load_dataset("synthetic", split="test", per_task=1)[:3]
    return em, samples


def test_measure_decodes_exactly_and_sees_the_smaller_later_caches(embedded):
    em, samples = embedded
    plan = {b.name: b for b in compare.matched_settings(["fastv", "fopru"], [0.25],
                                                        compare.geometry(em, samples))}
    inputs = prompt_inputs(em, samples)
    length = inputs["input_ids"].shape[1]
    full = efficiency.measure(em, plan["unpruned"].setting, inputs, new_tokens=5)
    fastv = efficiency.measure(em, plan["fastv"].setting, inputs, new_tokens=5)
    fopru = efficiency.measure(em, plan["fopru"].setting, inputs, new_tokens=5)
    assert full["generated_tokens"] == fastv["generated_tokens"] == 5
    assert json.loads(full["kv_tokens_per_layer"]) == [length] * 6
    assert json.loads(fastv["kv_tokens_per_layer"]) == [length] + [length - 144 + 36] * 5  # pruned after layer 1
    assert json.loads(fopru["kv_tokens_per_layer"]) == [length - 144 + 36] * 6
    per_position = 2 * 3 * 128 * 4 / 2**20  # keys + values, batch 3, hidden 128, float32, in MB
    assert full["kv_cache_mb"] == pytest.approx(6 * length * per_position)
    assert fastv["kept_visual"] == 36 and full["kept_visual"] == 144
    assert 0 < fastv["flops_reduction"] < fopru["flops_reduction"] and full["flops_reduction"] == 0
    assert math.isnan(full["peak_memory_mb"]) and full["prefill_ms"] > 0 and full["decode_ms_per_token"] > 0


def test_benchmark_runs_round_robin_and_reuses_stored_measurements(embedded, tmp_path):
    em, samples = embedded
    plan = compare.matched_settings(["fopru"], [0.5], compare.geometry(em, samples))
    runs = efficiency.benchmark(em, plan, samples, new_tokens=2, repeats=2, out=tmp_path)
    assert list(zip(runs.name, runs["round"])) == [("unpruned", 0), ("fopru", 0), ("unpruned", 1), ("fopru", 1)]
    assert runs.attrs["source"].startswith("measured now")
    again = efficiency.benchmark(em, plan, samples, new_tokens=2, repeats=2, out=tmp_path)
    assert again.attrs["source"].startswith("loaded from") and again.equals(runs)
    with pytest.raises(ValueError, match="new_tokens=1"):
        efficiency.benchmark(em, plan, samples, new_tokens=1, repeats=1, out=tmp_path)
