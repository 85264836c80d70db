"""Data-parallel evaluation: 2 processes under torchrun vs 1, on the embedded model, CPU, one thread each.

    python -m analysis_lib.benchmarks.processes [--model data/embedded-model] [--samples 128] [--repeats 1]

Runs the same ``python -m analysis_lib eval`` grid into fresh folders, once as one process and once as
``torchrun --standalone --nproc_per_node 2`` (gloo), and prints samples/s of each whole command (start-up
and model loading included), the ratio, and whether the results tables are identical except the
timing, rank and world-size columns.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from ..evaluation.runner import VARYING_COLUMNS
from . import markdown_table

REPO = Path(__file__).resolve().parents[2]


def _eval(processes: int, model: str, samples: int, out: Path) -> float:
    """Seconds of one eval command with ``processes`` ranks (1: a plain process)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "analysis_lib", "eval", "--model", model, "--methods", "none",
               "fastv:K=0.34,R=0.75", "--dataset", "synthetic", "--limit", str(samples), "--batch-size", "8",
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def run(model: str, samples: int, repeats: int) -> list[dict]:
    """Rows of (processes, median seconds, samples/s, speed-up vs 1 process, identical rows)."""
    times: dict[int, list[float]] = {1: [], 2: []}
    tables: dict[int, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for processes in times:
                out = Path(tmp) / f"{processes}-{r}"
                times[processes].append(_eval(processes, model, samples, out))
                table = pd.read_parquet(out / "results.parquet")
                tables[processes] = table.drop(columns=list(VARYING_COLUMNS))
    base = statistics.median(times[1])
    rows = 2 * samples
    return [{"processes": p, "median_s": statistics.median(t), "rows_per_s": rows / statistics.median(t),
             "speedup": base / statistics.median(t), "differing": _differing(tables[p], tables[1])}
            for p, t in times.items()]


def _differing(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The columns whose values (or dtypes) differ; [] when the tables are identical."""
    if a.shape != b.shape or list(a.columns) != list(b.columns):
        return ["shape or columns"]
    return [c for c in a.columns if not a[c].equals(b[c]) or a[c].dtype != b[c].dtype]


def format_table(rows: list[dict]) -> str:
    return markdown_table(["processes", "median (s)", "rows/s", "vs 1 process", "identical rows"],
                          [[str(r["processes"]), f"{r['median_s']:.1f}", f"{r['rows_per_s']:.1f}",
                            f"{r['speedup']:.2f}×", "NO: " + ", ".join(r["differing"]) if r["differing"] else "yes"]
                           for r in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "data" / "embedded-model"))
    parser.add_argument("--samples", type=int, default=128, help="synthetic samples (each under 2 methods)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    print(format_table(run(args.model, args.samples, args.repeats)))


if __name__ == "__main__":
    main()
