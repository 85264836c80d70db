"""Merge: after a stage selects, kept tokens may absorb other tokens (a weighted sum of their states).

A merge is linear and computed from the states before it: kept token t becomes x_t + Σ w·x_s over its
(target t, source s, weight w) triples (s may be t itself: -0.5 on t and 0.5 on s averages the two).
Removed tokens then disappear exactly as with pruning. Where it acts (``acts_on``): "projector_input"
(the features the projector reads, re-projected per token; stages before the LLM only), "states" (the
projector outputs before the LLM, the hidden states inside it), or "vision_tower" (ToMe: merged inside
the tower already, ``tower_merging.py``; the engine records the map and never applies it again).
Mask-mode reference: every slot stays, kept tokens carry the merged states and removed ones are masked.
All weights zero = plain pruning.

This module also holds the selection halves of the merging methods (VisionZip, PruMerge, PruMerge+).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..validation import check_choice, check_int, check_range
from .scorers import VISION_LAYERS
from .selectors import SampleSelection, _ranked
from .signals import Reads
from .states import SampleStates

MERGE_TARGETS = ("projector_input", "states")


@dataclass
class MergeMap:
    """One sample's merge as triples in original visual-token indices: ``target`` absorbs ``weight`` × ``source``."""

    target: torch.Tensor  # [M] long
    source: torch.Tensor  # [M] long
    weight: torch.Tensor  # [M] float

    @classmethod
    def concat(cls, parts: list[MergeMap]) -> MergeMap:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("target", "source", "weight")))

    def merged_into(self) -> dict[int, int]:
        """For each source absorbed by another token, the target taking it with the largest weight."""
        best: dict[int, tuple[float, int]] = {}
        for t, s, w in zip(self.target.tolist(), self.source.tolist(), self.weight.tolist()):
            if s != t and (s not in best or w > best[s][0]):
                best[s] = (w, t)
        return {s: t for s, (_, t) in sorted(best.items())}

    def triples(self) -> list[list]:
        """[[target, source, weight], ...] (JSON-ready)."""
        return [[t, s, round(w, 7)] for t, s, w in zip(self.target.tolist(), self.source.tolist(),
                                                       self.weight.tolist())]

    def apply(self, states: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows of the targets, their merged states) for ``states`` [R, D] where token i sits at row
        ``rows[i]``; summed in float32 from the unmerged states."""
        targets = self.target.unique()
        if targets.numel() == 0:
            return targets, states[:0]
        rows = rows.to(states.device)
        base = states.float()
        delta = torch.zeros_like(base).index_add_(0, rows[self.target.to(states.device)],
                                                  self.weight.to(states.device)[:, None] * base[rows[
                                                      self.source.to(states.device)]])
        target_rows = rows[targets.to(states.device)]
        return target_rows, (base[target_rows] + delta[target_rows]).to(states.dtype)


@dataclass
class MergeInputs:
    """What a merger reads for one sample (or one crop of it, with ``scope="crop"``)."""

    kept: torch.Tensor  # [k] original indices, sorted
    candidates: torch.Tensor  # [N] bool: tokens entering the stage (this crop's, with scope="crop")
    scores: torch.Tensor  # [N] the stage's scores (NaN = none)
    keys: torch.Tensor | None = None  # [N, heads, head_dim] vision-tower keys, NaN rows for tokens without a patch
    states: SampleStates | None = None  # the LLM's states where the stage prunes (if its scorer or selector reads them)
    budget: int | None = None  # the stage's budget k for this sample (crop)
    clusters: object = None  # ToMe's TowerClusters (``tower_merging.py``), merges made inside the vision tower


class Merger(Protocol):
    """Decides which kept tokens absorb which tokens, with what weights."""

    name: str
    acts_on: str
    needs_keys: bool
    keys_layer: str

    def merge(self, sample: MergeInputs) -> MergeMap: ...


def _unit(keys: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(keys.double(), dim=-1)


def _usable(sample: MergeInputs) -> torch.Tensor:
    """Candidates that have keys (LLaVA-NeXT's newline tokens have none and are never merged)."""
    return sample.candidates & ~torch.isnan(sample.keys.flatten(1)).any(dim=1)


def dominant_count(k: int, share: float) -> int:
    return int(k * share + 1e-9)


def _empty() -> MergeMap:
    return MergeMap(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))


