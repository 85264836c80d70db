"""Batched evaluation throughput: batch size 8 vs 1 on the embedded default's architecture.

    python -m analysis_lib.benchmarks.batching [--model DIR] [--samples 32] [--repeats 2]

Runs the evaluation runner's ``evaluate_batch`` over the same synthetic samples at both batch sizes,
round-robin in one process, and prints samples/s, the ratio, and whether predictions, scores and kept
sets are identical. Without ``--model`` it builds the embedded default's architecture with random
weights (throughput does not depend on the weights).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from ..evaluation.datasets import load_dataset
from . import markdown_table
from ..evaluation.runner import MethodSetting, evaluate_batch, load_eval_model
from ..training import RECIPES, build_model, build_processor, build_tokenizer, save_pretrained

COMPARED = ("prediction", "score", "kept")


def _default_architecture(folder: str) -> str:
    recipe = RECIPES["default"]
    tokenizer = build_tokenizer(recipe.scene)
    save_pretrained(folder, build_model(recipe.model, recipe.scene, tokenizer), build_processor(recipe.scene, tokenizer),
                    recipe.scene)
    return folder


def run(model_dir: str | None, samples: int, repeats: int, methods: tuple[str, ...] = ("none", "fastv:K=0.34,R=0.75"),
        sizes: tuple[int, ...] = (1, 8)) -> list[dict]:
    """Rows of (method, batch size, median seconds, samples/s, speed-up vs batch 1, identical to batch 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        em = load_eval_model(model_dir or _default_architecture(tmp))
    data = load_dataset("synthetic", limit=samples)
    rows = []
    for text in methods:
        setting = MethodSetting.parse(text)
        times = {size: [] for size in sizes}
        outputs = {}
        for _ in range(repeats):
            for size in sizes:
                start = time.perf_counter()
                out = [row for i in range(0, len(data), size) for row in evaluate_batch(em, setting, data[i:i + size])]
                times[size].append(time.perf_counter() - start)
                outputs[size] = [tuple(r[k] for k in COMPARED) for r in out]
        base = statistics.median(times[sizes[0]])
        for size in sizes:
            med = statistics.median(times[size])
            rows.append({"method": setting.label, "batch_size": size, "median_s": med, "samples_per_s": len(data) / med,
                         "speedup": base / med, "identical": outputs[size] == outputs[sizes[0]]})
    return rows


def format_table(rows: list[dict]) -> str:
    return markdown_table(["method", "batch size", "median (s)", "samples/s", "vs batch 1", "identical rows"],
                          [[r["method"], str(r["batch_size"]), f"{r['median_s']:.2f}", f"{r['samples_per_s']:.1f}",
                            f"{r['speedup']:.2f}×", "yes" if r["identical"] else "NO"] for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a checkpoint folder (default: the embedded architecture)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(format_table(run(args.model, args.samples, args.repeats)))


if __name__ == "__main__":
    main()
