"""Slot views after pruning, per-call key/query slots, and the attention masks built from them."""
from __future__ import annotations

import torch

from ..tracking import Call, Prompt, SlotView
from ..validation import check_choice

MODES = ("remove", "mask")
POSITIONS = ("keep", "reindex")


def reindexed(positions: torch.Tensor, kept: torch.Tensor, valid: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions with the gaps pruned tokens leave closed, and the shift [B] of the tokens after the prompt.

    positions [axes, B, L]; kept, valid [B, L]. Per sample, every position value v (any axis) becomes
    ``first + #{values used by kept tokens, on any axis, below v}``, where ``first`` is the sample's first
    position. With one axis this is "subtract the pruned tokens before it" (PyramidDrop). With M-RoPE every
    axis is renumbered alike, so text tokens keep equal axes, an image keeps the order of its rows and
    columns, and the text after an image moves up by the rows/columns no kept token of it uses any more.
    Decoding continues right after the largest re-indexed position (``shift`` = how far it moved).
    """
    out, shift = positions.clone(), torch.zeros(positions.shape[1], dtype=torch.long, device=positions.device)
    for b in range(positions.shape[1]):
        used = positions[:, b, kept[b]].unique()
        real = positions[:, b, valid[b]]
        first, last = real.min(), real.max()
        out[:, b] = first + torch.searchsorted(used, positions[:, b].contiguous())
        shift[b] = last - (first + used.numel() - 1)
    return out, shift


def pruned_view(prompt: Prompt, kept: list[torch.Tensor], mode: str, positions: str) -> SlotView:
    """The slots of layers that run after keeping ``kept[b]`` (original visual indices) of sample b.

    ``remove``: slots hold text tokens and kept visual tokens in order, left-filled with masked filler
    slots up to the longest sample. ``mask``: every position keeps its slot; pruned ones become
    unattendable. ``positions="reindex"`` closes the gaps left by pruned tokens (``reindexed``); "keep"
    keeps the original position ids.
    """
    check_choice("mode", mode, MODES)
    check_choice("positions", positions, POSITIONS)
    visual = prompt.visual_index()
    keep = visual < 0
    for b, grid in enumerate(prompt.layout.samples):
        keep[b, grid.positions[kept[b].cpu()].to(keep.device)] = True
    if positions == "reindex":
        position, shift = reindexed(prompt.positions, keep & prompt.mask, prompt.mask)
    else:
        position, shift = prompt.positions, torch.zeros(keep.shape[0], dtype=torch.long, device=keep.device)
    if mode == "mask":
        view = prompt.identity_view()
        return SlotView(index=view.index, valid=prompt.mask & keep, visual=visual, position=position, shift=shift)
    width = int(keep.sum(dim=1).max())
    batch = keep.shape[0]
    index = torch.full((batch, width), -1, dtype=torch.long, device=keep.device)
    for b in range(batch):
        slots = keep[b].nonzero().flatten()
        index[b, width - slots.numel():] = slots
    present = index >= 0
    safe = index.clamp(min=0)
    gathered = torch.gather(position, 2, safe[None].expand(position.shape[0], -1, -1))
    return SlotView(index=index,
                    valid=present & torch.gather(prompt.mask, 1, safe),
                    visual=torch.where(present, torch.gather(visual, 1, safe), -1),
                    position=torch.where(present[None], gathered, 0),
                    shift=shift)


def call_slots(view: SlotView, call: Call, prompt_length: int):
    """Key slots (original index, validity), query original indices and query positions [axes, B, q]."""
    tail_index, tail_valid = call.tail(prompt_length)
    kv_index = torch.cat([view.index, tail_index], dim=1)
    kv_valid = torch.cat([view.valid, tail_valid], dim=1)
    tail = tail_index.shape[1]
    new_positions = call.positions[..., call.positions.shape[2] - tail:]
    shift = view.shift[None, :, None]
    if call.is_prefill:
        q_index = kv_index
        q_position = torch.cat([view.position, new_positions - shift], dim=2)
    else:
        q_index = tail_index[:, -call.length:]
        q_position = call.positions - shift
    return kv_index, kv_valid, q_index, q_position


def slot_mask(kv_index: torch.Tensor, kv_valid: torch.Tensor, q_index: torch.Tensor, implementation: str,
                   dtype: torch.dtype) -> torch.Tensor | None:
    """A 4D mask [B, 1, q, kv] for the layer's attention backend (None when SDPA's causal path is exact).

    Each query also sees its own slot so that filler and padding rows stay finite.
    """
    q_len, kv_len = q_index.shape[1], kv_index.shape[1]
    if implementation == "sdpa" and bool(kv_valid.all()) and (q_len == kv_len or q_len == 1):
        return None
    allowed = kv_valid[:, None, :] & (kv_index[:, None, :] <= q_index[:, :, None])
    own = torch.arange(q_len, device=kv_index.device) + (kv_len - q_len)
    allowed[:, torch.arange(q_len), own] = True
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)
