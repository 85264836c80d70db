"""What the language model is looking at, call by call: the prompt, its visual tokens, and the slots.

A *slot* is one entry of the sequence a decoder layer actually runs on. Without pruning, slot i holds
original position i. After real removal, a layer's slots hold the surviving tokens (left-filled with
masked filler slots when samples of a batch keep different numbers). Capture and pruning both read
the ``SlotView`` of the layer they are at, so attention rows always map back to original visual tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from .adapters import ModelAdapter
from .hooks import HookSet
from .layout import VisualLayout


@dataclass
class SlotView:
    """Slot contents for the prompt part of the sequence at some layers (shapes [B, S])."""

    index: torch.Tensor  # original sequence position, -1 for a filler slot
    valid: torch.Tensor  # bool: the slot may be attended to as a key
    visual: torch.Tensor  # original visual-token index, -1 for text/filler
    position: torch.Tensor  # RoPE position ids these layers use
    shift: torch.Tensor  # [B] subtracted from the positions of tokens after the prompt (re-indexing)

    @property
    def length(self) -> int:
        return int(self.index.shape[1])

    def to(self, device: torch.device) -> SlotView:
        """This view on ``device`` (itself if already there): layers of a dispatched model may live on
        several devices."""
        if self.index.device == device:
            return self
        return SlotView(*(getattr(self, f.name).to(device) for f in fields(self)))


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` makes them: count of real tokens so far."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


@dataclass
class Prompt:
    """The prompt of the current batch (the first, cache-less call)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # bool [B, L]
    position_ids: torch.Tensor  # [B, L]
    layout: VisualLayout

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def visual_index(self) -> torch.Tensor:
        """[B, L]: original visual-token index at each position, -1 elsewhere."""
        out = torch.full_like(self.input_ids, -1)
        for b, grid in enumerate(self.layout.samples):
            out[b, grid.positions.to(out.device)] = torch.arange(grid.num_tokens, device=out.device)
        return out

    def identity_view(self) -> SlotView:
        batch = self.input_ids.shape[0]
        index = torch.arange(self.length, device=self.input_ids.device).expand(batch, -1)
        return SlotView(index=index, valid=self.attention_mask, visual=self.visual_index(),
                        position=self.position_ids, shift=torch.zeros(batch, dtype=torch.long,
                                                                      device=index.device))

    def continues_with(self, input_ids: torch.Tensor) -> bool:
        """True if ``input_ids`` is this prompt followed by more tokens (generation without a cache)."""
        return (input_ids.shape[0] == self.input_ids.shape[0] and input_ids.shape[1] >= self.length
                and bool((input_ids[:, : self.length] == self.input_ids).all()))


