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
    position: torch.Tensor  # [axes, B, S] RoPE position ids these layers use (axes: 1, or 3 for M-RoPE)
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


@dataclass
class Prompt:
    """The prompt of the current batch (the first, cache-less call)."""

    tokens: torch.Tensor  # [B, L] token ids
    mask: torch.Tensor  # bool [B, L]: real tokens (False = padding)
    positions: torch.Tensor  # [axes, B, L]
    layout: VisualLayout

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def next_position(self) -> torch.Tensor:
        """[B] position of the first token after the prompt on every axis: one past its largest position."""
        valid = self.positions.masked_fill(~self.mask[None], torch.iinfo(self.positions.dtype).min)
        return valid.amax(dim=(0, 2)) + 1

    def visual_index(self) -> torch.Tensor:
        """[B, L]: original visual-token index at each position, -1 elsewhere."""
        out = torch.full_like(self.tokens, -1)
        for b, grid in enumerate(self.layout.samples):
            out[b, grid.positions.to(out.device)] = torch.arange(grid.num_tokens, device=out.device)
        return out

    def identity_view(self) -> SlotView:
        batch = self.tokens.shape[0]
        index = torch.arange(self.length, device=self.tokens.device).expand(batch, -1)
        return SlotView(index=index, valid=self.mask, visual=self.visual_index(),
                        position=self.positions, shift=torch.zeros(batch, dtype=torch.long, device=index.device))

    def continues_with(self, tokens: torch.Tensor) -> bool:
        """True if ``tokens`` is this prompt followed by more tokens (generation without a cache)."""
        return (tokens.shape[0] == self.tokens.shape[0] and tokens.shape[1] >= self.length
                and bool((tokens[:, : self.length] == self.tokens).all()))


@dataclass
class Call:
    """The current forward call, in original positions: ``past`` tokens before it, ``length`` new ones."""

    past: int
    length: int
    mask: torch.Tensor  # bool [B, past + length] over original positions
    positions: torch.Tensor  # [axes, B, length] original position ids of the new tokens

    @property
    def is_prefill(self) -> bool:
        return self.past == 0

    def tail(self, prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Original positions and validity of the tokens after the prompt seen so far, [B, T]."""
        end = self.past + self.length
        idx = torch.arange(prompt_length, end, device=self.mask.device)
        return idx.expand(self.mask.shape[0], -1), self.mask[:, prompt_length:end]


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
        # the image geometry of the last image encoding (sizes, Qwen's grids): ``generate`` may encode images
        # before calling forward, so forward itself may not receive it
        self.image_geometry = None
        self._unwatch = adapter.watch_image_geometry(self._remember_geometry)
        self.users = 0

    def _remember_geometry(self, geometry) -> None:
        self.image_geometry = geometry

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
        tokens = call.tokens
        if tokens is None:
            raise ValueError("input_ids: capture and pruning need token ids (not precomputed embeddings) to find the "
                             "image tokens")
        batch, length = tokens.shape
        prefill = call.cached_length == 0
        mask = call.mask
        if prefill:
            full = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
            geometry = call.geometry
            if geometry is not None:
                self.image_geometry = geometry
            positions = self.adapter.prompt_positions(call, full)
            self.new_prompt = self.prompt is None or not self.prompt.continues_with(tokens)
            if self.new_prompt:
                layout = self.adapter.layout(tokens, self.image_geometry)
                self.prompt = Prompt(tokens, full, positions, layout)
                self._starts, self.views = [0], [self.prompt.identity_view()]
            self.call = Call(0, length, full, positions)
            self._seen = length
        else:
            if self.prompt is None:
                raise RuntimeError("a cached decoding step arrived before any prompt was seen")
            past = self._seen
            full = (torch.ones(batch, past + length, dtype=torch.bool, device=tokens.device)
                    if mask is None else mask.bool())
            start = self.prompt.next_position + (past - self.prompt.length)
            self.call = Call(past, length, full, self.adapter.step_positions(call, start))
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
