"""Run a model under a pruning schedule, truly removing tokens (or masking them, as a reference).

    with PruningEngine(model, schedule, mode="remove", positions="keep") as engine:
        out = model.generate(**inputs, max_new_tokens=8)
    engine.records[-1].kept  # kept visual indices per stage and sample, in original image order

Removal slices the hidden states at the stage's layer, and from then on every layer gets the matching
attention mask, RoPE (cos, sin) and position ids, so its KV cache holds only the kept tokens (later
layers hold fewer than earlier ones). A stage at layer 0 slices the embeddings before the language
model. Nothing is forced to eager attention: scores come from q/k projections (see attention.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..adapters import ModelAdapter, adapter_for
from ..attention import rows_to_visual, text_visual_rows, vision_per_token, vision_rows, watch_qk
from ..hooks import HookSet
from ..tracking import Tracker, tracker_for
from .schedule import Schedule, Stage
from .scorers import ScoreInputs
from ..validation import check_choice
from .views import MODES, POSITIONS, attention_mask, call_slots, pruned_view

IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class StageRecord:
    """What one stage did to one prompt: its layer and, per sample, the tokens in and the tokens kept."""

    layer: int
    n_input: list[int]
    kept: list[torch.Tensor]


@dataclass
class PruneRecord:
    """One prompt's pruning: settings and per-stage kept sets (use ``kept_coordinates`` for grid positions)."""

    schedule: str
    mode: str
    positions: str
    num_visual: list[int]
    stages: list[StageRecord] = field(default_factory=list)
    layout: object = None

    def kept_coordinates(self, stage: int, sample: int) -> list[dict]:
        """Grid coordinates (segment, row, col, y, x) of the tokens kept by ``stage`` in ``sample``."""
        return self.layout.samples[sample].records(self.stages[stage].kept[sample])


