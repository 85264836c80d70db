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
from ..attention import patches_to_tokens, vision_features, vision_rows, watch_output, watch_qk
from ..hooks import HookSet
from ..layout import SampleGrid
from ..tracking import Tracker, tracker_for
from ..validation import check_choice
from .merging import MERGE_TARGETS, MergeInputs, MergeMap
from .schedule import Schedule, Stage
from .scorers import ScoreInputs
from .selectors import SampleSelection
from .signals import DecoderAttention
from .states import rotated_keys, sample_embeddings, sample_states
from .tower_merging import TowerMerging, check_tower
from .views import MODES, POSITIONS, call_slots, pruned_view, slot_mask

IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class StageRecord:
    """What one stage did to one prompt: its layer and, per sample, the tokens in and the tokens kept
    (in image order); ``sequence`` is the order they were fed in when it differs (``order="score"``);
    ``merges`` which kept tokens absorbed which tokens, with what weights (stages with a merger)."""

    layer: int
    n_input: list[int]
    kept: list[torch.Tensor]
    sequence: list[torch.Tensor] | None = None
    merges: list[MergeMap] | None = None


class _ProbeDone(Exception):
    """Stops the scoring pass of a stage that scores at a later layer than it prunes."""


def crop_groups(grid: SampleGrid, crop_size: int) -> list[torch.Tensor]:
    """Masks [N] of the tokens of each encoder crop of a sample (newline tokens join the crop before them)."""
    crop = torch.where(grid.patch >= 0, grid.patch // crop_size, -1)
    for i in range(1, crop.numel()):
        if crop[i] < 0:
            crop[i] = crop[i - 1]
    return [crop == c for c in crop.unique().tolist()]


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

    def merged_into(self, stage: int, sample: int) -> dict[int, int]:
        """For each token ``stage`` merged into another in ``sample``, the kept token taking most of it."""
        merges = self.stages[stage].merges
        return {} if merges is None else merges[sample].merged_into()


class PruningEngine:
    """Context manager that prunes every forward of ``model`` made inside it according to ``schedule``."""

    def __init__(self, model: nn.Module, schedule: Schedule, mode: str = "remove", positions: str | None = None,
                 adapter: ModelAdapter | None = None):
        """``positions``: "keep" | "reindex"; None uses the schedule's own policy (``Schedule.positions``)."""
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule={schedule!r}: expected a Schedule, e.g. get_method('fastv').schedule(K=3, "
                            "R=0.75) (analysis_lib.pruning.methods)")
        self.model, self.schedule = model, schedule
        self.adapter = adapter or adapter_for(model)
        self.mode, self.positions = mode, positions or schedule.positions
        self.stages: list[tuple[int, Stage]] = schedule.resolve(self.adapter.num_layers)
        check_choice("mode", mode, MODES)
        check_choice("positions", self.positions, POSITIONS)
        if mode == "mask" and any(stage.order == "score" for _, stage in self.stages):
            raise ValueError("order='score' reorders tokens and needs mode='remove'; allowed modes: ('remove',)")
        if self.adapter.attn_implementation not in IMPLEMENTATIONS and any(k > 0 or mode == "mask"
                                                                          for k, _ in self.stages):
            raise ValueError(f"attn_implementation={self.adapter.attn_implementation!r}: in-LLM pruning supports "
                             f"{IMPLEMENTATIONS}; pruning before the LLM (layer 0, mode='remove') supports any")
        if not self.adapter.projects_per_token and any(s.merges_on == "projector_input" for _, s in self.stages):
            raise ValueError(f"model family {self.adapter.family!r}: its projector does not map each visual token on "
                             "its own, so a merge on the projector's input cannot run; merging before the projector "
                             "supports the families 'llava', 'llava_next'")
        self._tower_schedules = {s: check_tower(self.adapter, stage.merging.keep)
                                 for s, (_, stage) in enumerate(self.stages) if stage.merges_on == "vision_tower"}
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
        self._decoder: dict[int, DecoderAttention] = {}
        self._vision_rows: dict[int, object] = {}
        self._vision_keys: dict[int, torch.Tensor] = {}
        self._decoder_keys: dict[int, torch.Tensor] = {}
        self._features = None
        self._embeddings = None
        self._probing = False
        self._towers = {s: TowerMerging(adapter, r, self.stages[s][1].merging.proportional)
                        for s, r in self._tower_schedules.items()}
        for tower in self._towers.values():
            tower.install(hooks)

        def armed() -> bool:
            call = self.tracker.call
            return call is not None and call.is_prefill and self.tracker.new_prompt

        for s, (layer, stage) in enumerate(self.stages):
            if stage.scorer.needs_text_attention:
                k = Schedule.score_layer(stage, layer, adapter.num_layers)

                def on_text(q, k_proj, call, s=s, k=k):
                    self._decoder[s] = DecoderAttention(q.detach(), k_proj.detach(), *call.rope,
                                                        self.tracker.view_at(k - 1),
                                                        adapter, max(self.tracker.prompt.layout.counts()))
                watch_qk(hooks, adapter, adapter.decoder_attention(k - 1), armed, on_text)
            if stage.needs_states and layer > 0:
                def on_keys(q, k_proj, call, s=s):
                    self._decoder_keys[s] = rotated_keys(q, k_proj, *call.rope, adapter)
                watch_qk(hooks, adapter, adapter.decoder_attention(layer - 1), armed, on_keys)
        # the tower runs once per new image set, inside forward or before it (generate pre-encodes images)
        feature_layer = adapter.vision_feature_encoder_layer
        rows_at = {self._vision_layer(stage.scorer.vision_layer) for _, stage in self.stages
                   if stage.scorer.needs_vision_attention}
        keys_at = {self._vision_layer(stage.merging.keys_layer) for _, stage in self.stages
                   if stage.merging is not None and stage.merging.needs_keys}
        for index in sorted(rows_at | keys_at):
            def on_vision(q, k, call, index=index):
                geometry = self.tracker.image_geometry
                if index in rows_at:
                    self._vision_rows[index] = vision_rows(q, k, call, adapter, geometry, with_map=False)
                if index in keys_at:
                    self._vision_keys[index] = adapter.vision_token_keys(k, geometry).detach()
            watch_qk(hooks, adapter, adapter.vision_attention(index), lambda: True, on_vision)
        if any(stage.needs_features for _, stage in self.stages):
            def on_features(hidden):
                self._features = vision_features(hidden, adapter, self.tracker.image_geometry).detach()
            watch_output(hooks, adapter.vision_layers[feature_layer], on_features)
        if any(stage.scorer.needs_embeddings for _, stage in self.stages):
            def on_embeddings(_module, args, kwargs):
                if armed():
                    self._embeddings = adapter.decoder_layer_call(args, kwargs).hidden.detach()
            hooks.pre(adapter.decoder_layers[0], on_embeddings)

        if not self.stages:
            return
        first, first_stage = self.stages[0]
        self._probe_layer = Schedule.score_layer(first_stage, first, adapter.num_layers)
        self._injections: list[torch.Tensor] = []
        merges_first = first == 0 and first_stage.merging is not None
        if (first == 0 and self.mode == "remove") or merges_first or self._probe_layer != first or adapter.injection_layers:
            hooks.pre(adapter.language_model, self._before_language_model)
        for layer in range(adapter.injection_layers):
            hooks.post(adapter.decoder_layers[layer], self._make_injection_hook(layer))
        in_llm = [k for k, _ in self.stages if k > 0 or self.mode == "mask"]
        if in_llm:
            for layer in range(in_llm[0], adapter.num_layers):
                hooks.pre(adapter.decoder_layers[layer], self._make_layer_hook(layer))

    def _vision_layer(self, name: str) -> int:
        """The tower layer index of "feature" (read by the projector) or "last"."""
        return self.adapter.vision_feature_encoder_layer if name == "feature" else len(self.adapter.vision_layers) - 1

    # ---- decisions -----------------------------------------------------------------------
    def _on_new_prompt(self, tracker: Tracker) -> None:
        """Reset decisions and check the budgets against this batch before any layer runs (as far as they
        are known: a selector that fixes its own count ends the check)."""
        counts = tracker.prompt.layout.counts()
        n_in = counts
        for _, stage in self.stages:
            if stage.keep is None or stage.scope != "global":
                break
            n_in = [stage.budget(n, n0) for n, n0 in zip(n_in, counts)]
        self._decoder = {}
        self.records.append(PruneRecord(self.schedule.name, self.mode, self.positions, counts,
                                        layout=tracker.prompt.layout))

    def _decide(self, s: int, hidden: torch.Tensor) -> None:
        """Score and select stage ``s`` (``hidden``: the states entering its layer, for ``needs_states``)."""
        layer, stage = self.stages[s]
        prompt = self.tracker.prompt
        layout = prompt.layout
        counts = layout.counts()
        survivors = ([torch.arange(n) for n in counts] if s == 0 else self.records[-1].stages[s - 1].kept)
        candidates = torch.zeros(len(counts), max(counts), dtype=torch.bool)
        for b, kept in enumerate(survivors):
            candidates[b, kept.cpu()] = True
        features = None
        if stage.needs_features:
            features = [f.cpu() for f in patches_to_tokens(self._features, layout)]
        vision = (self._vision_rows[self._vision_layer(stage.scorer.vision_layer)]
                  if stage.scorer.needs_vision_attention else None)
        states = None
        if stage.needs_states:
            states = sample_states(hidden, self.adapter.final_normed(hidden), self._decoder_keys.get(s),
                                   self.tracker.views[self._view_index(layer - 1)], layout)
        embeddings = (sample_embeddings(self._embeddings, self.tracker.views[self._view_index(0)], layout)
                      if stage.scorer.needs_embeddings else None)
        scores = stage.scorer.score(ScoreInputs(counts, candidates, layout, self._decoder.pop(s, None), vision,
                                                features, states, embeddings)).cpu()
        keys = None
        if stage.merging is not None and stage.merging.needs_keys:
            head_dim = self.adapter.vision_geometry().head_dim
            keys = [k.cpu().unflatten(-1, (-1, head_dim))
                    for k in patches_to_tokens(self._vision_keys[self._vision_layer(stage.merging.keys_layer)], layout)]
        clusters = self._towers[s].clusters(layout) if s in self._towers else [None] * len(counts)
        kept, sequence, merges = [], [], []
        for b, n in enumerate(counts):
            grid = layout.samples[b]
            groups = (crop_groups(grid, layout.crop_size) if stage.scope == "crop"
                      else [torch.ones(n, dtype=torch.bool)])
            parts, maps = [], []
            for group in groups:
                cand = candidates[b, :n] & group
                k = stage.budget(int(cand.sum()), int(group.sum()))
                selection = SampleSelection(scores[b, :n], cand, grid, None if features is None else features[b],
                                            None if states is None else states[b], clusters[b])
                parts.append(torch.sort(stage.selector.select(selection, k).cpu()).values)
                if stage.merging is not None:
                    maps.append(stage.merging.merge(MergeInputs(parts[-1], cand, scores[b, :n],
                                                               None if keys is None else keys[b],
                                                               None if states is None else states[b], k,
                                                               clusters[b])))
            kept.append(torch.sort(torch.cat(parts)).values)
            merges.append(MergeMap.concat(maps) if maps else None)
            sequence.append(kept[-1][torch.argsort(scores[b, kept[-1]].nan_to_num(nan=float("-inf")),
                                                   descending=True, stable=True)])
        n_input = [int(c.sum()) for c in candidates]
        by_score = stage.order == "score"
        self.records[-1].stages.append(StageRecord(layer, n_input, kept, sequence if by_score else None,
                                                   merges if stage.merging is not None else None))
        view = pruned_view(prompt, kept, self.mode, self.positions)
        if by_score:
            _feed_in_order(view, layout, sequence, self.positions)
        self.tracker.push_stage_view(layer, view)

    def _view_index(self, layer: int) -> int:
        """Index into the tracker's views of the view ``layer`` runs on (0 = unpruned)."""
        return 1 + max((i for i, (k, _) in enumerate(self.stages) if k <= layer), default=-1)

    def _stage_for_layer(self, layer: int, hidden: torch.Tensor) -> int:
        """Like ``_view_index``, deciding the stage first if this prompt has not decided it yet (``hidden``:
        the states entering ``layer``)."""
        v = self._view_index(layer)
        if v > len(self.records[-1].stages):
            self._decide(v - 1, hidden)
        return v

    # ---- hooks ---------------------------------------------------------------------------
    def _before_language_model(self, _module, args, kwargs):
        """Take the visual features the model adds after its first layers (added back by the injection hooks,
        at the kept tokens); run a first stage's scoring pass if it scores later than it prunes; then, for a
        stage at layer 0 in remove mode, slice the embeddings, the 2D mask and the position ids."""
        if self._probing:
            return None
        tracker = self.tracker
        lm_call = self.adapter.language_model_call(args, kwargs)
        self._injections = lm_call.take_visual_injections()
        if self._probe_layer != self.stages[0][0] and tracker.call.is_prefill and not self.records[-1].stages:
            self._probe(lm_call)
        if self.stages[0][0] != 0:
            return args, kwargs
        embeddings = lm_call.embeddings
        v = self._stage_for_layer(0, embeddings)
        view, call = tracker.views[v], tracker.call
        merges = self._applied_merges(0)
        if merges is not None and call.is_prefill:
            embeddings = self._merged_embeddings(embeddings, merges, self.stages[0][1].merges_on)
            lm_call.replace_embeddings(embeddings)
        if self.mode != "remove":
            return args, kwargs
        kv_index, kv_valid, _, q_position = (t.to(embeddings.device)
                                             for t in call_slots(view, call, tracker.prompt.length))
        if call.is_prefill:  # the embeddings are unpruned: slot == original position
            source = kv_index.clamp(min=0)
            sequence = self.records[-1].stages[0].sequence
            if sequence is not None:
                source = _content_positions(source, view.to(embeddings.device), tracker.prompt.layout, sequence)
            embeddings = _gather_slots(embeddings, source)
        self.adapter.rewrite_language_model_call(lm_call, embeddings, kv_valid.long(), q_position)
        return args, kwargs

    def _probe(self, lm_call) -> None:
        """Run the unpruned prompt through layers 0..K-1 of the language model only to record the attention
        the first stage scores with (its kept set is then applied before the LLM)."""
        stop = HookSet()

        def done(*_):
            raise _ProbeDone
        stop.post(self.adapter.decoder_layers[self._probe_layer - 1], done)
        self._probing = True
        try:
            self.adapter.language_model(**lm_call.prefix_kwargs())
        except _ProbeDone:
            pass
        finally:
            self._probing = False
            stop.remove()

    def _make_layer_hook(self, layer: int):
        adapter = self.adapter

        def hook(_module, args, kwargs):
            if self._probing:
                return None
            tracker = self.tracker
            layer_call = adapter.decoder_layer_call(args, kwargs)
            hidden = layer_call.hidden
            v = self._stage_for_layer(layer, hidden)
            prev = self._view_index(layer - 1) if layer > 0 else v
            view, call = tracker.views[v], tracker.call
            # the masks and indices go where the hidden states are (each layer's device under a device_map)
            kv_index, kv_valid, q_index, q_position = (t.to(hidden.device) for t in
                                                       call_slots(view, call, tracker.prompt.length))
            if call.is_prefill and v != prev:
                merges = self._applied_merges(v - 1)
                if merges is not None:
                    hidden = _merged_slots(hidden, tracker.views[prev], merges)
                if self.mode == "remove":
                    hidden = _gather_slots(hidden, self._source_slots(prev, kv_index).to(hidden.device))
            mask = slot_mask(kv_index, kv_valid, q_index, adapter.attn_implementation, hidden.dtype)
            return adapter.layer_inputs(layer_call, hidden, mask, q_position)

        return hook

    def _applied_merges(self, s: int) -> list[MergeMap] | None:
        """Stage ``s``'s merges for the engine to apply (None without a merge, or where the vision tower
        merged already: ToMe's map is a record)."""
        applies = self.stages[s][1].merges_on in MERGE_TARGETS
        return self.records[-1].stages[s].merges if applies else None

    def _merged_embeddings(self, embeddings: torch.Tensor, merges: list[MergeMap], on: str) -> torch.Tensor:
        """The language model's input with each kept visual token's merged state: merged projector outputs
        (``on="states"``), or the projector run on the merged projector inputs (``"projector_input"``)."""
        layout = self.tracker.prompt.layout
        features = patches_to_tokens(self._features, layout) if on == "projector_input" else None
        out = embeddings.clone()
        for b, merge in enumerate(merges):
            positions = layout.samples[b].positions.to(out.device)
            if features is None:
                rows, values = merge.apply(embeddings[b, positions], torch.arange(positions.numel()))
            else:
                rows, merged = merge.apply(features[b], torch.arange(features[b].shape[0]))
                values = self.adapter.project_tokens(merged)
            out[b, positions[rows.to(out.device)]] = values.to(out.device, out.dtype)
        return out

    def _make_injection_hook(self, layer: int):
        """Add this layer's injected visual features (DeepStack) to its output at the visual slots of the view
        it ran on: each kept token gets its own feature row, pruned tokens get none."""
        def hook(_module, _args, _kwargs, output):
            if layer >= len(self._injections):
                return None
            view = self.tracker.views[0 if self._probing else self._view_index(layer)]
            counts = torch.tensor([0, *self.tracker.prompt.layout.counts()]).cumsum(0)
            features = self._injections[layer]
            return self.adapter.map_layer_output(
                output, lambda h: _add_at_visual_slots(h, view.to(h.device), features, counts))

        return hook

    def _source_slots(self, prev: int, kv_index: torch.Tensor) -> torch.Tensor:
        """For each slot of the new view (plus tail), its slot in the previous view's sequence."""
        prompt = self.tracker.prompt
        old = self.tracker.views[prev]
        kv_index = kv_index.to(old.index.device)
        slot_of = torch.full((old.index.shape[0], prompt.length), 0, dtype=torch.long, device=old.index.device)
        present = old.index >= 0
        rows = torch.arange(old.index.shape[0], device=old.index.device)[:, None].expand_as(old.index)
        slot_of[rows[present], old.index[present]] = torch.arange(old.length, device=old.index.device).expand_as(
            old.index)[present]
        in_prompt = (kv_index >= 0) & (kv_index < prompt.length)
        source = torch.gather(slot_of, 1, kv_index.clamp(0, prompt.length - 1))
        tail = old.length + (kv_index - prompt.length)
        return torch.where(in_prompt, source, torch.where(kv_index >= prompt.length, tail, 0))


def _merged_slots(hidden: torch.Tensor, view, merges: list[MergeMap]) -> torch.Tensor:
    """hidden [B, S, D] laid out as ``view`` with each kept visual token's merged state."""
    out = hidden.clone()
    for b, merge in enumerate(merges):
        visual = view.visual[b].to(hidden.device)
        slots = (visual >= 0).nonzero().flatten()
        rows = torch.full((int(visual.max()) + 1,), -1, dtype=torch.long, device=hidden.device)
        rows[visual[slots]] = slots
        target_rows, values = merge.apply(hidden[b], rows)
        out[b, target_rows] = values
    return out


def _gather_slots(hidden: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """hidden [B, S, D] -> [B, S', D] taking slot ``source[b, j]`` for new slot j."""
    return torch.gather(hidden, 1, source[:, :, None].expand(-1, -1, hidden.shape[-1]))


def _add_at_visual_slots(hidden: torch.Tensor, view, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """hidden [B, S, D] plus ``features`` row ``offsets[b] + t`` at each slot of sample b holding visual token t."""
    b, j = (view.visual >= 0).nonzero(as_tuple=True)
    rows = offsets.to(b.device)[b] + view.visual[b, j]
    out = hidden.clone()
    out[b, j] = hidden[b, j] + features[rows.to(features.device)].to(hidden.device, hidden.dtype)
    return out


def _visual_slots(view, b: int) -> torch.Tensor:
    return (view.visual[b] >= 0).nonzero().flatten()


def _feed_in_order(view, layout, sequence: list[torch.Tensor], positions: str) -> None:
    """Make the visual slots of ``view`` hold the kept tokens in ``sequence`` order: they keep their own
    position ids under "keep"; under "reindex" the slots' consecutive ids stay."""
    for b, order in enumerate(sequence):
        slots = _visual_slots(view, b)
        order = order.to(view.visual.device)
        in_image_order = view.visual[b, slots]  # the kept tokens, ascending
        if positions == "keep":
            view.position[:, b, slots] = view.position[:, b, slots][:, torch.searchsorted(in_image_order, order)]
        view.visual[b, slots] = order


def _content_positions(source: torch.Tensor, view, layout, sequence: list[torch.Tensor]) -> torch.Tensor:
    """Source positions in the unpruned embeddings for each slot, visual slots taking ``sequence`` order."""
    source = source.clone()
    for b, order in enumerate(sequence):
        source[b, _visual_slots(view, b)] = layout.samples[b].positions[order].to(source.device)
    return source
