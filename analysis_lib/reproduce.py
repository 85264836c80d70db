"""The main job on the CPU default: capture, pruning, FLOPs, figures and tables, end to end.

Until the trained embedded model and the notebooks land, this runs on a random-weight LLaVA-1.5
architecture model (12×12 = 144 visual tokens, 8 decoder layers) built offline. It exercises the whole
pipeline and shows the mechanics (where last-token attention falls by image row with and without RoPE;
which grid positions FastV keeps after early vs late layers), not trained-model findings.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .attention import TextAttentionSpec
from .capture import capture_attention
from .figures import paper_style, save_figure
from .flops import PRESETS, schedule_flops
from .pruning import PruningEngine
from .pruning.methods import METHODS
from .pruning.nominal import nominal_kept
from .tiny import TinySpec, tiny_inputs, tiny_vlm

SPEC = TinySpec(text_layers=8, hidden=128, heads=4, kv_heads=4, intermediate=256, vocab=256,
                vision_layers=2, vision_hidden=64, vision_heads=4, image_size=96, patch_size=8)
PAPER_LAYERS = (3, 8, 16, 24)  # FEATHER Fig. 3b's K on a 32-layer model, scaled by depth fraction


def _write_table(frame: pd.DataFrame, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    frame.to_parquet(stem.with_suffix(".parquet"), index=False)
    return [stem.with_suffix(".csv"), stem.with_suffix(".parquet")]


def attention_by_row(model, inputs, grid: int) -> pd.DataFrame:
    """Mean head-averaged last-token attention per image row, per layer, RoPE applied vs removed."""
    specs = {"RoPE applied": TextAttentionSpec(softmax="visual"),
             "RoPE removed (φ-R)": TextAttentionSpec(rope="removed", softmax="visual")}
    with torch.no_grad(), capture_attention(model, layers="all", specs=list(specs.values())) as cap:
        model(**inputs)
    rows = []
    for label, spec in specs.items():
        for layer in range(SPEC.text_layers):
            per_token = cap.head_mean(spec, layer).mean(dim=0).view(grid, grid)
            rows += [{"criterion": label, "layer": layer, "image_row": r, "attention": float(v)}
                     for r, v in enumerate(per_token.mean(dim=1))]
    return pd.DataFrame(rows)


def kept_frequency(model, inputs, grid: int) -> pd.DataFrame:
    """How often FastV (R = 0.75) keeps each grid cell, pruning after each scaled K."""
    rows = []
    for paper_k in PAPER_LAYERS:
        schedule = METHODS["fastv"].schedule(K=paper_k / 32, R=0.75)
        with torch.no_grad(), PruningEngine(model, schedule) as engine:
            model(**inputs)
        record = engine.records[-1]
        counts = torch.zeros(grid * grid)
        for kept in record.stages[0].kept:
            counts[kept] += 1
        counts /= len(record.stages[0].kept)
        layer = record.stages[0].layer
        rows += [{"paper_K": paper_k, "layer": layer, "row": i // grid, "col": i % grid, "kept_frequency": float(c)}
                 for i, c in enumerate(counts)]
    return pd.DataFrame(rows)


def flops_table() -> pd.DataFrame:
    """FLOPs reductions of the registered methods on the LLaVA-1.5-7B preset, both FFN accountings."""
    preset = PRESETS["llava-1.5-7b"]
    settings = [("fastv", {"K": 2, "R": 0.5}), ("fastv", {"K": 3, "R": 0.75}), ("fopru", {"R": 0.75}),
                ("vispruner", {"keep": 64}), ("feather", {})]
    rows = []
    for name, params in settings:
        stages = nominal_kept(METHODS[name].schedule(**params), preset.dims.layers, preset.grid)
        for ffn in (2, 3):
            report = schedule_flops(preset.dims, preset.n_visual, preset.n_system, stages, ffn_matrices=ffn)
            rows.append({"method": name, **params, "ffn_matrices": ffn, "reduction": round(report.reduction, 4)})
    return pd.DataFrame(rows)


def reproduce(root: str | Path = ".") -> list[Path]:
    """Run everything; write figures to figures/reproduce and tables to data/results/reproduce."""
    torch.manual_seed(0)
    root = Path(root)
    fig_dir, table_dir = root / "figures" / "reproduce", root / "data" / "results" / "reproduce"
    model = tiny_vlm("llava", spec=SPEC, seed=0)
    grid = SPEC.image_size // SPEC.patch_size
    inputs = tiny_inputs(model, [12] * 8, [10] * 8, seed=0)
    paper_style()
    written = []

    by_row = attention_by_row(model, inputs, grid)
    written += _write_table(by_row, table_dir / "attention_by_row")
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 2.6), sharey=True)
    for ax, (label, part) in zip(axes, by_row.groupby("criterion", sort=False)):
        sns.heatmap(part.pivot(index="layer", columns="image_row", values="attention"), ax=ax, cmap="mako",
                    cbar=ax is axes[-1])
        ax.set_title(label)
        ax.set_xlabel("image row (0 = top)")
    fig.suptitle("Last-token attention by image row (random-weight model)")
    written += save_figure(fig, fig_dir / "attention_by_row")

    kept = kept_frequency(model, inputs, grid)
    written += _write_table(kept, table_dir / "fastv_kept_frequency")
    fig, axes = plt.subplots(1, len(PAPER_LAYERS), figsize=(7.5, 2.2))
    for ax, (paper_k, part) in zip(axes, kept.groupby("paper_K")):
        sns.heatmap(part.pivot(index="row", columns="col", values="kept_frequency"), ax=ax, vmin=0, vmax=1,
                    cmap="rocket", cbar=False, xticklabels=False, yticklabels=False, square=True)
        ax.set_title(f"K={paper_k}/32 → layer {int(part.layer.iloc[0])}")
    fig.suptitle("How often FastV (R=0.75) keeps each grid cell")
    written += save_figure(fig, fig_dir / "fastv_kept_frequency")

    written += _write_table(flops_table(), table_dir / "flops")
    top = by_row[by_row.image_row < grid // 4].groupby("criterion").attention.mean()
    bottom = by_row[by_row.image_row >= grid - grid // 4].groupby("criterion").attention.mean()
    for label in top.index:
        print(f"{label}: mean attention on the top quarter {top[label]:.4f} vs bottom quarter {bottom[label]:.4f}")
    print("wrote:\n  " + "\n  ".join(str(p) for p in written))
    return written
