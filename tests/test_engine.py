"""The pruning engine's invariants on tiny LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL and Qwen3-VL models."""
from dataclasses import dataclass

import pytest
import torch

from analysis_lib.attention import TextAttentionSpec
from analysis_lib.hooks import hook_count
from analysis_lib.pruning import (FixedScorer, PruningEngine, RandomScorer, Schedule, Stage, TextAttentionScorer,
                                  VisionAttentionScorer)
from analysis_lib.pruning.scorers import pad_per_sample
from analysis_lib.pruning.signals import Reads
from tiny_setup import FAMILIES, batch_inputs, sample_inputs

THREE_STAGES = Schedule((Stage(0, VisionAttentionScorer(), 0.75),
                         Stage(2, TextAttentionScorer(TextAttentionSpec(rope="removed")), 0.5),
                         Stage(4, RandomScorer(seed=3), 0.5)), name="three-stage")
FASTV = Schedule((Stage(2, TextAttentionScorer(), 0.5),), name="fastv")


def run(model, inputs, schedule, **options):
    with torch.no_grad(), PruningEngine(model, schedule, **options) as engine:
        logits = model(**inputs).logits
    return logits, engine.records[-1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["remove", "mask"])
@pytest.mark.parametrize("positions", ["keep", "reindex"])
def test_keeping_everything_gives_the_plain_model(models, family, mode, positions):
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    with torch.no_grad():
        plain = model(**inputs).logits
    keep_all = Schedule((Stage(0, VisionAttentionScorer(), 1.0), Stage(3, TextAttentionScorer(), 1.0)))
    logits, record = run(model, inputs, keep_all, mode=mode, positions=positions)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], plain[valid], atol=1e-5, rtol=1e-5)
    assert [len(k) for k in record.stages[1].kept] == record.num_visual


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("positions", ["keep", "reindex"])
@pytest.mark.parametrize("schedule", [FASTV, THREE_STAGES], ids=lambda s: s.name)
def test_removal_equals_masking(models, family, impl, positions, schedule):
    model = models[(family, impl)]
    inputs = batch_inputs(model, family)
    removed, rec_r = run(model, inputs, schedule, mode="remove", positions=positions)
    masked, rec_m = run(model, inputs, schedule, mode="mask", positions=positions)
    torch.testing.assert_close(removed[:, -1], masked[:, -1], atol=2e-6, rtol=1e-5)
    for stage_r, stage_m in zip(rec_r.stages, rec_m.stages):
        for kept_r, kept_m in zip(stage_r.kept, stage_m.kept):
            assert torch.equal(kept_r, kept_m)
    with torch.no_grad():
        plain = model(**inputs).logits
    assert not torch.allclose(removed[:, -1], plain[:, -1], atol=1e-3)  # pruning did something


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["keep", "reindex"])
def test_generation_cache_batch_and_mask_agree(models, family, positions):
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)

    def generate(inp, mode="remove", cache=True):
        with torch.no_grad(), PruningEngine(model, THREE_STAGES, mode=mode, positions=positions):
            out = model.generate(**inp, max_new_tokens=5, do_sample=False, use_cache=cache, pad_token_id=0,
                                 return_dict_in_generate=True, output_scores=True)
        return out.sequences[:, inp["input_ids"].shape[1]:], torch.stack(out.scores, dim=1)

    cached, scores = generate(inputs)
    assert cached.shape == (2, 5)
    # token ids alone could agree by luck on a random model: the per-step logits must agree too
    for other_tokens, other_scores in (generate(inputs, cache=False), generate(inputs, mode="mask")):
        assert torch.equal(cached, other_tokens)
        torch.testing.assert_close(scores, other_scores, atol=2e-5, rtol=1e-4)
    singles = [generate({k: v for k, v in sample_inputs(inputs, b).items() if k != "position_ids"})
               for b in range(2)]
    assert torch.equal(cached, torch.cat([tokens for tokens, _ in singles]))
    torch.testing.assert_close(scores, torch.cat([s for _, s in singles]), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_samples_one_by_one(models, family):
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    logits, record = run(model, inputs, THREE_STAGES)
    for b in range(2):
        single_logits, single = run(model, sample_inputs(inputs, b), THREE_STAGES)
        torch.testing.assert_close(logits[b, -1], single_logits[0, -1], atol=2e-6, rtol=1e-5)
        for stage, single_stage in zip(record.stages, single.stages):
            assert torch.equal(stage.kept[b], single_stage.kept[0])


def test_kv_cache_really_shrinks(models):
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    with torch.no_grad(), PruningEngine(model, THREE_STAGES) as engine:
        cache = model(**inputs, use_cache=True).past_key_values
    record = engine.records[-1]
    length = inputs["input_ids"].shape[1]
    n = record.num_visual[0]
    kept = [len(s.kept[0]) for s in record.stages]
    assert kept == [12, 6, 3]  # floor(0.75*16), then halves of the survivors
    expected = [length - n + kept[0]] * 2 + [length - n + kept[1]] * 2 + [length - n + kept[2]] * 2
    assert [layer.keys.shape[2] for layer in cache.layers] == expected


def test_records_are_nested_and_in_grid_coordinates(models):
    model = models[("llava_next", "sdpa")]
    _, record = run(model, batch_inputs(model, "llava_next"), THREE_STAGES)
    assert record.mode == "remove" and record.positions == "keep" and record.schedule == "three-stage"
    for b in range(2):
        previous = set(range(record.num_visual[b]))
        for stage in record.stages:
            kept = stage.kept[b].tolist()
            assert kept == sorted(kept) and set(kept) <= previous
            previous = set(kept)
    coords = record.kept_coordinates(0, 1)
    assert {"visual_index", "segment", "row", "col", "y", "x"} <= set(coords[0])
    assert {c["segment"] for c in coords} <= {0, 1}


@pytest.mark.parametrize("positions", ["keep", "reindex"])
def test_pre_llm_removal_equals_a_shorter_prompt(models, positions):
    """Dropping tokens before the LLM = running the language model on the kept embeddings, with the
    original position ids ("keep") or contiguous ones ("reindex")."""
    model = models[("llava", "sdpa")]
    inputs = sample_inputs(batch_inputs(model, "llava"), 1)
    kept = (0, 5, 6, 15)
    schedule = Schedule((Stage(0, FixedScorer((kept,)), len(kept)),))
    logits, _ = run(model, inputs, schedule, positions=positions)
    embeds = {}
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: embeds.update(x=kw["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    drop = set(image.tolist()) - {int(image[i]) for i in kept}
    keep_pos = torch.tensor([p for p in range(inputs["input_ids"].shape[1]) if p not in drop])
    position_ids = keep_pos[None] if positions == "keep" else torch.arange(len(keep_pos))[None]
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=embeds["x"][:, keep_pos], position_ids=position_ids)
        reference = model.lm_head(hidden.last_hidden_state)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_and_patches_are_gone_after_exit_and_error(models, family):
    model = models[(family, "sdpa")]
    before = hook_count(model)
    inputs = batch_inputs(model, family)
    with PruningEngine(model, THREE_STAGES):
        assert hook_count(model) > before
    assert hook_count(model) == before
    too_many = Schedule((Stage(2, TextAttentionScorer(), 10_000),))
    with pytest.raises(ValueError, match="exceeds the .* visual tokens"):
        with torch.no_grad(), PruningEngine(model, too_many):
            model(**inputs)
    assert hook_count(model) == before
    assert "get_image_features" not in vars(model.model)
    with torch.no_grad():  # the model works as before
        model(**inputs)


def test_bad_schedules_and_options(models):
    model = models[("llava", "sdpa")]
    text = TextAttentionScorer()
    cases = [
        (lambda: Stage(2, text, 0.0), r"keep=0.0 is outside the allowed range \(0, 1\]"),
        (lambda: Stage(2, text, 1.5), r"keep=1.5 is outside"),
        (lambda: Stage(2, text, 0.5, keep_of="all"), "keep_of='all'.*'input', 'original'"),
        (lambda: PruningEngine(model, Schedule((Stage(6, text, 0.5),))), r"layer=6 is outside this 6-layer model; allowed: 0\.\.5"),
        (lambda: PruningEngine(model, Schedule((Stage(3, text, 0.5), Stage(2, text, 0.5)))), "strictly increasing"),
        (lambda: PruningEngine(model, Schedule((Stage(0, text, 0.5),))), "cannot score before the language model"),
        (lambda: PruningEngine(model, FASTV, mode="drop"), "mode='drop'.*'remove', 'mask'"),
        (lambda: PruningEngine(model, FASTV, positions="shift"), "positions='shift'.*'keep', 'reindex'"),
        (lambda: VisionAttentionScorer(kind="patch"), "kind='patch'"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()


def test_fraction_layers_scale_with_depth(models):
    model = models[("llava", "sdpa")]  # 6 layers: 3/32 of depth -> layer 1, 0.5 -> layer 3
    schedule = Schedule((Stage(3 / 32, text := TextAttentionScorer(), 0.5), Stage(0.5, text, 0.5)))
    assert [k for k, _ in schedule.resolve(6)] == [1, 3]
    assert [k for k, _ in schedule.resolve(32)] == [3, 16]


def test_capture_under_the_engine_sees_pruned_layers(models):
    """Rows of layers after a stage cover only kept tokens (NaN elsewhere) and equal the mask-mode rows."""
    from analysis_lib.capture import capture_attention
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    rows = {}
    for mode in ("remove", "mask"):
        with torch.no_grad(), capture_attention(model, layers=[1, 4]) as cap:
            with PruningEngine(model, FASTV, mode=mode) as engine:
                model(**inputs)
            rows[mode] = dict(cap.text)
            model(**inputs)  # after the engine left: an unpruned prompt again
            assert not torch.isnan(cap.head_mean(TextAttentionSpec(), 4)[:, :16]).any()
    kept = engine.records[-1].stages[0].kept
    removed = rows["remove"][("last/applied/full", 4)]
    for b, k in enumerate(kept):
        present = ~torch.isnan(removed[b, 0, :16])
        assert present.nonzero().flatten().tolist() == k.tolist()
    torch.testing.assert_close(removed[:, :, :16].nan_to_num(), rows["mask"][("last/applied/full", 4)][:, :, :16]
                               .masked_fill(torch.isnan(removed[:, :, :16]), 0), atol=1e-6, rtol=1e-5)
    assert not torch.isnan(rows["remove"][("last/applied/full", 1)][:, :, :16]).any()


def test_reindex_closes_position_gaps_on_every_axis():
    """1-D: each position drops by the pruned tokens before it. M-RoPE: the values no kept token uses on any
    axis are closed; text keeps equal axes, and the text after the image moves up by what was closed."""
    from analysis_lib.pruning.views import reindexed
    one_d = torch.arange(6)[None, None]
    kept = torch.tensor([[True, False, True, False, False, True]])
    positions, shift = reindexed(one_d, kept, torch.ones_like(kept))
    assert positions[0, 0, kept[0]].tolist() == [0, 1, 2] and shift.tolist() == [3]
    # text 0,1 | image of 2x3 cells from 2: t=2, h=2..3, w=2..4 | text 5,6
    t = [0, 1] + [2] * 6 + [5, 6]
    h = [0, 1] + [2, 2, 2, 3, 3, 3] + [5, 6]
    w = [0, 1] + [2, 3, 4, 2, 3, 4] + [5, 6]
    mrope = torch.tensor([t, h, w])[:, None]
    kept = torch.tensor([[True, True, True, True, False, False, False, False, True, True]])  # cells (0,0), (0,1)
    positions, shift = reindexed(mrope, kept, torch.ones_like(kept))
    assert positions[:, 0, kept[0]].tolist() == [[0, 1, 2, 2, 4, 5], [0, 1, 2, 2, 4, 5], [0, 1, 2, 3, 4, 5]]
    assert shift.tolist() == [1]  # decoding continues at 6 instead of 7


def _language_model_kwargs(model, inputs) -> dict:
    """The keyword arguments the VLM passes to its language model for ``inputs``."""
    seen = {}
    handle = model.model.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw),
                                                                  with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return seen


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("positions", ["keep", "reindex"])
def test_qwen_pre_llm_removal_equals_a_shorter_prompt(models, family, positions):
    """Qwen: dropping cells before the LLM = running its language model on the kept embeddings at the kept
    tokens' own M-RoPE ids ("keep") or at the re-indexed ones (written out by hand for this prompt); for
    Qwen3-VL with the kept cells' rows of the DeepStack features (transformers adds them itself here)."""
    model = models[(family, "sdpa")]
    inputs = sample_inputs(batch_inputs(model, family), 0)  # 4x3 cells from position 4
    kept = (0, 1, 3, 4)  # cells (0,0), (0,1), (1,0), (1,1): rows 2-3 and column 2 are gone
    logits, _ = run(model, inputs, Schedule((Stage(0, FixedScorer((kept,)), len(kept)),)), positions=positions)
    seen = _language_model_kwargs(model, inputs)
    embeds = {"x": seen["inputs_embeds"], "p": seen["position_ids"]}
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    drop = set(image.tolist()) - {int(image[i]) for i in kept}
    keep_pos = torch.tensor([p for p in range(inputs["input_ids"].shape[1]) if p not in drop])
    original = embeds["p"][-3:][:, :, keep_pos]
    if positions == "keep":
        position_ids = original
    else:  # the image spans 4 rows from 4 (values 4..7); kept cells use 4, 5 only: 6, 7 close
        after = [8, 9, 10, 11, 12]  # vision end and the question
        assert original[:, 0, 4:].tolist() == [[4, 4, 4, 4] + after, [4, 4, 5, 5] + after, [4, 5, 4, 5] + after]
        position_ids = torch.where(original >= 8, original - 2, original)
    deepstack = {}
    if family == "qwen3_vl":
        deepstack = {"visual_pos_masks": seen["visual_pos_masks"][:, keep_pos],
                     "deepstack_visual_embeds": [f[list(kept)] for f in seen["deepstack_visual_embeds"]]}
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=embeds["x"][:, keep_pos], position_ids=position_ids,
                                            **deepstack)
        reference = model.lm_head(hidden.last_hidden_state)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


def test_qwen3_deepstack_spans_the_pruned_layers_and_changes_the_output(models):
    """The tiny Qwen3-VL adds DeepStack features after decoder layers 0-2, so the invariant tests' stages at
    layers 0 and 2 prune before and inside them (removal = mask there); the features matter: without them
    the output differs, so keep-everything = plain logits checks that the engine adds them back."""
    from analysis_lib.adapters import adapter_for
    model = models[("qwen3_vl", "sdpa")]
    assert adapter_for(model).injection_layers == 3 > FASTV.stages[0].layer
    inputs = batch_inputs(model, "qwen3_vl")
    seen = _language_model_kwargs(model, inputs)
    assert len(seen["deepstack_visual_embeds"]) == 3
    with torch.no_grad():
        plain = model(**inputs).logits
        seen.update(visual_pos_masks=None, deepstack_visual_embeds=None)
        without = model.lm_head(model.model.language_model(**seen).last_hidden_state)
    valid = inputs["attention_mask"].bool()
    assert not torch.allclose(plain[valid], without[valid], atol=1e-3)


@dataclass(frozen=True)
class StateNorm(Reads):
    """A scorer written outside the library: the norm of each visual token's hidden state entering the stage's
    layer, read through the declared ``needs_states`` signal."""

    name: str = "state_norm"
    needs_states = True

    def score(self, inputs):
        return pad_per_sample([s.visual.norm(dim=-1) for s in inputs.states], inputs.candidates.shape[1])


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_a_new_scorer_gets_the_states_it_declares(models, family):
    """The states a scorer declares are the hidden states entering its layer: its kept set is the top half by
    the norm of the unpruned model's hidden states at that layer, per sample."""
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    _, record = run(model, inputs, Schedule((Stage(2, StateNorm(), 0.5),)))
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[2]
    for b, grid in enumerate(record.layout.samples):
        norms = hidden[b, grid.positions].float().norm(dim=-1)
        expected = torch.sort(torch.topk(norms, len(record.stages[0].kept[b])).indices).values
        assert torch.equal(record.stages[0].kept[b], expected.cpu())


def test_increasing_fractions_that_round_onto_one_layer_move_up():
    """SparseVLM's 3/32, 7/32, 16/32 of 6 layers round to 1, 1, 3: the second moves to layer 2; decreasing
    fractions, mixed units and a move past the last layer are still refused."""
    text = TextAttentionScorer()
    stages = lambda *layers: Schedule(tuple(Stage(k, text, 0.5) for k in layers))  # noqa: E731
    assert [k for k, _ in stages(3 / 32, 7 / 32, 16 / 32).resolve(6)] == [1, 2, 3]
    assert [k for k, _ in stages(0.25, 0.5, 0.75).resolve(32)] == [8, 16, 24]
    for refused in (stages(7 / 32, 3 / 32), stages(1, 7 / 32), stages(0.8, 0.85)):
        with pytest.raises(ValueError, match="strictly increasing"):
            refused.resolve(6)
