"""Positional bias of text→visual attention (FEATHER Finding 2 / Fig. 3b; VisPruner Fig. 2a-b).

Everything runs one prefill per batch (no generation is needed to see what a criterion keeps):
- ``kept_frequency``: how often FastV keeps each grid cell when pruning after each layer K;
- ``last_token_attention``: the attention every visual token receives from the last token, per layer
  (RoPE as applied, head mean), from which ``attention_by_index`` and ``quartile_share_of_top`` follow.
Layers are given for a ``paper_depth``-layer model and scaled to the model by depth fraction.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from ..attention import TextAttentionSpec
from ..capture import capture_attention
from ..evaluation.datasets import EvalSample
from ..evaluation.runner import EvalModel, prompt_inputs
from ..pruning import PruningEngine, get_method
from ..pruning.schedule import resolve_layer

LAST = TextAttentionSpec()


def scaled_layer(paper_layer: int, paper_depth: int, num_layers: int) -> int:
    """Layer ``paper_layer`` of a ``paper_depth``-layer model mapped onto ``num_layers`` by depth fraction."""
    return resolve_layer(paper_layer / paper_depth, num_layers)


def batches(em: EvalModel, samples: Sequence[EvalSample], batch_size: int) -> Iterator[tuple[list, dict]]:
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start:start + batch_size])
        yield chunk, prompt_inputs(em, chunk)


@torch.no_grad()
def kept_frequency(em: EvalModel, samples: Sequence[EvalSample], paper_layers: Sequence[int], R: float,
                   batch_size: int = 8, paper_depth: int = 32, method: str = "fastv") -> pd.DataFrame:
    """Per paper layer K and grid cell of the first segment (LLaVA-1.5's grid; LLaVA-NeXT's base image):
    the fraction of samples in which ``method`` (pruning after K with ratio R) keeps the cell."""
    rows = []
    for paper_k in paper_layers:
        schedule = get_method(method).schedule(K=paper_k / paper_depth, R=R)
        counts: dict[tuple[int, int], int] = {}
        seen = 0
        for _, inputs in batches(em, samples, batch_size):
            with PruningEngine(em.model, schedule, adapter=em.adapter) as engine:
                em.model(**inputs)
            record = engine.records[-1]
            for b in range(len(record.num_visual)):
                seen += 1
                for cell in record.kept_coordinates(0, b):
                    if cell["segment"] == 0:
                        key = (cell["row"], cell["col"])
                        counts[key] = counts.get(key, 0) + 1
        grid = record.layout.samples[0].segments[0]
        layer = record.stages[0].layer
        for r in range(grid.rows):
            for c in range(grid.cols):
                rows.append({"paper_K": paper_k, "layer": layer, "row": r, "col": c,
                             "kept_frequency": counts.get((r, c), 0) / seen})
    return pd.DataFrame(rows)


@torch.no_grad()
def last_token_attention(em: EvalModel, samples: Sequence[EvalSample], batch_size: int = 8) -> pd.DataFrame:
    """One row per sample × layer × visual token: the head-mean attention from the last token (RoPE as
    applied, full softmax), with the token's grid cell."""
    frames = []
    index = 0
    for chunk, inputs in batches(em, samples, batch_size):
        with capture_attention(em.model, layers="all", specs=(LAST,), adapter=em.adapter) as cap:
            em.model(**inputs)
        for b, grid in enumerate(cap.layout.samples):
            n = grid.num_tokens
            for layer in range(em.adapter.num_layers):
                frames.append(pd.DataFrame({
                    "sample": index, "layer": layer, "visual_index": np.arange(n),
                    "segment": grid.segment.numpy(), "row": grid.row.numpy(), "col": grid.col.numpy(),
                    "attention": cap.head_mean(LAST, layer)[b, :n].float().cpu().numpy()}))
            index += 1
    return pd.concat(frames, ignore_index=True)


