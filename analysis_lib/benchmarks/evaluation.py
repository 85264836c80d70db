"""Evaluation-grid throughput: one encoding per batch shared by the settings vs one per setting, and batch size.

    python -m analysis_lib.benchmarks.evaluation [--model DIR] [--per-task 8] [--repeats 2] [--threads 1]

Runs ``run_grid`` on a notebook-like grid (the unpruned model, FastV at three layers, the four quartiles,
VisPruner and FoPru) over the same synthetic samples in each configuration, round-robin in one process,
each time into a fresh folder (nothing reused from disk), and prints samples/s (sample × setting rows per
second), the ratio to the first configuration (the runner before encodings were shared) and whether the
rows equal that configuration's (all but timings; batch size changes the padding, so only the
prediction, score and kept sets are compared).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..evaluation.datasets import load_dataset
from ..evaluation.runner import load_eval_model, run_grid
from . import markdown_table

GRID = ("none", "fastv:K=0.1,R=0.75", "fastv:K=0.25,R=0.75", "fastv:K=0.5,R=0.75", "quartile:q=1,K=0.25",
        "quartile:q=2,K=0.25", "quartile:q=3,K=0.25", "quartile:q=4,K=0.25", "vispruner", "fopru")
#: (label, batch size, reuse_images); the first is the reference
CONFIGURATIONS = (("an encoding per setting, batch 8", 8, False), ("shared encoding, batch 8", 8, True),
                  ("shared encoding, batch 32", 32, True))
COMPARED = ["setting", "sample_id", "prediction", "score", "kept"]
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "embedded-model"


def run(model_dir: str | Path, per_task: int, repeats: int) -> list[dict]:
    """Rows of (configuration, median seconds, rows/s, speed-up vs the first, identical rows)."""
    em = load_eval_model(str(model_dir))
    data = [("synthetic", load_dataset("synthetic", per_task=per_task))]
    times = {label: [] for label, _, _ in CONFIGURATIONS}
    outputs, count = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for i, (label, batch_size, reuse) in enumerate(CONFIGURATIONS):
                start = time.perf_counter()
                rows = run_grid([em], GRID, data, Path(tmp) / f"{r}-{i}", batch_size=batch_size, progress=False,
                                reuse_images=reuse)
                times[label].append(time.perf_counter() - start)
                outputs[label], count = rows[COMPARED].sort_values(["setting", "sample_id"]).reset_index(drop=True), len(rows)
    reference = CONFIGURATIONS[0][0]
    base = statistics.median(times[reference])
    return [{"configuration": label, "median_s": statistics.median(times[label]),
             "rows_per_s": count / statistics.median(times[label]), "speedup": base / statistics.median(times[label]),
             "identical": outputs[label].equals(outputs[reference])} for label, _, _ in CONFIGURATIONS]


def format_table(rows: list[dict]) -> str:
    return markdown_table(["configuration", "median (s)", "samples/s", "vs first", "identical rows"],
                          [[r["configuration"], f"{r['median_s']:.1f}", f"{r['rows_per_s']:.1f}", f"{r['speedup']:.2f}×",
                            "yes" if r["identical"] else "NO"] for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a checkpoint folder (default: the embedded model)")
    parser.add_argument("--per-task", type=int, default=8, help="synthetic samples per task")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{len(GRID)} settings × {args.per_task} samples per task; rows = sample × setting")
    print(format_table(run(args.model, args.per_task, args.repeats)))


if __name__ == "__main__":
    main()
