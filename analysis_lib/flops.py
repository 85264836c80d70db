"""Theoretical prefill FLOPs of the language model under a visual-token pruning schedule.

Per decoder layer with ``n`` tokens, hidden size ``d`` and FFN intermediate size ``m``::

    C(n) = 4·n·d² + 2·n²·d + f·n·d·m

``4nd²`` is the Q, K, V and output projections, ``2n²d`` the attention scores and weighted sum, and
``f·n·d·m`` the FFN. Papers disagree on ``f``: FastV and FEATHER (eq. 1) use ``f = 2``; PyramidDrop
and SparseVLM use ``f = 3``, counting SwiGLU's gate, up and down matrices. Both are offered and every
:class:`FlopsReport` records which one it used, along with how many non-visual tokens it counted.

A method that merges inside the vision tower (ToMe) also shrinks the tower: :func:`tower_flops` counts
each tower layer as ``4·n·d² + 2·n²·d`` for its attention over ``n`` tokens plus ``2·n'·d·m`` for its
two-matrix MLP over the ``n'`` tokens left after that layer's merge (``n' = n`` in an unmerged tower),
with the tower's own ``d`` and ``m``; it is reported alongside the language model's, not added to it.

FEATHER's eq. 1 is printed as ``1 - (K·C + (T-K)·C(n̂)) / C``; the denominator must be the unpruned
total ``T·C`` (otherwise the "reduction" is negative), and that is what :attr:`FlopsReport.reduction`
computes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from pathlib import Path
from typing import Any

from .layout import QWEN2_5_VL_PIXELS, QWEN3_VL_PIXELS, smart_resize
from .validation import check_choice, check_range

FFN_MATRICES = (2, 3)


@dataclass(frozen=True)
class LMDims:
    """Language-model shapes that the FLOPs formula needs."""

    hidden: int
    intermediate: int
    layers: int

    @classmethod
    def from_config(cls, config: Any) -> LMDims:
        """Read a transformers text config, or the ``text_config`` of a VLM config."""
        text = getattr(config, "text_config", None) or config
        return cls(hidden=text.hidden_size, intermediate=text.intermediate_size,
                   layers=text.num_hidden_layers)


@dataclass(frozen=True)
class TowerDims:
    """Vision-tower shapes: width, MLP size, layers and the encoder layer the projector reads."""

    hidden: int
    intermediate: int
    layers: int
    feature_layer: int

    @classmethod
    def from_config(cls, config: Any) -> TowerDims:
        """Read a VLM config with a CLIP-style ``vision_config`` and an int ``vision_feature_layer``."""
        vision, feature = config.vision_config, config.vision_feature_layer
        layers = vision.num_hidden_layers
        feature_layer = layers + feature if feature < 0 else feature - 1
        return cls(vision.hidden_size, vision.intermediate_size, layers, feature_layer)


def tower_flops(dims: TowerDims, tokens: Sequence[tuple[int, int]]) -> int:
    """FLOPs of a vision tower whose layer i attends over ``tokens[i][0]`` tokens and runs its MLP on
    ``tokens[i][1]`` (fewer where the layer merges between the two, as ToMe)."""
    if len(tokens) != dims.layers:
        raise ValueError(f"tokens: {len(tokens)} layers given for a {dims.layers}-layer tower")
    d, m = dims.hidden, dims.intermediate
    return sum(4 * n * d * d + 2 * n * n * d + 2 * after * d * m for n, after in tokens)


def tower_reduction(dims: TowerDims, tokens: Sequence[tuple[int, int]]) -> float:
    """1 - the tower's FLOPs over ``tokens`` (``tower_flops``) / those of the unmerged tower, which keeps the
    first layer's tokens throughout."""
    plain = tower_flops(dims, [(tokens[0][0],) * 2] * dims.layers)
    return 1.0 - tower_flops(dims, tokens) / plain


