"""The language model's own states where a stage prunes, for criteria that compare tokens in the LLM's space.

A scorer or selector that declares ``needs_states`` gets, per sample, the hidden states entering the
stage's layer K (at K = 0: the language model's input embeddings, i.e. the projector's outputs at the
visual tokens), the same through the language model's final norm, and the keys of layer K-1 with RoPE
applied (None at K = 0), each split into the visual tokens and the text tokens after the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import ModelAdapter
from ..adapters.base import split_heads
from ..layout import VisualLayout
from ..tracking import SlotView


@dataclass
class SampleStates:
    """One sample's LLM states: ``visual*`` rows [N, ·] per visual token (NaN where the token is absent),
    ``text*`` rows [T, ·] for the text tokens after the last visual token, in sequence order."""

    visual: torch.Tensor  # hidden states entering the stage's layer
    text: torch.Tensor
    visual_normed: torch.Tensor  # the same through the language model's final norm
    text_normed: torch.Tensor
    visual_keys: torch.Tensor | None  # keys of layer K-1, RoPE applied, heads concatenated
    text_keys: torch.Tensor | None


def rotated_keys(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 adapter: ModelAdapter) -> torch.Tensor:
    """Keys [B, S, kv_heads*head_dim] of a decoder layer with RoPE applied, from its raw q/k outputs."""
    head_dim = adapter.decoder_geometry().head_dim
    _, keys = adapter.apply_rotary(split_heads(q, head_dim).float(), split_heads(k, head_dim).float(),
                                   cos.float(), sin.float())
    return keys.transpose(1, 2).flatten(2)


def _split(values: torch.Tensor, view: SlotView, b: int, n: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of sample ``b``'s slot values [S, C]: per visual token [n, C] (NaN where absent), and the text
    tokens after original position ``last`` (the last visual token) [T, C]."""
    values = values.float().cpu()
    visual, present = view.visual[b], view.valid[b] & (view.visual[b] >= 0)
    rows = torch.full((n, values.shape[-1]), float("nan"))
    rows[visual[present]] = values[present]
    return rows, values[view.valid[b] & (view.index[b] > last)]


def sample_states(hidden: torch.Tensor, normed: torch.Tensor, keys: torch.Tensor | None, view: SlotView,
                  layout: VisualLayout) -> list[SampleStates]:
    """Per-sample states from slot tensors [B, S, ·] laid out as ``view`` (hidden, normed hidden, keys)."""
    view = view.to(torch.device("cpu"))
    out = []
    for b, grid in enumerate(layout.samples):
        n, last = grid.num_tokens, int(grid.positions.max())
        (v, t), (vn, tn) = _split(hidden[b], view, b, n, last), _split(normed[b], view, b, n, last)
        vk, tk = _split(keys[b], view, b, n, last) if keys is not None else (None, None)
        out.append(SampleStates(v, t, vn, tn, vk, tk))
    return out


def sample_embeddings(embeddings: torch.Tensor, view: SlotView, layout: VisualLayout
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample, the language model's input embeddings [B, S, D] laid out as the unpruned ``view``: the
    visual tokens' rows [N, D] and the text tokens' after the image [T, D]."""
    view = view.to(torch.device("cpu"))
    return [_split(embeddings[b], view, b, grid.num_tokens, int(grid.positions.max()))
            for b, grid in enumerate(layout.samples)]
