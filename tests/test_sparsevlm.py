"""SparseVLM: its parts on hand-checkable cases, a stage against a loop re-computation written from the paper's
equations (on random inputs and on a tiny model's own tensors), the engine invariants on tiny LLaVA and
LLaVA-NeXT models, FLOPs, and the refusals."""
import math

import pytest
import torch

from analysis_lib.cli import main
from analysis_lib.pruning import PruningEngine
from analysis_lib.pruning.merging import MergeInputs
from analysis_lib.pruning.methods import get_method
from analysis_lib.pruning.nominal import plain_grid
from analysis_lib.pruning.selectors import SampleSelection
from analysis_lib.pruning.sparsevlm import Recycling, rater_scores, recycle, select_raters, stage_counts
from analysis_lib.pruning.states import SampleStates
from test_engine import _language_model_kwargs
from tiny_setup import assert_cache_and_batch_agree, batch_inputs, sample_inputs

# 6-layer tiny models: stages after layers 1, 3, 5; keep 0.5 → 78%, 52%, 29% of the tokens (+ recycled)
TINY = {"keep": 0.5, "K1": 1, "K2": 3, "K3": 5}


def states_of(hidden):
    return SampleStates(hidden, hidden[:0], hidden, hidden[:0], None, None)


# ---- the parts, by hand ---------------------------------------------------------------------------------------

def test_raters_are_the_text_tokens_above_the_mean_relevance():
    """V·Tᵀ rows [ln 3, 0, 0]: softmax over the text [3/5, 1/5, 1/5], mean 1/3: only the first text token rates."""
    visual = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    text = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [0.0, 5.0]])
    assert select_raters(visual, text).tolist() == [True, False, False]


def test_without_a_token_above_the_mean_every_text_token_rates():
    assert select_raters(torch.ones(3, 2), torch.ones(1, 2)).tolist() == [True]


def test_scores_are_the_raters_mean_attention():
    attention = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.1, 0.1], [0.3, 0.3, 0.0]])
    scores = rater_scores(attention, torch.tensor([True, False, True]))
    torch.testing.assert_close(scores, torch.tensor([0.2, 0.25, 0.15], dtype=torch.float64))


def test_recycling_by_hand():
    """7 deleted tokens: int(7·0.3) + 1 = 3 recycled, the best-scored (1, 3, 5); int(3/2) + 1 = 2 clusters.
    States 0, 0.1, 5 (one channel): with k = 2 neighbours tokens 1 and 3 are equally dense (exp(-0.005)),
    token 1 counts as denser (earlier); δ = 5 (its largest distance), 0.1, 4.9; ρ·δ ranks 1, 3, then 5, so the
    centres are 1 and 3, and 5 joins its nearest centre 3, which becomes the mean of 3 and 5."""
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.0])
    states = torch.tensor([[9.0], [0.0], [9.0], [0.1], [9.0], [5.0], [9.0]])
    recycled = recycle(torch.arange(7), scores, states, ratio=0.3, cluster_size=2)
    assert recycled.centres.tolist() == [1, 3]
    assert recycled.merge.triples() == [[3, 3, -0.5], [3, 5, 0.5]]
    rows, values = recycled.merge.apply(states, torch.arange(7))
    assert rows.tolist() == [3] and values.item() == pytest.approx(2.55)


def test_no_recycling_when_off_or_nothing_deleted():
    states = torch.randn(4, 2)
    assert recycle(torch.arange(4), torch.rand(4), states, 0.0, 10).centres.numel() == 0
    assert recycle(torch.arange(0), torch.rand(4), states, 0.3, 10).merge.target.numel() == 0