@dataclass(frozen=True)
class ModelPreset:
    """A model's LM shapes and visual-token layout: ``n_visual`` tokens on a ``grid`` (rows, cols).

    ``cell_pixels`` > 0 marks a dynamic-resolution model (Qwen): one visual token per ``cell_pixels``² of
    the resized image, so the count follows ``at_image_size``; ``grid`` is then its default image's."""

    dims: LMDims
    n_visual: int
    n_system: int
    grid: tuple[int, int]
    cell_pixels: int = 0
    #: the processor's (min, max) pixels of a resized image (dynamic resolution only)
    pixels: tuple[int, int] = QWEN2_5_VL_PIXELS
    #: the CLIP tower a method may merge in (ToMe); None where no such method runs
    tower: TowerDims | None = None

    def at_image_size(self, height: int, width: int) -> ModelPreset:
        """The preset for one (height, width) image, resized as the model's processor does."""
        if not self.cell_pixels:
            raise ValueError("image_size: this preset has a fixed-resolution vision tower; only the "
                             "dynamic-resolution presets (qwen2.5-vl-7b, qwen3-vl-8b) take an image size")
        h, w = smart_resize(_count("height", height, 1, math.inf), _count("width", width, 1, math.inf),
                            self.cell_pixels, self.pixels)
        grid = (h // self.cell_pixels, w // self.cell_pixels)
        return replace(self, n_visual=grid[0] * grid[1], grid=grid)


@dataclass(frozen=True)
class FlopsReport:
    """FLOPs of one schedule, its unpruned baseline and the accounting settings used."""

    total_flops: int
    baseline_flops: int
    reduction: float
    visual_per_layer: tuple[int, ...]
    ffn_matrices: int
    n_visual: int
    n_text: int

    @property
    def tokens_per_layer(self) -> tuple[int, ...]:
        """Tokens ``n`` each layer processes (visual plus the ``n_text`` non-visual ones)."""
        return tuple(self.n_text + v for v in self.visual_per_layer)


def _count(name: str, value: Any, low: float, high: float) -> int:
    """Return ``value`` as an int if it is an integer in ``[low, high]``; else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name}={value!r} must be an integer in [{low}, {high}]")
    return int(check_range(name, value, low, high))


def layer_flops(n: int, dims: LMDims, ffn_matrices: int) -> int:
    """FLOPs of one decoder layer over ``n`` tokens: 4nd² + 2n²d + ffn_matrices·n·d·m."""
    check_choice("ffn_matrices", ffn_matrices, FFN_MATRICES)
    n = _count("n", n, 0, math.inf)
    d, m = dims.hidden, dims.intermediate
    return 4 * n * d * d + 2 * n * n * d + ffn_matrices * n * d * m


def schedule_flops(dims: LMDims, n_visual: int, n_text: int, stages: Sequence[tuple[int, int]],
                   ffn_matrices: int = 2) -> FlopsReport:
    """FLOPs of the LM when visual tokens are pruned at the given ``(layer, kept_visual)`` stages.

    Layer ``K`` in a stage means layers ``0..K-1`` see the previous count and layers ``K..`` see
    ``kept_visual`` until the next stage; ``K = 0`` prunes before the LLM. ``n_text`` non-visual tokens
    (system prompt and question) are added to every layer's ``n``; pass 0 to count visual tokens only.
    """
    check_choice("ffn_matrices", ffn_matrices, FFN_MATRICES)
    n_visual = _count("n_visual", n_visual, 1, math.inf)
    n_text = _count("n_text", n_text, 0, math.inf)
    visual = [n_visual] * dims.layers
    prev_layer, prev_kept = -1, n_visual
    for i, stage in enumerate(stages):
        if len(stage) != 2:
            raise ValueError(f"stages[{i}]={stage!r} must be a (layer, kept_visual) pair")
        layer = _count(f"stages[{i}] layer", stage[0], prev_layer + 1, dims.layers - 1)
        kept = _count(f"stages[{i}] kept_visual", stage[1], 0, prev_kept)
        visual[layer:] = [kept] * (dims.layers - layer)
        prev_layer, prev_kept = layer, kept
    total = sum(layer_flops(n_text + v, dims, ffn_matrices) for v in visual)
    baseline = dims.layers * layer_flops(n_text + n_visual, dims, ffn_matrices)
    return FlopsReport(total_flops=total, baseline_flops=baseline, reduction=1 - total / baseline,
                       visual_per_layer=tuple(visual), ffn_matrices=ffn_matrices, n_visual=n_visual,
                       n_text=n_text)


_LLAMA_7B = LMDims(hidden=4096, intermediate=11008, layers=32)
#: CLIP ViT-L/14 at 336 px; LLaVA-1.5's projector reads layer 22 of 24 (``vision_feature_layer=-2``)
_CLIP_L_336 = TowerDims(hidden=1024, intermediate=4096, layers=24, feature_layer=22)

PRESETS: dict[str, ModelPreset] = {
    # CLIP ViT-L/14 at 336 px: 24x24 patches; 35 tokens of LLaVA's system prompt before the image.
    "llava-1.5-7b": ModelPreset(_LLAMA_7B, n_visual=576, n_system=35, grid=(24, 24), tower=_CLIP_L_336),
    "llava-1.5-13b": ModelPreset(LMDims(hidden=5120, intermediate=13824, layers=40), n_visual=576,
                                 n_system=35, grid=(24, 24), tower=_CLIP_L_336),
    # SigLIP so400m/14 at 384 px: 27x27 patches; Llama-2-7B. The 35 system tokens are an assumption
    # (LLaVA's prompt); the FEATHER paper does not state its prompt length.
    "feather-siglip-llama2-7b": ModelPreset(_LLAMA_7B, n_visual=729, n_system=35, grid=(27, 27)),
    # Dynamic resolution: one token per 2x2 merged cell of 14 px (Qwen2.5-VL) or 16 px (Qwen3-VL) patches;
    # the default grid is a 448x448 image. System tokens: the chat template up to and around the image
    # (Qwen2.5-VL's default system prompt included, about 20; Qwen3-VL has none, about 5), approximate.
    "qwen2.5-vl-7b": ModelPreset(LMDims(hidden=3584, intermediate=18944, layers=28), n_visual=256, n_system=20,
                                 grid=(16, 16), cell_pixels=28),
    "qwen3-vl-8b": ModelPreset(LMDims(hidden=4096, intermediate=12288, layers=36), n_visual=196, n_system=5,
                               grid=(14, 14), cell_pixels=32, pixels=QWEN3_VL_PIXELS),
}


def preset_or_config(name_or_path: str | Path, n_system: int | None = None) -> ModelPreset:
    """Return a preset by name, or build one from a local VLM ``config.json`` (file or its folder).

    From a config, the grid is ``image_size // patch_size`` per side (one image, no multi-crop tiles)
    and ``n_system`` defaults to 0. ``n_system`` given with a preset name overrides the preset's.
    """
    if str(name_or_path) in PRESETS:
        preset = PRESETS[str(name_or_path)]
        if n_system is None:
            return preset
        return replace(preset, n_system=_count("n_system", n_system, 0, math.inf))
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(f"name_or_path={str(name_or_path)!r} is neither a preset nor an existing path; "
                         f"presets: {', '.join(PRESETS)}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    vision = getattr(config, "vision_config", None)
    if getattr(config, "text_config", None) is None or vision is None:
        raise ValueError(f"name_or_path={str(path)!r} must be a VLM config with text_config and "
                         "vision_config")
    image_size, patch_size = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if not isinstance(image_size, int) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"name_or_path={str(path)!r}: vision_config needs an int image_size and a "
                         "patch_size (a fixed-resolution vision tower)")
    side = image_size // patch_size
    clip = getattr(config, "model_type", None) in ("llava", "llava_next")
    clip = clip and isinstance(getattr(config, "vision_feature_layer", None), int)
    return ModelPreset(LMDims.from_config(config), n_visual=side * side,
                       n_system=_count("n_system", 0 if n_system is None else n_system, 0, math.inf),
                       grid=(side, side), tower=TowerDims.from_config(config) if clip else None)
