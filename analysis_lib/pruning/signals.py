"""What a scorer or selector reads, declared on the part itself: the engine records exactly those signals.

``Reads`` carries the declarations (all off by default; a part switches on what it uses), so the engine
never asks a part for anything its protocol does not declare. ``DecoderAttention`` is the text-attention
signal in raw form: the queries and keys a decoder layer computed, the RoPE it applied and the slot view
it ran on; a scorer derives whatever attention it needs from them (FastV's last-token row, FEATHER's
RoPE-free row, SparseVLM's raters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..adapters import ModelAdapter
from ..attention import TextAttentionSpec, rows_to_visual, text_visual_probs, text_visual_rows
from ..tracking import SlotView


class Reads:
    """Signal declarations shared by scorers and selectors.

    ``needs_text_attention``: the decoder layer K-1's queries and keys (``ScoreInputs.decoder``);
    ``needs_vision_attention``: the vision tower's attention at ``vision_layer`` ("feature", the layer the
    projector reads, or "last"); ``needs_features``: the feature-layer patch features; ``needs_states``: the
    language model's states where the stage prunes (``states.py``); ``needs_embeddings``: the language model's
    input embeddings of the unpruned prompt (``ScoreInputs.embeddings``).
    """

    needs_text_attention: ClassVar[bool] = False
    needs_vision_attention: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False
    needs_states: ClassVar[bool] = False
    needs_embeddings: ClassVar[bool] = False
    vision_layer: ClassVar[str] = "feature"


@dataclass
class DecoderAttention:
    """The raw q/k projections [B, S, heads·dim] of one decoder layer for a prompt, the (cos, sin) it applied,
    the slot view it ran on and the widest sample's visual-token count."""

    q: torch.Tensor
    k: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    view: SlotView
    adapter: ModelAdapter
    num_visual: int

    def text_visual(self, spec: TextAttentionSpec) -> torch.Tensor:
        """[B, N] head-mean attention from the spec's query to each visual token (NaN where absent)."""
        view = self.view.to(self.q.device)
        rows = text_visual_rows(self.q, self.k, self.cos, self.sin, view, self.adapter, spec)
        return rows_to_visual(rows, view, self.num_visual).mean(dim=1)

    def text_visual_each(self, spec: TextAttentionSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, Q, N] head-mean attention from each of the spec's queries to each visual token (NaN where
        absent), and which queries are real [B, Q]."""
        view = self.view.to(self.q.device)
        probs, valid = text_visual_probs(self.q, self.k, self.cos, self.sin, view, self.adapter, spec)
        return rows_to_visual(probs.mean(dim=1), view, self.num_visual), valid
