"""Score: how important each visual token is, from whatever signal a criterion uses.

A scorer declares the signals it reads (``signals.Reads``: the decoder's queries and keys at the layer
before its stage, the vision tower's attention at one of its layers, the feature-layer patch features, the
language model's states); the engine records exactly those, then calls ``score`` with a ScoreInputs.
Scores are [B, N] over original visual-token indices (NaN where a token has no score, e.g. LLaVA-NeXT's
newline tokens for vision-side scores); higher = keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..attention import TextAttentionSpec, VisionRows, patches_to_tokens
from ..layout import VisualLayout
from ..validation import check_choice
from .signals import DecoderAttention, Reads
from .states import SampleStates


@dataclass
class ScoreInputs:
    """What a scorer may read for one stage of one prompt (each signal only where the stage declares it)."""

    num_visual: list[int]  # visual tokens per sample
    candidates: torch.Tensor  # [B, N] bool: tokens still present when the stage starts
    layout: VisualLayout | None = None
    decoder: DecoderAttention | None = None  # queries and keys of the decoder layer before the stage
    vision: VisionRows | None = None  # tower attention at the scorer's vision_layer, per crop and head
    features: list[torch.Tensor] | None = None  # per sample [N_b, C] feature-layer patch features (NaN rows)
    states: list[SampleStates] | None = None  # per sample, the LLM's states where the stage prunes
    embeddings: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per sample, input embeddings (visual, text)


class Scorer(Protocol):
    """Scores one stage's tokens from the signals it declares."""

    name: str
    needs_text_attention: bool
    needs_vision_attention: bool
    needs_features: bool
    needs_states: bool
    needs_embeddings: bool
    vision_layer: str

    def score(self, inputs: ScoreInputs) -> torch.Tensor: ...


def pad_per_sample(per_sample: list[torch.Tensor], width: int) -> torch.Tensor:
    """Stack per-sample [N_b] values into [B, width], NaN beyond each sample's tokens."""
    out = torch.full((len(per_sample), width), float("nan"))
    for b, values in enumerate(per_sample):
        out[b, : values.numel()] = values.float().cpu()
    return out


@dataclass(frozen=True)
class TextAttentionScorer(Reads):
    """Attention the visual tokens receive from the text at layer K-1 (FastV's φ_original by default;
    ``TextAttentionSpec(rope="removed", softmax="visual")`` is FEATHER's φ-R)."""

    spec: TextAttentionSpec = field(default_factory=TextAttentionSpec)
    name: str = "text_attention"
    needs_text_attention = True

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return inputs.decoder.text_visual(self.spec)


VISION_SCORES = ("cls", "received", "auto")
VISION_LAYERS = ("feature", "last")


@dataclass(frozen=True)
class VisionAttentionScorer(Reads):
    """Vision-tower attention at the feature layer, mean over heads: the [CLS] row ("cls"), the mean
    attention a patch receives from the patches ("received"), or "auto" (the default): [CLS] when the tower
    has one, else received (VisPruner's rule for towers without [CLS], §3.3; used on Qwen's tower).
    ``layer``: the tower layer read, "feature" (the one whose output the projector reads) or "last";
    ``joint``: the [CLS] row is one softmax over all heads' q·k together (PruMerge's code), not a head mean."""

    kind: str = "auto"
    layer: str = "feature"
    joint: bool = False
    name: str = "vision_attention"
    needs_vision_attention = True

    def __post_init__(self):
        check_choice("kind", self.kind, VISION_SCORES)
        check_choice("layer", self.layer, VISION_LAYERS)

    @property
    def vision_layer(self) -> str:
        return self.layer

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        kind = self.kind
        if kind == "auto":
            kind = "cls" if inputs.vision.cls is not None else "received"
        rows = inputs.vision.cls_joint if kind == "cls" and self.joint else getattr(inputs.vision, kind)
        if rows is None:
            raise ValueError(f"kind={self.kind!r}: this vision tower has no [CLS] token; allowed: 'received', 'auto'")
        return pad_per_sample(patches_to_tokens(rows.mean(dim=1), inputs.layout), inputs.candidates.shape[1])


SIGNIFICANCE_RULES = ("variance", "low-variance", "given", "received")


def _nanvar(values: torch.Tensor) -> torch.Tensor:
    """Unbiased variance per row [crops, P] over the non-NaN entries (crops of different sizes are NaN-padded)."""
    valid = ~values.isnan()
    mean = values.nanmean(dim=1, keepdim=True)
    return ((values - mean) ** 2).nansum(dim=1) / (valid.sum(dim=1) - 1).clamp(min=1)