def attention_by_index(attention: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Mean attention received per visual-token index at ``layer``."""
    part = attention[attention.layer == layer]
    return part.groupby("visual_index", as_index=False).attention.mean()


def quartile_share_of_top(attention: pd.DataFrame, top: float = 0.25) -> pd.DataFrame:
    """Per layer and quartile of the visual-token sequence: the share of each sample's top-``top``
    attended tokens that lie in it (VisPruner Fig. 2b), averaged over samples."""
    rows = []
    for (layer, _), part in attention.groupby(["layer", "sample"], sort=True):
        n = len(part)
        k = max(1, int(np.ceil(top * n)))
        best = part.nlargest(k, "attention", keep="first").visual_index.to_numpy()
        quartile = best * 4 // n
        rows += [{"layer": layer, "quartile": q + 1, "share": float(np.mean(quartile == q))} for q in range(4)]
    return pd.DataFrame(rows).groupby(["layer", "quartile"], as_index=False).share.mean()


def kept_frequency_figure(frequency: pd.DataFrame) -> plt.Figure:
    panels = frequency.groupby("paper_K", sort=True)
    n = len(panels)
    fig, axes = plt.subplots(1, n + 1, figsize=(1.9 * n + 0.6, 2.2), gridspec_kw={"width_ratios": [1] * n + [0.06]})
    for i, (ax, (paper_k, part)) in enumerate(zip(axes, panels)):
        sns.heatmap(part.pivot(index="row", columns="col", values="kept_frequency"), ax=ax, vmin=0, vmax=1,
                    cmap="rocket", cbar=i == 0, cbar_ax=axes[-1] if i == 0 else None, xticklabels=False,
                    yticklabels=False, square=True)
        ax.set_title(f"K={paper_k}/32 (layer {int(part.layer.iloc[0])})")
        ax.set_xlabel("")
        ax.set_ylabel("top → bottom" if i == 0 else "")
    fig.suptitle("How often each grid cell is kept")
    return fig


def frequency_vs_attention_figure(frequency: pd.DataFrame, attention: pd.DataFrame, paper_k: int) -> plt.Figure:
    """Selection frequency and attention received per visual-token index (VisPruner Fig. 2a)."""
    part = frequency[frequency.paper_K == paper_k]
    cols = int(part.col.max()) + 1
    freq = part.assign(visual_index=part.row * cols + part.col).sort_values("visual_index")
    layer = int(part.layer.iloc[0])
    att = attention_by_index(attention[attention.segment == 0], layer - 1)
    fig, ax = plt.subplots(figsize=(6.0, 2.2))
    ax.bar(freq.visual_index, freq.kept_frequency, width=1.0, color="0.75", label="selection frequency")
    ax.set_xlabel("visual token index")
    ax.set_ylabel("selection frequency")
    twin = ax.twinx()
    twin.plot(att.visual_index, att.attention, color="C3", lw=0.8, label="attention received")
    twin.set_ylabel(f"attention at layer {layer - 1}")
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.95), frameon=False)
    ax.set_title(f"FastV after K={paper_k}/32 (layer {layer})")
    return fig


def quartile_share_figure(share: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(3.6, 2.6))
    sns.heatmap(share.pivot(index="layer", columns="quartile", values="share"), ax=ax, vmin=0, vmax=1, annot=True,
                fmt=".2f", cmap="mako", cbar=False)
    ax.set_title("Share of the top-25% attended tokens")
    ax.set_xlabel("quartile of the visual-token sequence")
    return fig


def summary(frequency: pd.DataFrame, share: pd.DataFrame) -> str:
    """What the figures show, in numbers (markdown)."""
    lines = []
    for paper_k, part in frequency.groupby("paper_K", sort=True):
        rows = int(part.row.max()) + 1
        quarter = max(1, rows // 4)
        top = part[part.row < quarter].kept_frequency.mean()
        bottom = part[part.row >= rows - quarter].kept_frequency.mean()
        lines.append(f"- Pruning after K={paper_k}/32 (layer {int(part.layer.iloc[0])}): cells in the top quarter "
                     f"of rows are kept {top:.0%} of the time, cells in the bottom quarter {bottom:.0%}.")
    first, last = share.layer.min(), share.layer.max()
    q4 = share[share.quartile == 4].set_index("layer").share
    lines.append(f"- The last quartile of the visual sequence holds {q4[first]:.0%} of the top-25% attended tokens at "
                 f"layer {first} and {q4[last]:.0%} at layer {last} (25% would be no positional bias).")
    return "\n".join(lines)
