"""What the language model is looking at, call by call: the prompt, its visual tokens, and the slots.

A *slot* is one entry of the sequence a decoder layer actually runs on. Without pruning, slot i holds
original position i. After real removal, a layer's slots hold the surviving tokens (left-filled with
masked filler slots when samples of a batch keep different numbers). Capture and pruning both read
the ``SlotView`` of the layer they are at, so attention rows always map back to original visual tokens.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

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
        self._image_sizes = None
        self._watch_image_features()
        self.users = 0

    def _watch_image_features(self) -> None:
        """Remember the image sizes of the last image encoding: ``generate`` encodes images before calling
        forward (``mm_encoder_outputs``), so forward itself may not receive them (LLaVA-NeXT needs them)."""
        owner = self.adapter.image_feature_owner
        original = owner.get_image_features

        @functools.wraps(original)
        def get_image_features(*args, **kwargs):
            self._image_sizes = kwargs.get("image_sizes")
            return original(*args, **kwargs)

        owner.get_image_features = get_image_features
        self._owner = owner

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
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("input_ids: capture and pruning need input_ids (not inputs_embeds) to find the "
                             "image tokens")
        batch, length = input_ids.shape
        cache = kwargs.get("past_key_values")
        prefill = cache is None or cache.get_seq_length() == 0
        mask = kwargs.get("attention_mask")
        if prefill:
            full = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
            if kwargs.get("position_ids") is None:
                kwargs["position_ids"] = padded_position_ids(full)
            self.new_prompt = self.prompt is None or not self.prompt.continues_with(input_ids)
            if self.new_prompt:
                sizes = kwargs.get("image_sizes")
                layout = self.adapter.layout(input_ids, self._image_sizes if sizes is None else sizes)
                self.prompt = Prompt(input_ids, full, kwargs["position_ids"], layout)
                self._starts, self.views = [0], [self.prompt.identity_view()]
            self.call = Call(0, length, full, kwargs["position_ids"])
            self._seen = length
        else:
            if self.prompt is None:
                raise RuntimeError("a cached decoding step arrived before any prompt was seen")
            past = self._seen
            full = (torch.ones(batch, past + length, dtype=torch.bool, device=input_ids.device)
                    if mask is None else mask.bool())
            if kwargs.get("position_ids") is None:
                last = self.prompt.position_ids[:, -1:] + (past - self.prompt.length)
                kwargs["position_ids"] = last + torch.arange(1, length + 1, device=input_ids.device)
            self.call = Call(past, length, full, kwargs["position_ids"])
            self._seen += length
        if prefill and self.new_prompt:
            for fn in self._listeners:
                fn(self)
        return args, kwargs

    def close(self) -> None:
        self.hooks.remove()
        del self._owner.get_image_features  # drop the instance attribute: the class method is back


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