@dataclass(frozen=True)
class FoPruSignificance(Reads):
    """FoPru's token significance (eqs. 2-4) from the feature layer's head-mean attention over the
    patch tokens: s1 = mean attention each patch gives, s2 = mean attention each patch receives;
    ``rule="variance"`` keeps the one with the larger variance (the paper), "low-variance" the other
    (its "w/o Variance" ablation), "given"/"received" force one. Decided per encoder crop.

    Reading: the paper's N×N map is taken over the patch tokens ([CLS] row and column dropped), since
    with [CLS] kept every row sums to one and s1 would be constant.
    """

    rule: str = "variance"
    name: str = "fopru_significance"
    needs_vision_attention = True

    def __post_init__(self):
        check_choice("rule", self.rule, SIGNIFICANCE_RULES)

    def per_crop(self, vision: VisionRows) -> torch.Tensor:
        """[crops, P] significance."""
        given, received = vision.given.mean(dim=1), vision.received.mean(dim=1)
        if self.rule in ("given", "received"):
            return given if self.rule == "given" else received
        given_wins = _nanvar(given) > _nanvar(received)
        if self.rule == "low-variance":
            given_wins = ~given_wins
        return torch.where(given_wins[:, None], given, received)

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return pad_per_sample(patches_to_tokens(self.per_crop(inputs.vision), inputs.layout),
                              inputs.candidates.shape[1])


DELTA_DISTANCES = ("squared", "plain")


def density_peaks(features: torch.Tensor, k: int, delta: str = "squared") -> torch.Tensor:
    """DPC-KNN score ρ·δ of each row of ``features`` [n, C].

    Distances are Euclidean divided by sqrt(C); ρ = exp(-mean squared distance to the k nearest rows,
    the row itself included as in the DPC-KNN token clustering of TCFormer / Chat-UniVi); δ = distance
    to the nearest denser row (ties in ρ broken by index: the earlier row counts as denser), or the
    largest distance of the row for the densest one. ``delta="squared"`` (default) squares that
    distance, as FEATHER's eq. 2 writes δ; ``"plain"`` uses it as is, as TCFormer's DPC-KNN does.
    """
    check_choice("delta", delta, DELTA_DISTANCES)
    n, channels = features.shape
    dist = torch.cdist(features.double(), features.double()) / channels**0.5
    nearest = dist.topk(min(k, n), dim=1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=1))
    index = torch.arange(n)
    denser = (density[None, :] > density[:, None]) | ((density[None, :] == density[:, None]) & (index[None, :] < index[:, None]))
    separation = dist**2 if delta == "squared" else dist
    nearest_denser = torch.where(denser, separation, torch.inf).min(dim=1).values
    nearest_denser = torch.where(denser.any(dim=1), nearest_denser, separation.max(dim=1).values)
    return (density * nearest_denser).float()


@dataclass(frozen=True)
class DensityPeakScorer(Reads):
    """φ_KNN (FEATHER): DPC-KNN density × distance on the feature-layer patch features of the tokens
    still present (tokens without a patch get NaN); ``delta`` as in ``density_peaks`` (squared, FEATHER
    eq. 2, by default)."""

    k: int = 5
    delta: str = "squared"
    name: str = "dpc_knn"
    needs_features = True

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k={self.k!r}: the number of nearest neighbours must be an integer >= 1")
        check_choice("delta", self.delta, DELTA_DISTANCES)

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        out = torch.full(inputs.candidates.shape, float("nan"))
        for b, feats in enumerate(inputs.features):
            n = feats.shape[0]
            usable = inputs.candidates[b, :n] & ~torch.isnan(feats.cpu()).any(dim=1)
            rows = usable.nonzero().flatten()
            if rows.numel():
                out[b, rows] = density_peaks(feats.cpu()[rows], self.k, self.delta)
        return out


@dataclass(frozen=True)
class RandomScorer(Reads):
    """Uniform random scores, drawn per sample from the seed alone: a sample gets the same kept set
    whether it runs alone or in a batch."""

    seed: int = 0
    name: str = "random"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        width = inputs.candidates.shape[1]
        return torch.stack([torch.rand(width, generator=torch.Generator().manual_seed(self.seed))
                            for _ in inputs.num_visual])


@dataclass(frozen=True)
class ConstantScorer(Reads):
    """No signal: every token scores the same. For selectors that choose by position alone (grid,
    rows, quartile, region)."""

    name: str = "none"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return torch.zeros(inputs.candidates.shape)


@dataclass(frozen=True)
class FixedScorer(Reads):
    """Prefers a given set of visual tokens per sample (e.g. the kept set of another run, applied elsewhere)."""

    kept: tuple[tuple[int, ...], ...]
    name: str = "fixed"

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

