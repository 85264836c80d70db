"""ToMe in the vision tower: the matching by hand, the tower against a loop re-computation from the paper's
definitions (proportional attention included), the engine's invariants, the record, refusals and the runner's
encoding reuse."""
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from analysis_lib.adapters import adapter_for
from analysis_lib.evaluation.runner import run_grid, tower_flops_reduction
from analysis_lib.flops import PRESETS, TowerDims, tower_flops, tower_reduction
from analysis_lib.hooks import HookSet, hook_count
from analysis_lib.pruning import FixedScorer, PruningEngine, Schedule, Stage, get_method
from analysis_lib.pruning.nominal import nominal_kept, tower_tokens
from analysis_lib.pruning.tower_merging import (Representatives, ToMe, TowerMerging, bipartite_matching, check_tower,
                                                merge_rows, merge_schedule)
from tiny_setup import assert_cache_and_batch_agree, batch_inputs

FAMILIES = ("llava", "llava_next")
TOME = get_method("tome").schedule(keep=5)  # 16 patches per tiny crop -> 5, over tower layers 0 and 1


def run(model, inputs, schedule=TOME, **options):
    with torch.no_grad(), PruningEngine(model, schedule, **options) as engine:
        logits = model(**inputs).logits[:, -1]
    return logits, engine.records[-1]


# ---- the matching and the schedule by hand ---------------------------------------------------------------

def test_bipartite_matching_by_hand():
    """Places 0..6: A = 0 2 4 6 (0 is the class token), B = 1 3 5. Best edges: 2->3 (cos 1), 4->1 (cos .995),
    6->5 (cos .894); r = 2 merges 2 into 3 and 4 into 1. Rows: unmerged A (0, 6), then B (1, 3, 5)."""
    metric = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0.1], [-1, 0], [-1, 0.5]])[None]
    row_of, survivors = bipartite_matching(metric, 2)
    assert row_of.tolist() == [[0, 2, 3, 3, 2, 4, 1]]
    assert survivors.tolist() == [[0, 6, 1, 3, 5]]
    x = torch.arange(7.0)[None, :, None]
    merged, size = merge_rows(x, torch.ones(1, 7), row_of, 5)
    assert merged.flatten().tolist() == [0, 6, 2.5, 2.5, 5] and size.tolist() == [[1, 1, 2, 2, 1]]
    # r is capped at (t - 1) // 2 = 3: 6 goes into 5 as well; the class token never merges
    row_of, survivors = bipartite_matching(metric, 10)
    assert survivors.tolist() == [[0, 1, 3, 5]] and row_of.tolist() == [[0, 1, 2, 2, 1, 3, 3]]
    # a size-weighted mean: a row of size 3 outweighs one of size 1
    merged, size = merge_rows(torch.tensor([[[0.0], [4.0], [8.0]]]), torch.tensor([[1.0, 3.0, 1.0]]),
                              torch.tensor([[0, 1, 1]]), 2)
    assert merged.flatten().tolist() == [0.0, 5.0] and size.tolist() == [[1.0, 4.0]]


def test_merge_schedule_reaches_the_budget_exactly():
    assert merge_schedule(16, 4, 2) == [8, 4]  # ToMe's cap halves twice: 16 -> 8 -> 4
    assert merge_schedule(16, 5, 2) == [6, 5]
    for keep in (128, 64, 32):
        rs = merge_schedule(576, keep, 23)
        assert sum(rs) == 576 - keep and max(rs) - min(rs) <= 1  # LLaVA-1.5: an even r over layers 0..22
    assert merge_schedule(576, 0.25, 23)[-1] >= 0 and sum(merge_schedule(576, 0.25, 23)) == 432
    with pytest.raises(ValueError, match="allowed budgets are 4..16"):
        merge_schedule(16, 3, 2)


# ---- the tower against a loop implementation of the paper ---------------------------------------------------

def _attention(layer, x, size, proportional):
    """One CLIP attention over tokens x [t, D], head by head, with log(size) added to the logits of each key
    (``proportional``)."""
    attn = layer.self_attn
    heads, dim = attn.num_heads, attn.head_dim
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    out = []
    for h in range(heads):
        part = slice(h * dim, (h + 1) * dim)
        logits = q[:, part] @ k[:, part].T * attn.scale
        if proportional:
            logits = logits + torch.log(size)[None, :]
        out.append(torch.softmax(logits, dim=-1) @ v[:, part])
    return attn.out_proj(torch.cat(out, dim=-1)), k.view(len(x), heads, dim).mean(dim=1)


