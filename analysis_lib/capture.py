"""Capture per-layer attention while the model runs normally (SDPA, flash or eager).

    with capture_attention(model, layers=[2, 8], specs=[TextAttentionSpec(rope="removed")],
                           vision_layers="feature") as cap:
        model(**inputs)
    cap.text[(spec.name, 2)]          # [B, heads, N] attention each visual token receives
    cap.vision[cap.feature_layer].cls # [crops, heads, patches]

Rows are taken at the prompt's forward only (not at cached decoding steps). Under a pruning engine,
the rows of a pruned layer hold NaN for visual tokens no longer present.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .adapters import ModelAdapter, adapter_for
from .attention import (VISION_KINDS, TextAttentionSpec, VisionRows, rows_to_visual, text_visual_rows, vision_per_token,
                        vision_rows, watch_qk)
from .hooks import HookSet
from .tracking import Tracker, tracker_for
from .validation import check_choice


class AttentionCapture:
    """Results of one capture: filled by the forward calls made inside the ``with`` block."""

    def __init__(self, adapter: ModelAdapter, tracker: Tracker):
        self.adapter, self.tracker = adapter, tracker
        self.text: dict[tuple[str, int], torch.Tensor] = {}
        self.vision: dict[int, VisionRows] = {}

    @property
    def feature_layer(self) -> int:
        return self.adapter.vision_feature_encoder_layer

    @property
    def layout(self):
        return self.tracker.prompt.layout

    def head_mean(self, spec: TextAttentionSpec, layer: int) -> torch.Tensor:
        """[B, N] head-averaged attention each visual token receives (NaN for padding / pruned)."""
        return self.text[(spec.name, layer)].mean(dim=1)

    def vision_per_token(self, layer: int, kind: str = "cls") -> list[torch.Tensor]:
        """Head-mean vision attention ([CLS] row, mean received or mean given; see VisionRows) mapped onto
        each sample's visual tokens. Tokens without a patch (LLaVA-NeXT newlines) get NaN.
        """
        check_choice("kind", kind, VISION_KINDS)
        rows = getattr(self.vision[layer], kind)
        if rows is None:
            raise ValueError(f"kind={kind!r} is not available for this tower (it has no [CLS]); allowed: "
                             "'received', 'given'")
        return vision_per_token(rows, self.layout)


def _check_layers(name: str, layers: Sequence[int], count: int) -> list[int]:
    if isinstance(layers, (str, int)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ValueError(f"{name}={layers!r}: give a list of layer indices (e.g. [{min(count - 1, 5)}]), 'all' or None")
    bad = [layer for layer in layers if not 0 <= layer < count]
    if bad:
        raise ValueError(f"{name}={bad} outside the model; allowed: 0..{count - 1}")
    return list(layers)


@contextmanager
def capture_attention(model: nn.Module, layers: Sequence[int] | str | None = "all",
                      specs: Sequence[TextAttentionSpec] = (TextAttentionSpec(),),
                      vision_layers: Sequence[int] | str | None = None, vision_maps: bool = False,
                      adapter: ModelAdapter | None = None):
    """Record text→visual rows for ``layers`` under each spec, and vision-tower rows for ``vision_layers``.

    ``layers``/``vision_layers`` take a list of indices, "all", or None; ``vision_layers="feature"``
    is the tower layer whose output feeds the projector. The model is restored on exit, also on error.
    """
    adapter = adapter or adapter_for(model)
    n_text, n_vision = adapter.num_layers, len(adapter.vision_layers)
    text_layers = list(range(n_text)) if layers == "all" else _check_layers("layers", layers or [], n_text)
    if vision_layers == "feature":
        vision_layers = [adapter.vision_feature_encoder_layer]
    vis_layers = (list(range(n_vision)) if vision_layers == "all"
                  else _check_layers("vision_layers", vision_layers or [], n_vision))
    with tracker_for(model, adapter) as tracker, HookSet() as hooks:
        cap = AttentionCapture(adapter, tracker)

        def armed() -> bool:
            return tracker.call is not None and tracker.call.is_prefill and tracker.new_prompt

        for layer in text_layers:
            def on_text(q, k, call, layer=layer):
                view = tracker.view_at(layer)
                n_max = max(tracker.prompt.layout.counts())
                for spec in specs:
                    rows = text_visual_rows(q, k, *call.rope, view, adapter, spec)
                    cap.text[(spec.name, layer)] = rows_to_visual(rows, view, n_max)
            watch_qk(hooks, adapter, adapter.decoder_attention(layer), armed, on_text)
        for layer in vis_layers:
            def on_vision(q, k, call, layer=layer):
                cap.vision[layer] = vision_rows(q, k, call, adapter, tracker.image_geometry, vision_maps)
            # the tower runs once per new image set, inside forward or before it (generate pre-encodes images)
            watch_qk(hooks, adapter, adapter.vision_attention(layer), lambda: True, on_vision)
        yield cap
