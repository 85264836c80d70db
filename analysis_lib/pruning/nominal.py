"""Kept-token counts of a schedule on a plain grid, known before any model runs (for theoretical FLOPs).

Counts that depend on the scores (the union of a top-k set with a stride grid) are averaged over
random scores and features and rounded: the top 30% of 729 tokens ∪ the stride-3 grid gives ≈275.
Measured runs record the real counts per sample instead.
"""
from __future__ import annotations

import torch

from ..layout import SampleGrid, Segment
from .schedule import Schedule
from .selectors import SampleSelection
from .states import SampleStates
from .tower_merging import keep_count, merge_schedule


def plain_grid(rows: int, cols: int) -> SampleGrid:
    """One image of rows × cols visual tokens in raster order (LLaVA-1.5's layout)."""
    n = rows * cols
    index = torch.arange(n)
    row, col = index // cols, index % cols
    return SampleGrid(positions=index, patch=index, image=torch.zeros(n, dtype=torch.long),
                      segment=torch.zeros(n, dtype=torch.long), row=row, col=col,
                      y=(row.float() + 0.5) / rows, x=(col.float() + 0.5) / cols,
                      segments=[Segment("image", rows, cols)])


def _random_states(n: int, generator: torch.Generator, text: int = 8, width: int = 8) -> SampleStates:
    """Random LLM states for n visual tokens and ``text`` text tokens."""
    visual, text_rows = torch.randn(n, width, generator=generator), torch.randn(text, width, generator=generator)
    return SampleStates(visual, text_rows, visual, text_rows, visual, text_rows)


def nominal_kept(schedule: Schedule, num_layers: int, grid: tuple[int, int], draws: int = 32,
                 seed: int = 0) -> list[tuple[int, int]]:
    """(layer, kept visual tokens) of each stage on a rows × cols grid: exact for fixed budgets and
    position-based selectors, the rounded mean over ``draws`` random score draws otherwise."""
    sample = plain_grid(*grid)
    n = sample.num_tokens
    resolved = schedule.resolve(num_layers)
    totals = [0] * len(resolved)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(draws):
        candidates = torch.ones(n, dtype=torch.bool)
        for s, (_, stage) in enumerate(resolved):
            typical = getattr(stage.selector, "typical_scores", None)  # data-dependent counts (PruMerge)
            scores = typical(n, generator) if typical else torch.rand(n, generator=generator)
            features = torch.randn(n, 8, generator=generator) if stage.needs_features else None
            states = _random_states(n, generator) if stage.needs_states else None
            k = stage.budget(int(candidates.sum()), n)
            if stage.merges_on == "vision_tower":  # ToMe: the tower's budget, exact
                kept = torch.arange(keep_count(stage.merging.keep, n))
            else:
                kept = stage.selector.select(SampleSelection(scores, candidates, sample, features, states), k)
            candidates = torch.zeros(n, dtype=torch.bool)
            candidates[kept] = True
            totals[s] += kept.numel()
    return [(layer, round(total / draws)) for (layer, _), total in zip(resolved, totals)]


def tower_tokens(schedule: Schedule, patches: int, layers: int, feature_layer: int) -> list[tuple[int, int]]:
    """(tokens attended, tokens after the merge) per tower layer of one crop of ``patches`` patches (+ [CLS]):
    ToMe's per-layer counts for a schedule that merges in the tower, the unmerged counts otherwise."""
    tokens, out = patches + 1, []
    merging = [stage.merging for stage in schedule.stages if stage.merges_on == "vision_tower"]
    rs = merge_schedule(patches, merging[0].keep, feature_layer + 1) if merging else []
    for i in range(layers):
        r = rs[i] if i < len(rs) else 0
        out.append((tokens, tokens - r))
        tokens -= r
    return out