@dataclass(frozen=True)
class DominantContextual(Reads):
    """VisionZip's selection: int(k·dominant) dominant tokens by score ([CLS] attention), then the rest of
    the budget as contextual targets spread uniformly over the remaining scored candidates in image order
    (every ``max(1, M // c)``-th of the M remaining, the first c of them, as the official code takes them)."""

    dominant: float = 54 / 64
    name: str = "dominant+contextual"
    needs_budget: bool = True

    def __post_init__(self):
        check_range("dominant", self.dominant, 0.0, 1.0)

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        d = dominant_count(k, self.dominant)
        dominant = _ranked(sample)[:d]
        rest = sample.candidates & ~torch.isnan(sample.scores)
        rest[dominant] = False
        remaining = rest.nonzero().flatten()
        c = min(k - d, remaining.numel())
        contextual = remaining[torch.arange(0, remaining.numel(), max(1, remaining.numel() // max(c, 1)))[:c]]
        return torch.sort(torch.cat([dominant, contextual])).values


@dataclass(frozen=True)
class ContextualMerge:
    """VisionZip's merge: every removed token goes to the contextual target (a kept token outside the
    int(k·dominant) best-scored) whose key is most similar (cosine of the head-mean keys at the feature
    layer, as the official code's ``metric``); a target becomes its own state plus the mean of the tokens
    it absorbed (weight 1/count each; the official code adds the mean to the target, it does not average
    the target in)."""

    dominant: float = 54 / 64
    name: str = "contextual"
    acts_on: str = "projector_input"
    needs_keys: bool = True
    keys_layer: str = "feature"

    def __post_init__(self):
        check_range("dominant", self.dominant, 0.0, 1.0)
        check_choice("acts_on", self.acts_on, MERGE_TARGETS)
        check_choice("keys_layer", self.keys_layer, VISION_LAYERS)

    def merge(self, sample: MergeInputs) -> MergeMap:
        ranked = _ranked(SampleSelection(sample.scores, torch.isin(torch.arange(sample.candidates.numel()),
                                                                    sample.kept), None))
        targets = torch.sort(ranked[dominant_count(sample.kept.numel(), self.dominant):]).values
        removed = _usable(sample)
        removed[sample.kept] = False
        sources = removed.nonzero().flatten()
        if targets.numel() == 0 or sources.numel() == 0:
            return _empty()
        keys = _unit(sample.keys.mean(dim=1))
        chosen = targets[(keys[sources] @ keys[targets].T).argmax(dim=1)]
        counts = torch.bincount(chosen, minlength=sample.candidates.numel()).double()
        return MergeMap(chosen, sources, (1.0 / counts[chosen]).float())


#: PruMerge's mean share of [CLS]-attention outliers on LLaVA-1.5 (32 of 576 tokens, 5.5%): the nominal
#: count for theoretical FLOPs before any image is seen (measured runs record the real counts)
PRUMERGE_MEAN_SHARE = 32 / 576


@dataclass(frozen=True)
class Outliers(Reads):
    """PruMerge's adaptive selection: the scored candidates whose score ([CLS] attention) is above
    Q3 + 1.5·IQR of the sample's scores (numpy-style linear percentiles, as the official code), at least
    the best one. ``spatial`` (PruMerge+) adds the tokens at every ``max(1, int(int(1/ratio)/3))``-th
    place of the scored candidates in image order, ratio = outliers / tokens, places 0..M-2 (the
    official ``arange(0, 575, ·)`` over 576 tokens)."""

    spatial: bool = False
    needs_budget: bool = False

    @property
    def name(self) -> str:
        return "iqr-outliers" + ("+spatial" if self.spatial else "")

    def select(self, sample: SampleSelection, k: int | None = None) -> torch.Tensor:
        scored = (sample.candidates & ~torch.isnan(sample.scores)).nonzero().flatten()
        if scored.numel() == 0:
            return scored
        values = sample.scores[scored].double()
        q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=torch.float64))
        n_out = max(1, int((values > q3 + 1.5 * (q3 - q1)).sum()))
        kept = _ranked(sample)[:n_out]
        if self.spatial:
            stride = max(1, int(int(1 / (n_out / scored.numel())) / 3))
            kept = torch.cat([kept, scored[torch.arange(0, scored.numel() - 1, stride)]])
        return torch.unique(kept)

    def typical_scores(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Scores with PruMerge's mean outlier share (for nominal counts): uniform, a random 5.5% far above."""
        scores = torch.rand(n, generator=generator)
        outliers = torch.randperm(n, generator=generator)[:round(n * PRUMERGE_MEAN_SHARE)]
        scores[outliers] += 2.0
        return scores


@dataclass(frozen=True)
class TopAndSpread(Reads):
    """PruMerge+ with a fixed budget k (its official non-adaptive branch keeps as many top-[CLS] tokens as
    spatially spread ones): k - k//2 best-scored, then k//2 spread evenly over the remaining scored
    candidates in image order (the i-th at place floor((i + 1/2)·M / (k//2)), the official half-step offset)."""

    name: str = "top+spread"
    needs_budget: bool = True

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        spread = k // 2
        top = _ranked(sample)[:k - spread]
        rest = sample.candidates & ~torch.isnan(sample.scores)
        rest[top] = False
        remaining = rest.nonzero().flatten()
        spread = min(spread, remaining.numel())
        places = ((torch.arange(spread, dtype=torch.float64) + 0.5) * remaining.numel() / max(spread, 1)).long()
        return torch.sort(torch.cat([top, remaining[places]])).values


@dataclass(frozen=True)
class NeighbourMerge:
    """PruMerge's merge: each kept token absorbs its ``neighbours`` nearest other tokens (cosine of the keys,
    all heads concatenated, at the tower's last layer, as the official code hooks ``layers[23]``), kept ones
    included, each weighted by its score ([CLS] attention), unnormalised: x_t + Σ a_s·x_s, as the official
    code (its division by Σ a_s is commented out)."""

    neighbours: int = 32
    name: str = "knn-merge"
    acts_on: str = "projector_input"
    needs_keys: bool = True
    keys_layer: str = "last"

    def __post_init__(self):
        check_int("neighbours", self.neighbours, 1)
        check_choice("acts_on", self.acts_on, MERGE_TARGETS)
        check_choice("keys_layer", self.keys_layer, VISION_LAYERS)

    def merge(self, sample: MergeInputs) -> MergeMap:
        usable = _usable(sample).nonzero().flatten()
        keys = _unit(sample.keys.flatten(1))
        parts = []
        for t in sample.kept.tolist():
            others = usable[usable != t]
            if others.numel() == 0:
                continue
            similarity = keys[others] @ keys[t]
            near = others[torch.topk(similarity, min(self.neighbours, others.numel())).indices]
            parts.append(MergeMap(torch.full_like(near, t), near, sample.scores[near].float()))
        return MergeMap.concat(parts) if parts else _empty()
