"""Slot views after pruning, per-call key/query slots, and the attention masks built from them."""
from __future__ import annotations

import torch

from ..tracking import Call, Prompt, SlotView
from ..validation import check_choice

MODES = ("remove", "mask")
POSITIONS = ("keep", "reindex")


def pruned_view(prompt: Prompt, kept: list[torch.Tensor], mode: str, positions: str) -> SlotView:
    """The slots of layers that run after keeping ``kept[b]`` (original visual indices) of sample b.

    ``remove``: slots hold text tokens and kept visual tokens in order, left-filled with masked filler
    slots up to the longest sample. ``mask``: every position keeps its slot; pruned ones become
    unattendable. ``positions="reindex"`` closes the gaps left by pruned tokens; "keep" keeps
    the original position ids.
    """
    check_choice("mode", mode, MODES)
    check_choice("positions", positions, POSITIONS)
    visual = prompt.visual_index()
    keep = visual < 0
    for b, grid in enumerate(prompt.layout.samples):
        keep[b, grid.positions[kept[b].cpu()].to(keep.device)] = True
    pruned = ~keep
    before = torch.cumsum(pruned.long(), dim=1) - pruned.long()  # pruned tokens strictly before each position
    shift_all = before if positions == "reindex" else torch.zeros_like(before)
    total = pruned.sum(dim=1) if positions == "reindex" else torch.zeros(keep.shape[0], dtype=torch.long)
    if mode == "mask":
        view = prompt.identity_view()
        return SlotView(index=view.index, valid=prompt.attention_mask & keep, visual=visual,
                        position=prompt.position_ids - shift_all, shift=total.to(keep.device))
    width = int(keep.sum(dim=1).max())
    batch = keep.shape[0]
    index = torch.full((batch, width), -1, dtype=torch.long, device=keep.device)
    for b in range(batch):
        slots = keep[b].nonzero().flatten()
        index[b, width - slots.numel():] = slots
    present = index >= 0
    safe = index.clamp(min=0)
    return SlotView(index=index,
                    valid=present & torch.gather(prompt.attention_mask, 1, safe),
                    visual=torch.where(present, torch.gather(visual, 1, safe), -1),
                    position=torch.where(present, torch.gather(prompt.position_ids - shift_all, 1, safe), 0),
                    shift=total.to(keep.device))


def call_slots(view: SlotView, call: Call, prompt_length: int):
    """Key slots (original index, validity), query original indices and query positions for this call."""
    tail_index, tail_valid = call.tail(prompt_length)
    kv_index = torch.cat([view.index, tail_index], dim=1)
    kv_valid = torch.cat([view.valid, tail_valid], dim=1)
    new_positions = call.position_ids[:, -tail_index.shape[1]:] if tail_index.shape[1] else call.position_ids[:, :0]
    if call.is_prefill:
        q_index = kv_index
        q_position = torch.cat([view.position, new_positions - view.shift[:, None]], dim=1)
    else:
        q_index = tail_index[:, -call.length:]
        q_position = call.position_ids - view.shift[:, None]
    return kv_index, kv_valid, q_index, q_position


def attention_mask(kv_index: torch.Tensor, kv_valid: torch.Tensor, q_index: torch.Tensor, implementation: str,
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
