"""Benchmark: real prefill speed-up of token removal vs its FLOPs prediction, and the cost of capture.

    python -m analysis_lib.benchmarks.prefill            # mid-size models (minutes)
    python -m analysis_lib.benchmarks.prefill --quick    # tiny shapes, a smoke run

All variants of a model run round-robin in one process, so the ratios compare like with like on a noisy
machine; each time is the median over ``--repeats`` rounds. The models have random weights (speed does
not depend on their values) and are built offline: a LLaVA-1.5-architecture model (CLIP tower 336 px /
14 px patches = 576 tokens, Llama decoder) and a Qwen2.5-VL model on one 448×448 image (32×32 patches of
14 px, 2×2 merge = 256 tokens, windowed tower), both with the same CPU-sized decoder width and depth.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..capture import capture_attention
from ..flops import LMDims, schedule_flops
from ..pruning import PruningEngine
from ..pruning.methods import fastv, fopru
from ..pruning.nominal import nominal_kept
from ..tiny import TinySpec, tiny_inputs, tiny_vlm

MID = TinySpec(text_layers=8, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=1000,
               vision_layers=2, vision_hidden=64, vision_heads=4, image_size=336, patch_size=14)
QUICK = TinySpec(text_layers=4, hidden=128, heads=4, kv_heads=4, intermediate=256, vocab=200,
                 vision_layers=1, vision_hidden=32, vision_heads=2, image_size=112, patch_size=14)


@dataclass(frozen=True)
class Geometry:
    """A model family and its image: LLaVA's fixed square, or a Qwen image of (height, width) pixels."""

    family: str
    image: tuple[int, int] | None = None

    def grid(self, spec: TinySpec) -> tuple[int, int]:
        """Rows and columns of visual tokens (Qwen: 2×2-merged cells of 14 px patches)."""
        if self.image is None:
            side = spec.image_size // spec.patch_size
            return side, side
        return self.image[0] // 28, self.image[1] // 28


LLAVA = Geometry("llava")
QWEN = Geometry("qwen2_5_vl", (448, 448))
QWEN_QUICK = Geometry("qwen2_5_vl", (112, 112))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(spec: TinySpec, repeats: int, text_before: int = 35, text_after: int = 20,
        geometry: Geometry = LLAVA) -> list[dict]:
    """Rows of (variant, median seconds, measured speed-up, predicted speed-up)."""
    sdpa = tiny_vlm(geometry.family, spec=spec, attn_implementation="sdpa")
    eager = tiny_vlm(geometry.family, spec=spec, attn_implementation="eager")
    inputs = tiny_inputs(sdpa, [text_before], [text_after], None if geometry.image is None else [geometry.image])
    rows_, cols = geometry.grid(spec)
    n_visual = rows_ * cols
    dims = LMDims(spec.hidden, spec.intermediate, spec.text_layers)
    n_text = text_before + text_after
    schedules = {"FastV K=2 R=0.75 (remove)": fastv(K=2, R=0.75), "FoPru R=0.75 (before the LLM)": fopru(R=0.75)}

    def forward(model, **kw):
        with torch.no_grad():
            model(**inputs, **kw)

    def pruned(schedule):
        def fn():
            with PruningEngine(sdpa, schedule):
                forward(sdpa)
        return fn

    def captured():
        with capture_attention(sdpa, layers="all"):
            forward(sdpa)

    variants = {"unpruned (sdpa)": lambda: forward(sdpa),
                **{name: pruned(s) for name, s in schedules.items()},
                "capture every layer (sdpa)": captured,
                "eager + output_attentions": lambda: forward(eager, output_attentions=True)}
    times = {name: [] for name in variants}
    for name, fn in variants.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_timed(fn))
    base = statistics.median(times["unpruned (sdpa)"])
    rows = []
    for name, samples in times.items():
        med = statistics.median(samples)
        predicted = None
        if name in schedules:
            stages = nominal_kept(schedules[name], spec.text_layers, (rows_, cols))
            predicted = 1.0 / (1.0 - schedule_flops(dims, n_visual, n_text, stages).reduction)
        rows.append({"variant": name, "median_ms": 1000 * med, "vs_unpruned": base / med if predicted else med / base,
                     "predicted_speedup": predicted})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| variant | median prefill (ms) | measured | FLOPs-predicted speed-up | measured / predicted |",
             "|---|---|---|---|---|"]
    for r in rows:
        if r["predicted_speedup"]:
            lines.append(f"| {r['variant']} | {r['median_ms']:.1f} | {r['vs_unpruned']:.2f}× faster | "
                         f"{r['predicted_speedup']:.2f}× | {r['vs_unpruned'] / r['predicted_speedup']:.0%} |")
        else:
            lines.append(f"| {r['variant']} | {r['median_ms']:.1f} | {r['vs_unpruned']:.2f}× the unpruned time | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is steadiest on a shared 2-core machine")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = QUICK if args.quick else MID
    for geometry in (LLAVA, QWEN_QUICK if args.quick else QWEN):
        rows, cols = geometry.grid(spec)
        image = f", one {geometry.image[0]}x{geometry.image[1]} image" if geometry.image else ""
        print(f"\n{geometry.family}: decoder {spec.text_layers} layers x {spec.hidden}, {rows * cols} visual tokens"
              f"{image}, 55 text tokens; {args.repeats} rounds, {args.threads} threads")
        print(format_table(run(spec, args.repeats, geometry=geometry)))


if __name__ == "__main__":
    main()