def _tome_loop(tower, hidden, schedule, feature, proportional):
    """ToMe's block written from the paper, token by token, for one crop: the tower's output per layer (the
    feature layer's expanded to every original token: each takes its cluster's state)."""
    x, size, members = hidden, torch.ones(len(hidden)), [[i] for i in range(len(hidden))]
    outputs = []
    for i, layer in enumerate(tower.encoder.layers):
        out, metric = _attention(layer, layer.layer_norm1(x), size, proportional)
        x = x + out
        if i <= feature:
            unit = [m / m.norm() for m in metric]
            a, b = list(range(0, len(x), 2)), list(range(1, len(x), 2))
            best = {}
            for p in a[1:]:  # the class token has no edge
                sims = [float(unit[p] @ unit[q]) for q in b]
                best[p] = (max(sims), b[sims.index(max(sims))])
            ranked = sorted(best, key=lambda p: -best[p][0])  # stable: ties keep place order
            merged = set(ranked[:schedule[i]])
            groups = [[p] for p in a if p not in merged] + [[q] + [p for p in merged if best[p][1] == q] for q in b]
            x = torch.stack([sum(size[p] * x[p] for p in g) / sum(size[p] for p in g) for g in groups])
            members = [sum((members[p] for p in g), []) for g in groups]
            size = torch.tensor([float(sum(size[p] for p in g)) for g in groups])
        x = x + layer.mlp(layer.layer_norm2(x))
        if i == feature:
            full = torch.empty(len(hidden), x.shape[1])
            for row, group in enumerate(members):
                full[group] = x[row]
            outputs.append(full)
        else:
            outputs.append(x)
    return outputs


@pytest.mark.parametrize("proportional", [True, False])
def test_the_tower_equals_a_loop_recomputation_of_tome(models, proportional):
    """The hooked tower's recorded hidden states equal the loop's layer by layer: shrunk rows before the
    feature layer, the full grid at it, merged rows after it; proportional attention changes them."""
    model = models[("llava", "sdpa")]
    adapter = adapter_for(model)
    adapter_tower = model.model.vision_tower
    pixels = batch_inputs(model, "llava")["pixel_values"]
    schedule, feature = [6, 5], adapter.vision_feature_encoder_layer
    with torch.no_grad():  # transformers installs its output recorder now: ToMe's layer hook must still go first
        adapter_tower(pixels, output_hidden_states=True)
    hooks = HookSet()
    TowerMerging(adapter, schedule, proportional).install(hooks)
    try:
        with torch.no_grad():
            hooked = adapter_tower(pixels, output_hidden_states=True).hidden_states
    finally:
        hooks.remove()
    assert [h.shape[1] for h in hooked] == [17, 11, 17, 6]
    for crop in range(pixels.shape[0]):
        with torch.no_grad():
            plain = adapter_tower(pixels[crop:crop + 1], output_hidden_states=True).hidden_states
            loop = _tome_loop(adapter_tower, plain[0][0], schedule, feature, proportional)
        for layer, expected in enumerate(loop):
            torch.testing.assert_close(hooked[layer + 1][crop], expected, atol=2e-5, rtol=1e-4)


def test_proportional_attention_changes_the_tower(models):
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    with_sizes, _ = run(model, inputs)
    without, _ = run(model, inputs, get_method("tome").schedule(keep=5, proportional=False))
    assert not torch.allclose(with_sizes, without, atol=1e-4)


# ---- the engine's invariants and the record ----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_removal_equals_the_mask_reference(models, family, implementation):
    model = models[(family, implementation)]
    inputs = batch_inputs(model, family)
    removed, rec_r = run(model, inputs, mode="remove")
    masked, rec_m = run(model, inputs, mode="mask")
    torch.testing.assert_close(removed, masked, atol=2e-6, rtol=1e-5)
    for b in range(2):
        assert torch.equal(rec_r.stages[0].kept[b], rec_m.stages[0].kept[b])
        assert rec_r.stages[0].merges[b].triples() == rec_m.stages[0].merges[b].triples()
    with torch.no_grad():
        unpruned = model(**inputs).logits[:, -1]
    assert not torch.allclose(removed, unpruned, atol=1e-4)