def test_selection_and_merge_by_hand():
    """k = 3 keeps 0, 2, 4; the 5 deleted best-first are 3, 6, 5, 1, 7: int(1.5) + 1 = 2 recycled (3, 6) in
    int(2/10) + 1 = 1 cluster, centred on the earlier of two equally dense tokens, 3, which is kept on top
    and becomes the mean of 3 and 6."""
    scores = torch.tensor([0.9, 0.1, 0.8, 0.5, 0.7, 0.2, 0.4, 0.0])
    candidates = torch.ones(8, dtype=torch.bool)
    states = states_of(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    part = Recycling()
    kept = part.select(SampleSelection(scores, candidates, plain_grid(2, 4), states=states), 3)
    assert kept.tolist() == [0, 2, 3, 4]
    merge = part.merge(MergeInputs(kept, candidates, scores, states=states, budget=3))
    assert merge.triples() == [[3, 3, -0.5], [3, 6, 0.5]]


def test_official_counts_and_the_rule_for_other_budgets():
    assert stage_counts(64) == (66, 30, 17) and stage_counts(192) == (300, 200, 110)
    assert stage_counts(32) == (33, 15, 8.5)  # half the 64 list, the nearest official budget
    schedule = get_method("sparsevlm").schedule(keep=128)
    assert [s.keep for s in schedule.stages] == [303, 110, 36] and schedule.positions == "reindex"
    assert [layer for layer, _ in schedule.resolve(32)] == [3, 7, 16]


# ---- against a loop re-computation of the paper's equations ---------------------------------------------------

def reference_stage(candidates, k, attention, visual_embeddings, text_embeddings, hidden, ratio=0.3,
                    cluster_size=10):
    """SparseVLM §3.2–3.4 in loops: R_j = mean_i softmax_j(v_i·t_j) over all visual tokens i, raters R_j >
    mean R (all if none); score_i = mean over raters of attention[j][i]; keep the top k present tokens; pool
    the top int(ratio·d) + 1 of the d deleted; DPC-KNN with k = c neighbours (self included), c = int(m /
    cluster_size) + 1 centres by ρ·δ; every pooled token to its nearest centre; each cluster its mean."""
    present = [i for i, c in enumerate(candidates) if c]
    n_text = len(text_embeddings)
    relevance = [0.0] * n_text
    for v in visual_embeddings:
        logits = [sum(a * b for a, b in zip(v, t)) for t in text_embeddings]
        exp = [math.exp(x - max(logits)) for x in logits]
        for j in range(n_text):
            relevance[j] += exp[j] / sum(exp) / len(visual_embeddings)
    raters = [j for j in range(n_text) if relevance[j] > sum(relevance) / n_text] or list(range(n_text))
    score = {i: sum(attention[j][i] for j in raters) / len(raters) for i in present}
    ranked = sorted(present, key=lambda i: (-score[i], i))
    kept, deleted = sorted(ranked[:k]), ranked[k:]
    if not deleted:
        return kept, set()
    pool = sorted(deleted[:min(int(len(deleted) * ratio) + 1, len(deleted))])
    c = int(len(pool) / cluster_size) + 1
    dist = {(a, b): math.dist(hidden[a], hidden[b]) / math.sqrt(len(hidden[0])) for a in pool for b in pool}
    density = {a: math.exp(-sum(d * d for d in sorted(dist[a, b] for b in pool)[:c]) / c) for a in pool}
    delta = {}
    for a in pool:
        denser = [b for b in pool if density[b] > density[a] or (density[b] == density[a] and b < a)]
        delta[a] = min(dist[a, b] for b in denser) if denser else max(dist[a, b] for b in pool)
    centres = sorted(sorted(pool, key=lambda a: -density[a] * delta[a])[:c])
    triples = set()
    for centre in centres:
        members = [a for a in pool if min(centres, key=lambda t: (0 if a == t else dist[a, t], t)) == centre]
        if len(members) > 1:
            triples |= {(centre, a, round(1 / len(members) - (a == centre), 5)) for a in members}
    return sorted(kept + centres), triples


def run_parts(candidates, k, attention, visual, text, hidden, ratio=0.3, cluster_size=10):
    """The library's parts chained as a stage runs them: scores, then selection and merge."""
    scores = torch.full((candidates.numel(),), float("nan"))
    present = candidates.nonzero().flatten()
    scores[present] = rater_scores(attention[:, present], select_raters(visual, text)).float()
    part, states = Recycling(ratio, cluster_size), states_of(hidden)
    kept = part.select(SampleSelection(scores, candidates, plain_grid(1, candidates.numel()), states=states), k)
    merge = part.merge(MergeInputs(kept, candidates, scores, states=states, budget=k))
    return kept.tolist(), {(a, b, round(w, 5)) for a, b, w in merge.triples()}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k, ratio, cluster_size", [(5, 0.3, 10), (3, 0.5, 2), (12, 1.0, 3)])
def test_stage_matches_the_paper_equations(seed, k, ratio, cluster_size):
    g = torch.Generator().manual_seed(seed)
    n, t = 40, 7
    candidates = torch.rand(n, generator=g) > 0.2
    attention = torch.softmax(torch.randn(t, n, generator=g) * 2, dim=1)
    visual, text = torch.randn(n, 6, generator=g), torch.randn(t, 6, generator=g)
    hidden = torch.randn(n, 5, generator=g)
    got = run_parts(candidates, k, attention, visual, text, hidden, ratio, cluster_size)
    assert got == reference_stage(candidates.tolist(), k, attention.tolist(), visual.tolist(), text.tolist(),
                                  hidden.tolist(), ratio, cluster_size)
    assert len(got[0]) == k + int(min(int((int(candidates.sum()) - k) * ratio) + 1,
                                      int(candidates.sum()) - k) / cluster_size) + 1


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_the_engine_reads_the_models_own_tensors(models, family):
    """The first stage's kept set and merge = the re-computation from the eager model's attention of layer 1
    (head mean, rows of the text after the image), its input embeddings and the hidden states entering
    layer 2."""
    model = models[(family, "eager")]
    inputs = sample_inputs(batch_inputs(model, family), 1)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
    embeddings = _language_model_kwargs(model, inputs)["inputs_embeds"][0]
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    after = torch.arange(int(image.max()) + 1, embeddings.shape[0])
    attention = out.attentions[1][0].mean(dim=0)[after][:, image]
    k = math.floor(stage_counts(0.5 * 576)[0] / 576 * image.numel())
    expected = reference_stage([True] * image.numel(), k, attention.tolist(), embeddings[image].tolist(),
                               embeddings[after].tolist(), out.hidden_states[2][0, image].tolist())
    schedule = get_method("sparsevlm").schedule(**{**TINY, "K1": 2})
    with torch.no_grad(), PruningEngine(model, schedule) as engine:
        model(**inputs)
    stage = engine.records[-1].stages[0]
    assert stage.kept[0].tolist() == expected[0]
    assert {(a, b, round(w, 5)) for a, b, w in stage.merges[0].triples()} == expected[1] != set()


# ---- engine invariants ----------------------------------------------------------------------------------------

def logits_and_record(model, inputs, **options):
    with torch.no_grad(), PruningEngine(model, get_method("sparsevlm").schedule(**TINY), **options) as engine:
        logits = model(**inputs).logits[:, -1]
    return logits, engine.records[-1]


@pytest.mark.parametrize("family", ["llava", "llava_next"])
@pytest.mark.parametrize("positions", ["keep", "reindex"])
def test_removal_equals_the_mask_reference(models, family, positions):
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    removed, rec_r = logits_and_record(model, inputs, mode="remove", positions=positions)
    masked, rec_m = logits_and_record(model, inputs, mode="mask", positions=positions)
    torch.testing.assert_close(removed, masked, atol=2e-6, rtol=1e-5)
    for stage_r, stage_m in zip(rec_r.stages, rec_m.stages):
        for b in range(2):
            assert torch.equal(stage_r.kept[b], stage_m.kept[b])
            assert stage_r.merges[b].triples() == stage_m.merges[b].triples()
    assert any(m.target.numel() for stage in rec_r.stages for m in stage.merges)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_generation_with_cache_equals_without_and_batch_equals_single(models, family):
    model = models[(family, "sdpa")]
    record, singles = assert_cache_and_batch_agree(model, batch_inputs(model, family),
                                                   get_method("sparsevlm").schedule(**TINY), new_tokens=3)
    for b, one_record in enumerate(singles):
        for stage, one in zip(record.stages, one_record.stages):
            assert torch.equal(stage.kept[b], one.kept[0])
            assert stage.merges[b].triples() == one.merges[0].triples()


# ---- FLOPs ----------------------------------------------------------------------------------------------------

def test_flops_count_the_recycled_tokens(capsys):
    """LLaVA-1.5's 576 tokens at the official 64 budget: 66 kept + 16 recycled after layer 3 (510 deleted:
    int(153) + 1 = 154 pooled, 16 clusters), 30 + 2 after layer 7, 17 + 1 after layer 16; at 192: 300 + 9
    (276 deleted, 83 pooled), 200 + 4, 110 + 3."""
    from analysis_lib.flops import PRESETS
    from analysis_lib.pruning.nominal import nominal_kept
    preset = PRESETS["llava-1.5-7b"]
    assert nominal_kept(get_method("sparsevlm").schedule(), 32, preset.grid) == [(3, 82), (7, 32), (16, 18)]
    assert main(["flops", "--model", "llava-1.5-7b", "--method", "sparsevlm", "keep=192"]) == 0
    out = capsys.readouterr().out
    assert "after layer 3: keep 309 of 576" in out and "after layer 16: keep 113 of 576" in out


# ---- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    ({"keep": 0}, r"keep=0: a budget must be a token count >= 1 or a fraction in \(0, 1\)"),
    ({"keep": 0.7}, r"keep=0.7: its first stage would keep 109% .* allowed fractions: \(0, 0.64\]"),
    ({"keep": 1.5}, r"keep=1.5 is outside the allowed range \(0.0, 1.0\)"),
    ({"K1": 0.5, "K2": 0.25, "K3": 0.75},
     r"K1, K2, K3 = \(0.5, 0.25, 0.75\): the pruning layers must be strictly increasing"),
    ({"K1": 16, "K2": 7}, r"K1, K2, K3 = \(16, 7, 16\): the pruning layers must be strictly increasing"),
    ({"recycle": 1.5}, r"recycle=1.5 is outside the allowed range \[0.0, 1.0\]"),
    ({"cluster_size": 0}, r"cluster_size=0: must be an integer >= 1"),
])
def test_bad_settings_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        get_method("sparsevlm").schedule(**params)


def test_layers_that_collide_or_precede_the_language_model_are_refused(models):
    model = models[("llava", "sdpa")]
    with pytest.raises(ValueError, match=r"layer=7 is outside this 6-layer model.*7/32 of depth is 0.21875"):
        PruningEngine(model, get_method("sparsevlm").schedule(keep=0.5))  # the paper's layers of 32
    with pytest.raises(ValueError, match=r"layers \[3, 3, 3\] must be strictly increasing"):
        PruningEngine(model, get_method("sparsevlm").schedule(keep=0.5, K1=3, K2=3, K3=0.5))
    with pytest.raises(ValueError, match="needs the attention of layer K-1 and cannot score before the language"):
        PruningEngine(model, get_method("sparsevlm").schedule(**{**TINY, "K1": 0}))


def test_a_budget_above_the_visual_tokens_is_refused_before_any_layer_runs(models):
    model = models[("llava", "sdpa")]
    with pytest.raises(ValueError, match="the budget 66 exceeds the 16 visual tokens"):
        with torch.no_grad(), PruningEngine(model, get_method("sparsevlm").schedule(K1=1, K2=3, K3=5)):
            model(**batch_inputs(model, "llava"))
