"""Score: how important each visual token is, from whatever signal a criterion uses.

A scorer declares the signal it needs (text→visual attention at the layer before its stage, or the
vision tower's attention at the feature layer); the engine records exactly that, then calls
``score`` with a ScoreInputs. Scores are [B, N] over original visual-token indices; higher = keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..attention import TextAttentionSpec
from ..validation import check_choice


@dataclass
class ScoreInputs:
    """What a scorer may read for one stage of one prompt."""

    num_visual: list[int]  # visual tokens per sample
    candidates: torch.Tensor  # [B, N] bool: tokens still present when the stage starts
    text_attention: torch.Tensor | None = None  # [B, N] head-mean rows of the layer before the stage
    vision_attention: list[torch.Tensor] | None = None  # per sample [N_b]: head-mean vision attention


class Scorer(Protocol):
    name: str
    needs_text_attention: bool
    vision_kind: str | None  # "cls" | "received" | None

    def score(self, inputs: ScoreInputs) -> torch.Tensor: ...


def _pad(per_sample: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.full((len(per_sample), width), float("nan"))
    for b, values in enumerate(per_sample):
        out[b, : values.numel()] = values.float().cpu()
    return out


@dataclass(frozen=True)
class TextAttentionScorer:
    """Attention the visual tokens receive from the text at layer K-1 (FastV's φ_original by default;
    ``TextAttentionSpec(rope="removed")`` is FEATHER's φ-R)."""

    spec: TextAttentionSpec = field(default_factory=TextAttentionSpec)
    name: str = "text_attention"
    needs_text_attention: bool = True
    vision_kind: str | None = None

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return inputs.text_attention


@dataclass(frozen=True)
class VisionAttentionScorer:
    """Vision-tower attention at the feature layer: the [CLS] row ("cls") or mean received ("received")."""

    kind: str = "cls"
    name: str = "vision_attention"
    needs_text_attention: bool = False

    def __post_init__(self):
        check_choice("kind", self.kind, ("cls", "received"))

    @property
    def vision_kind(self) -> str:
        return self.kind

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return _pad(inputs.vision_attention, inputs.candidates.shape[1])


@dataclass(frozen=True)
class RandomScorer:
    """Uniform random scores, drawn per sample from the seed alone: a sample gets the same kept set
    whether it runs alone or in a batch."""

    seed: int = 0
    name: str = "random"
    needs_text_attention: bool = False
    vision_kind: str | None = None

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        width = inputs.candidates.shape[1]
        return torch.stack([torch.rand(width, generator=torch.Generator().manual_seed(self.seed))
                            for _ in inputs.num_visual])


@dataclass(frozen=True)
class FixedScorer:
    """Prefers a given set of visual tokens per sample (e.g. the kept set of another run, applied elsewhere)."""

    kept: tuple[tuple[int, ...], ...]
    name: str = "fixed"
    needs_text_attention: bool = False
    vision_kind: str | None = None

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        if len(self.kept) != len(inputs.num_visual):
            raise ValueError(f"kept: {len(self.kept)} index lists for a batch of {len(inputs.num_visual)} samples")
        out = torch.zeros(inputs.candidates.shape)
        for b, indices in enumerate(self.kept):
            bad = [i for i in indices if not 0 <= i < inputs.num_visual[b]]
            if bad:
                raise ValueError(f"kept: indices {bad} outside 0..{inputs.num_visual[b] - 1} for sample {b}")
            out[b, list(indices)] = 1.0
        return out