class PruningEngine:
    """Context manager that prunes every forward of ``model`` made inside it according to ``schedule``."""

    def __init__(self, model: nn.Module, schedule: Schedule, mode: str = "remove", positions: str = "keep",
                 adapter: ModelAdapter | None = None):
        self.model, self.schedule = model, schedule
        self.adapter = adapter or adapter_for(model)
        self.mode, self.positions = mode, positions
        self.stages: list[tuple[int, Stage]] = schedule.resolve(self.adapter.num_layers)
        check_choice("mode", mode, MODES)
        check_choice("positions", positions, POSITIONS)
        if self.adapter.attn_implementation not in IMPLEMENTATIONS and any(k > 0 or mode == "mask"
                                                                          for k, _ in self.stages):
            raise ValueError(f"attn_implementation={self.adapter.attn_implementation!r}: in-LLM pruning supports "
                             f"{IMPLEMENTATIONS}; pruning before the LLM (layer 0, mode='remove') supports any")
        self.records: list[PruneRecord] = []
        self.hooks = HookSet()

    # ---- setup ---------------------------------------------------------------------------
    def __enter__(self) -> PruningEngine:
        self._tracker_cm = tracker_for(self.model, self.adapter)
        self.tracker: Tracker = self._tracker_cm.__enter__()
        try:
            self._install()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.remove()
        self.tracker.remove_listener(self._on_new_prompt)
        self.tracker.forget_prompt()  # an enclosing capture must not reuse this engine's pruned views
        self._tracker_cm.__exit__(*exc)

    def _install(self) -> None:
        adapter, hooks = self.adapter, self.hooks
        self.tracker.add_listener(self._on_new_prompt)
        self._text_rows: dict[int, torch.Tensor] = {}
        self._vision_rows = None

        def armed() -> bool:
            call = self.tracker.call
            return call is not None and call.is_prefill and self.tracker.new_prompt

        for s, (layer, stage) in enumerate(self.stages):
            if stage.scorer.needs_text_attention:
                def on_text(q, k, pe, s=s, layer=layer, stage=stage):
                    view = self.tracker.view_at(layer - 1)
                    rows = text_visual_rows(q, k, *pe, view, adapter, stage.scorer.spec)
                    n_max = max(self.tracker.prompt.layout.counts())
                    self._text_rows[s] = rows_to_visual(rows, view, n_max).mean(dim=1)
                watch_qk(hooks, adapter.decoder_attention(layer - 1), armed, on_text)
        if any(stage.scorer.vision_kind for _, stage in self.stages):
            def on_vision(q, k, _pe):
                self._vision_rows = vision_rows(q, k, adapter, with_map=False)
            # the tower runs once per new image set, inside forward or before it (generate pre-encodes images)
            watch_qk(hooks, adapter.vision_attention(adapter.vision_feature_encoder_layer), lambda: True, on_vision)

        first = self.stages[0][0] if self.stages else None
        if first is None:
            return
        if first == 0 and self.mode == "remove":
            hooks.pre(adapter.language_model, self._before_language_model)
        in_llm = [k for k, _ in self.stages if k > 0 or self.mode == "mask"]
        if in_llm:
            for layer in range(in_llm[0], adapter.num_layers):
                hooks.pre(adapter.decoder_layers[layer], self._make_layer_hook(layer))

    # ---- decisions -----------------------------------------------------------------------
    def _on_new_prompt(self, tracker: Tracker) -> None:
        """Reset decisions and check every budget against this batch before any layer runs."""
        counts = tracker.prompt.layout.counts()
        n_in = counts
        for _, stage in self.stages:
            n_in = [stage.budget(n, n0) for n, n0 in zip(n_in, counts)]
        self._text_rows = {}
        self.records.append(PruneRecord(self.schedule.name, self.mode, self.positions, counts,
                                        layout=tracker.prompt.layout))

    def _decide(self, s: int) -> None:
        layer, stage = self.stages[s]
        prompt = self.tracker.prompt
        counts = prompt.layout.counts()
        survivors = ([torch.arange(n) for n in counts] if s == 0 else self.records[-1].stages[s - 1].kept)
        candidates = torch.zeros(len(counts), max(counts), dtype=torch.bool)
        for b, kept in enumerate(survivors):
            candidates[b, kept.cpu()] = True
        vision = None
        if stage.scorer.vision_kind:
            rows = getattr(self._vision_rows, stage.scorer.vision_kind)
            vision = [v.cpu() for v in vision_per_token(rows, prompt.layout)]
        scores = stage.scorer.score(ScoreInputs(counts, candidates, self._text_rows.get(s), vision)).cpu()
        n_input = [int(c.sum()) for c in candidates]
        kept = [stage.selector.select(scores[b], candidates[b], stage.budget(n_input[b], counts[b]))
                for b in range(len(counts))]
        self.records[-1].stages.append(StageRecord(layer, n_input, kept))
        self.tracker.push_stage_view(layer, pruned_view(prompt, kept, self.mode, self.positions))

    def _view_index(self, layer: int) -> int:
        """Index into the tracker's views of the view ``layer`` runs on (0 = unpruned)."""
        return 1 + max((i for i, (k, _) in enumerate(self.stages) if k <= layer), default=-1)

    def _stage_for_layer(self, layer: int) -> int:
        """Like ``_view_index``, deciding the stage first if this prompt has not decided it yet."""
        v = self._view_index(layer)
        if v > len(self.records[-1].stages):
            self._decide(v - 1)
        return v

    # ---- hooks ---------------------------------------------------------------------------
    def _before_language_model(self, _module, args, kwargs):
        """Stage at layer 0 in remove mode: slice the embeddings, the 2D mask and the position ids."""
        tracker = self.tracker
        v = self._stage_for_layer(0)
        view, call = tracker.views[v], tracker.call
        kv_index, kv_valid, _, q_position = call_slots(view, call, tracker.prompt.length)
        if call.is_prefill:  # the embeddings are unpruned: slot == original position
            kwargs["inputs_embeds"] = _gather_slots(kwargs["inputs_embeds"], kv_index.clamp(min=0))
        kwargs["attention_mask"] = kv_valid.long()
        kwargs["position_ids"] = q_position
        return args, kwargs

    def _make_layer_hook(self, layer: int):
        adapter = self.adapter

        def hook(_module, args, kwargs):
            tracker = self.tracker
            v = self._stage_for_layer(layer)
            prev = self._view_index(layer - 1) if layer > 0 else v
            view, call = tracker.views[v], tracker.call
            kv_index, kv_valid, q_index, q_position = call_slots(view, call, tracker.prompt.length)
            hidden = args[0] if args else kwargs["hidden_states"]
            if self.mode == "remove" and call.is_prefill and v != prev:
                hidden = _gather_slots(hidden, self._source_slots(prev, kv_index))
            kwargs["attention_mask"] = attention_mask(kv_index, kv_valid, q_index, adapter.attn_implementation,
                                                      hidden.dtype)
            kwargs["position_ids"] = q_position
            kwargs["position_embeddings"] = adapter.rotary_embedding(hidden, position_ids=q_position)
            if args:
                return (hidden, *args[1:]), kwargs
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    def _source_slots(self, prev: int, kv_index: torch.Tensor) -> torch.Tensor:
        """For each slot of the new view (plus tail), its slot in the previous view's sequence."""
        prompt = self.tracker.prompt
        old = self.tracker.views[prev]
        slot_of = torch.full((old.index.shape[0], prompt.length), 0, dtype=torch.long, device=old.index.device)
        present = old.index >= 0
        rows = torch.arange(old.index.shape[0], device=old.index.device)[:, None].expand_as(old.index)
        slot_of[rows[present], old.index[present]] = torch.arange(old.length, device=old.index.device).expand_as(
            old.index)[present]
        in_prompt = (kv_index >= 0) & (kv_index < prompt.length)
        source = torch.gather(slot_of, 1, kv_index.clamp(0, prompt.length - 1))
        tail = old.length + (kv_index - prompt.length)
        return torch.where(in_prompt, source, torch.where(kv_index >= prompt.length, tail, 0))


def _gather_slots(hidden: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """hidden [B, S, D] -> [B, S', D] taking slot ``source[b, j]`` for new slot j."""
    return torch.gather(hidden, 1, source[:, :, None].expand(-1, -1, hidden.shape[-1]))