@dataclass
class Call:
    """The current forward call, in original positions: ``past`` tokens before it, ``length`` new ones."""

    past: int
    length: int
    attention_mask: torch.Tensor  # bool [B, past + length] over original positions
    position_ids: torch.Tensor  # [B, length] original position ids of the new tokens

    @property
    def is_prefill(self) -> bool:
        return self.past == 0

    def tail(self, prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Original positions and validity of the tokens after the prompt seen so far, [B, T]."""
        end = self.past + self.length
        idx = torch.arange(prompt_length, end, device=self.attention_mask.device)
        return idx.expand(self.attention_mask.shape[0], -1), self.attention_mask[:, prompt_length:end]


class Tracker:
    """Follows the model's forward calls: the prompt, the call, and the slot view of each layer.

    One tracker per model at a time, shared by capture and the pruning engine (``tracker_for``).
    A cache-less call whose input ids extend the current prompt (generation without a KV cache)
    keeps the prompt, so decisions made at the prompt are reused, as a cached generation does.
    """

    def __init__(self, model: nn.Module, adapter: ModelAdapter):
        self.model, self.adapter = model, adapter
        self.prompt: Prompt | None = None
        self.call: Call | None = None
        self.new_prompt = False
        self._seen = 0
        self.views: list[SlotView] = []
        self._starts: list[int] = [0]
        self._listeners: list = []
        self.hooks = HookSet()
        self.hooks.pre(model, self._on_forward, prepend=True)
        # the image sizes of the last image encoding: ``generate`` may encode images before calling forward,
        # so forward itself may not receive them (LLaVA-NeXT needs them)
        self._image_sizes = None
        self._unwatch = adapter.watch_image_sizes(self._remember_image_sizes)
        self.users = 0

    def _remember_image_sizes(self, sizes) -> None:
        self._image_sizes = sizes

    # ---- views ---------------------------------------------------------------------------
    def push_stage_view(self, start: int, view: SlotView) -> None:
        """From layer ``start`` on, layers run on ``view`` (a pruning stage was decided)."""
        self._starts.append(start)
        self.views.append(view)

    def stage_at(self, layer: int) -> int:
        return max(s for s, start in enumerate(self._starts) if start <= layer)

    def view_at(self, layer: int) -> SlotView:
        return self.views[self.stage_at(layer)]

    def add_listener(self, fn) -> None:
        """``fn(tracker)`` runs after a new prompt is registered, before the model computes anything."""
        self._listeners.append(fn)

    def remove_listener(self, fn) -> None:
        self._listeners.remove(fn)

    def forget_prompt(self) -> None:
        """Treat the next cache-less call as a new prompt (its views start unpruned)."""
        self.prompt, self._starts = None, [0]

    # ---- the hook ------------------------------------------------------------------------
    def _on_forward(self, module, args, kwargs):
        call = self.adapter.model_call(args, kwargs)
        input_ids = call.input_ids
        if input_ids is None:
            raise ValueError("input_ids: capture and pruning need token ids (not precomputed embeddings) to find the "
                             "image tokens")
        batch, length = input_ids.shape
        prefill = call.cached_length == 0
        mask = call.attention_mask
        if prefill:
            full = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
            if call.position_ids is None:
                call.position_ids = padded_position_ids(full)
            self.new_prompt = self.prompt is None or not self.prompt.continues_with(input_ids)
            if self.new_prompt:
                sizes = call.image_sizes
                layout = self.adapter.layout(input_ids, self._image_sizes if sizes is None else sizes)
                self.prompt = Prompt(input_ids, full, call.position_ids, layout)
                self._starts, self.views = [0], [self.prompt.identity_view()]
            self.call = Call(0, length, full, call.position_ids)
            self._seen = length
        else:
            if self.prompt is None:
                raise RuntimeError("a cached decoding step arrived before any prompt was seen")
            past = self._seen
            full = (torch.ones(batch, past + length, dtype=torch.bool, device=input_ids.device)
                    if mask is None else mask.bool())
            if call.position_ids is None:
                last = self.prompt.position_ids[:, -1:] + (past - self.prompt.length)
                call.position_ids = last + torch.arange(1, length + 1, device=input_ids.device)
            self.call = Call(past, length, full, call.position_ids)
            self._seen += length
        if prefill and self.new_prompt:
            for fn in self._listeners:
                fn(self)
        return args, kwargs

    def close(self) -> None:
        self.hooks.remove()
        self._unwatch()


class tracker_for:
    """Context manager giving the model's shared Tracker, created on first use and removed on last exit."""

    _ATTR = "_analysis_lib_tracker"

    def __init__(self, model: nn.Module, adapter: ModelAdapter):
        self.model, self.adapter = model, adapter

    def __enter__(self) -> Tracker:
        tracker = getattr(self.model, self._ATTR, None)
        if tracker is None:
            tracker = Tracker(self.model, self.adapter)
            setattr(self.model, self._ATTR, tracker)
        tracker.users += 1
        self.tracker = tracker
        return tracker

    def __exit__(self, *exc) -> None:
        self.tracker.users -= 1
        if self.tracker.users == 0:
            self.tracker.close()
            delattr(self.model, self._ATTR)