def test_the_engine_does_not_apply_the_tower_merge_again(models):
    """ToMe's run equals the hooked tower followed by plain pruning of the same kept set: the recorded merges
    are not applied a second time in the LLM."""
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    logits, record = run(model, inputs)
    kept = tuple(tuple(k.tolist()) for k in record.stages[0].kept)
    adapter = adapter_for(model)
    hooks = HookSet()
    TowerMerging(adapter, check_tower(adapter, 5)).install(hooks)
    try:
        direct, _ = run(model, inputs, Schedule((Stage(0, FixedScorer(kept), 5),), positions="reindex"))
    finally:
        hooks.remove()
    torch.testing.assert_close(logits, direct, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_record_puts_every_removed_token_in_one_cluster(models, family):
    """Kept: one representative per cluster (5 per crop; LLaVA-NeXT's newlines too); every other token is the
    source of exactly one merge into a kept token, with weight 1/cluster size."""
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    _, record = run(model, inputs)
    for b, grid in enumerate(record.layout.samples):
        kept, merge = record.stages[0].kept[b], record.stages[0].merges[b]
        n = record.num_visual[b]
        removed = sorted(set(range(n)) - set(kept.tolist()))
        assert sorted(merge.source.tolist()) == removed and torch.isin(merge.target, kept).all()
        assert torch.isin((grid.patch < 0).nonzero().flatten(), kept).all()
        if family == "llava":  # one crop, nothing cut away: 5 clusters covering all 16 patches
            assert kept.numel() == 5
            for t in kept.tolist():
                weights = merge.weight[merge.target == t]
                assert all(w == pytest.approx(1 / (weights.numel() + 1)) for w in weights.tolist())
        else:
            crops = int(grid.patch.max()) // 16 - int(grid.patch[grid.patch >= 0].min()) // 16 + 1
            assert kept.numel() <= 5 * crops + int((grid.patch < 0).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_with_cache_equals_without_and_batch_equals_single(models, family):
    model = models[(family, "sdpa")]
    record, singles = assert_cache_and_batch_agree(model, batch_inputs(model, family), TOME)
    for b, one in enumerate(singles):
        assert record.stages[0].merges[b].triples() == one.stages[0].merges[0].triples()


def test_nominal_counts_and_tower_flops():
    schedule = get_method("tome").schedule()
    assert nominal_kept(schedule, 32, (24, 24)) == [(0, 64)]
    tower = PRESETS["llava-1.5-7b"].tower
    tokens = tower_tokens(schedule, 576, tower.layers, tower.feature_layer)
    assert tokens[0][0] == 577 and tokens[22][1] == 65 and tokens[23] == (65, 65)
    d, m = tower.hidden, tower.intermediate
    assert tower_flops(tower, tokens) == sum(4 * n * d * d + 2 * n * n * d + 2 * a * d * m for n, a in tokens)
    plain = tower_tokens(get_method("fastv").schedule(), 576, tower.layers, tower.feature_layer)
    assert plain == [(577, 577)] * 24
    assert tower_reduction(tower, tokens) == 1 - tower_flops(tower, tokens) / tower_flops(tower, plain)
    assert round(tower_reduction(tower, tokens), 3) == 0.485 and tower_reduction(tower, plain) == 0


def test_rows_carry_the_towers_flops_reduction(models):
    """A ToMe row's tower saving is its schedule's (the model's own tower dims and patches); 0 without ToMe."""
    model = models[("llava", "sdpa")]
    em = SimpleNamespace(model=model, adapter=adapter_for(model))
    dims = TowerDims.from_config(model.config)
    assert (dims.layers, dims.feature_layer) == (3, 1)  # the tiny tower: layers 0 and 1 merge
    expected = tower_reduction(dims, tower_tokens(TOME, 16, dims.layers, dims.feature_layer))
    assert tower_flops_reduction(em, TOME) == expected > 0
    assert tower_flops_reduction(em, get_method("fastv").schedule()) == 0 == tower_flops_reduction(em, None)


# ---- refusals ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_tower_it_cannot_hook_is_refused_before_any_work(models, family):
    model = models[(family, "sdpa")]
    before = hook_count(model)
    with pytest.raises(ValueError, match="supported families: 'llava', 'llava_next'"):
        PruningEngine(model, TOME)
    assert hook_count(model) == before


@pytest.mark.parametrize("params, message", [
    ({"keep": 17}, r"keep=17: the budget must lie in 1..16"),
    ({"keep": 3}, r"keep=3: ToMe halves at most .* allowed budgets are 4..16"),
    ({"keep": 0}, "keep=0: a token count must be >= 1"),
    ({"keep": 1.5}, r"keep=1.5 is outside the allowed range \(0, 1\]"),
    ({"proportional": "yes"}, "proportional='yes': must be True or False"),
    ({"r": 8}, "tome parameter='r'.*'keep', 'proportional'"),
])
def test_bad_parameters_are_refused_naming_the_allowed_values(models, params, message):
    model = models[("llava", "sdpa")]
    with pytest.raises(ValueError, match=message):
        PruningEngine(model, get_method("tome").schedule(**params))


def test_a_tower_merge_needs_a_stage_before_the_llm():
    with pytest.raises(ValueError, match="acts on the vision tower and needs a stage at layer 0"):
        Schedule((Stage(2, selector=Representatives(), merging=ToMe(5)),)).resolve(6)


# ---- the runner's encoding reuse ---------------------------------------------------------------------------

def test_the_runner_never_shares_a_merged_encoding(model, tmp_path):
    """A ToMe setting neither reuses the plain encoding nor leaves its merged one to the next setting: the
    rows are the same whichever order the grid runs them in."""
    columns = ["setting", "sample_id", "prediction", "score", "kept"]

    def rows(order, folder):
        table = run_grid([model], order, ["synthetic"], tmp_path / folder, batch_size=4, limit=4, progress=False)
        return table[columns].sort_values(["setting", "sample_id"]).reset_index(drop=True)

    first = rows(["none", "tome:keep=0.5"], "a")
    second = rows(["tome:keep=0.5", "none"], "b")
    pd.testing.assert_frame_equal(first, second)
    assert first[first.setting == "none"].prediction.tolist() != [] and not math.isnan(first.score.iloc[0])
