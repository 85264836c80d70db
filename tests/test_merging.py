"""Merging stages: the engine's invariants with merges, and VisionZip / PruMerge / PruMerge+ checked against
re-computations written from the papers' and official code's definitions on random inputs."""
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from analysis_lib.layout import SampleGrid
from analysis_lib.pruning import PruningEngine, Schedule, Stage, TextAttentionScorer, get_method
from analysis_lib.pruning.merging import (ContextualMerge, DominantContextual, MergeInputs, MergeMap, NeighbourMerge,
                                          Outliers, TopAndSpread)
from analysis_lib.pruning.nominal import plain_grid
from analysis_lib.pruning.selectors import SampleSelection
from tiny_setup import assert_cache_and_batch_agree, batch_inputs

LLAVA_FAMILIES = ("llava", "llava_next")
IN_LLM = Schedule((Stage(2, TextAttentionScorer(), 0.5, merging=NeighbourMerge(3, acts_on="states")),),
                  name="in-llm-merge")
SCHEDULES = {"visionzip": get_method("visionzip").schedule(keep=0.5), "prumerge": get_method("prumerge").schedule(),
             "prumerge_plus": get_method("prumerge_plus").schedule(), "in_llm": IN_LLM,
             "visionzip_output": get_method("visionzip").schedule(keep=0.5, merge_on="output"),
             "prumerge_plus_output": get_method("prumerge_plus").schedule(keep=0.5, merge_on="output")}
# Qwen's merger reads 2x2 patches together: only merges of its outputs (and inside the LLM) run there
CASES = ([(family, name) for family in LLAVA_FAMILIES for name in SCHEDULES]
         + [(family, name) for family in ("qwen2_5_vl", "qwen3_vl")
            for name in ("in_llm", "visionzip_output", "prumerge_plus_output")])


@dataclass(frozen=True)
class ZeroWeights:
    """A merger with the weights of another and every weight set to zero (= plain pruning)."""

    inner: object
    name: str = "zero"

    @property
    def acts_on(self):
        return self.inner.acts_on

    @property
    def needs_keys(self):
        return self.inner.needs_keys

    @property
    def keys_layer(self):
        return self.inner.keys_layer

    def merge(self, sample):
        merge = self.inner.merge(sample)
        return replace(merge, weight=torch.zeros_like(merge.weight))


def run(model, inputs, schedule, **options):
    with torch.no_grad(), PruningEngine(model, schedule, **options) as engine:
        logits = model(**inputs).logits[:, -1]
    return logits, engine.records[-1]


@pytest.mark.parametrize("family, name", CASES)
@pytest.mark.parametrize("positions", ["keep", "reindex"])
def test_merging_removal_equals_the_mask_reference(models, family, name, positions):
    """Mask mode keeps every slot, kept tokens carry the merged states, removed ones are masked: the same
    logits and the same kept sets and merges as real removal; and the merge changes the output."""
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    schedule = SCHEDULES[name]
    removed, rec_r = run(model, inputs, schedule, mode="remove", positions=positions)
    masked, rec_m = run(model, inputs, schedule, mode="mask", positions=positions)
    torch.testing.assert_close(removed, masked, atol=2e-6, rtol=1e-5)
    for b in range(2):
        merge_r, merge_m = rec_r.stages[0].merges[b], rec_m.stages[0].merges[b]
        assert torch.equal(rec_r.stages[0].kept[b], rec_m.stages[0].kept[b])
        assert merge_r.triples() == merge_m.triples() and merge_r.target.numel() > 0
        assert torch.isin(merge_r.target, rec_r.stages[0].kept[b]).all()
    plain_stage = replace(schedule.stages[0], merging=None)
    pruned, _ = run(model, inputs, replace(schedule, stages=(plain_stage,)), positions=positions)
    assert not torch.allclose(removed, pruned, atol=1e-4)


@pytest.mark.parametrize("family, name", CASES)
def test_merge_with_zero_weights_is_plain_pruning(models, family, name):
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    stage = SCHEDULES[name].stages[0]
    zero = Schedule((replace(stage, merging=ZeroWeights(stage.merging)),), positions="reindex")
    plain = Schedule((replace(stage, merging=None),), positions="reindex")
    zero_logits, zero_record = run(model, inputs, zero)
    plain_logits, plain_record = run(model, inputs, plain)
    torch.testing.assert_close(zero_logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(zero_record.stages[0].kept, plain_record.stages[0].kept))


@pytest.mark.parametrize("family, name", [(f, n) for f, n in CASES if n in ("visionzip", "in_llm", "visionzip_output")])
def test_merging_generation_with_cache_equals_without_and_batch_equals_single(models, family, name):
    model = models[(family, "sdpa")]
    record, singles = assert_cache_and_batch_agree(model, batch_inputs(model, family), SCHEDULES[name])
    for b, one in enumerate(singles):
        assert record.stages[0].merges[b].triples() == one.stages[0].merges[0].triples()


def test_merged_into_and_runner_triples():
    merge = MergeMap(torch.tensor([2, 2, 5, 5]), torch.tensor([1, 3, 3, 5]), torch.tensor([0.5, 0.2, 0.7, -0.5]))
    assert merge.merged_into() == {1: 2, 3: 5}  # token 5's own entry is not a merge into another token
    assert merge.triples()[0] == [2, 1, 0.5]
    states = torch.arange(12.0).reshape(6, 2)
    rows, values = merge.apply(states, torch.arange(6))
    assert rows.tolist() == [2, 5]
    torch.testing.assert_close(values, torch.stack([states[2] + 0.5 * states[1] + 0.2 * states[3],
                                                    0.5 * states[5] + 0.7 * states[3]]))


# ---- selections and merges against independent re-computations on random inputs ----------------------------

def _random_sample(n=49, heads=2, head_dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g) ** 4  # skewed, like [CLS] attention, with a few far above
    scores[torch.randperm(n, generator=g)[:3]] += torch.rand(3, generator=g) + 1
    keys = torch.randn(n, heads, head_dim, generator=g)
    return scores, keys, plain_grid(7, 7)


def _selection(scores, grid: SampleGrid) -> SampleSelection:
    return SampleSelection(scores, torch.ones(scores.numel(), dtype=torch.bool), grid)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [8, 13, 20])
def test_visionzip_matches_its_definition(seed, k):
    """Dominant: the top int(k·54/64) by [CLS] attention; contextual: every (M // c)-th of the M remaining
    tokens, first c; each other remaining token goes to its most cosine-similar contextual token by the
    head-mean keys, and a contextual token becomes itself plus the mean of what it absorbed."""
    scores, keys, grid = _random_sample(seed=seed)
    n = scores.numel()
    d = int(k * 54 / 64)
    order = sorted(range(n), key=lambda i: -float(scores[i]))
    dominant = order[:d]
    remaining = [i for i in range(n) if i not in dominant]
    c = k - d
    step = max(1, len(remaining) // c)
    contextual = [remaining[j] for j in range(0, len(remaining), step)][:c]
    kept = DominantContextual().select(_selection(scores, grid), k)
    assert kept.tolist() == sorted(dominant + contextual) and kept.numel() == k
    metric = keys.mean(dim=1).double().numpy()
    metric /= np.linalg.norm(metric, axis=1, keepdims=True)
    assignment = {}
    for i in remaining:
        if i not in contextual:
            assignment[i] = contextual[int(np.argmax([metric[i] @ metric[t] for t in contextual]))]
    expected = {(t, i, 1.0 / sum(1 for v in assignment.values() if v == t)) for i, t in assignment.items()}
    merge = ContextualMerge().merge(MergeInputs(kept, torch.ones(n, dtype=torch.bool), scores, keys))
    got = {(t, s, w) for t, s, w in zip(merge.target.tolist(), merge.source.tolist(), merge.weight.tolist())}
    assert {(t, s) for t, s, _ in got} == {(t, s) for t, s, _ in expected}
    for t, s, w in got:
        assert w == pytest.approx(1.0 / sum(1 for v in assignment.values() if v == t))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spatial", [False, True])
def test_prumerge_selection_matches_its_definition(seed, spatial):
    """Outliers: attention above Q3 + 1.5·IQR (numpy percentiles); PruMerge+ adds np.arange(0, N-1, s),
    s = int(int(1/ratio)/3), ratio = outliers / N, as the official code."""
    scores, _, grid = _random_sample(seed=seed)
    values = scores.double().numpy()
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    outliers = set(np.where(values > q3 + 1.5 * (q3 - q1))[0].tolist())
    assert outliers  # the skewed draw has outliers
    expected = set(outliers)
    if spatial:
        ratio = len(outliers) / len(values)
        expected |= set(np.arange(0, len(values) - 1, max(1, int(int(1 / ratio) / 3))).tolist())
    kept = Outliers(spatial).select(_selection(scores, grid))
    assert set(kept.tolist()) == expected


@pytest.mark.parametrize("seed", range(3))
def test_prumerge_merge_matches_its_definition(seed):
    """Each kept token absorbs its 4 nearest other tokens by cosine of the concatenated keys, weighted by
    their [CLS] attention (not normalised)."""
    scores, keys, _ = _random_sample(n=20, seed=seed)
    kept = torch.tensor([2, 7, 11])
    merge = NeighbourMerge(4).merge(MergeInputs(kept, torch.ones(20, dtype=torch.bool), scores, keys))
    flat = keys.flatten(1).double().numpy()
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    expected = set()
    for t in kept.tolist():
        similarity = {s: flat[t] @ flat[s] for s in range(20) if s != t}
        for s in sorted(similarity, key=lambda s: -similarity[s])[:4]:
            expected.add((t, s))
    assert set(zip(merge.target.tolist(), merge.source.tolist())) == expected and merge.target.numel() == 12
    torch.testing.assert_close(merge.weight, scores[merge.source])


@pytest.mark.parametrize("k", [1, 2, 7, 16, 30])
def test_fixed_budgets_are_never_exceeded(k):
    scores, _, grid = _random_sample()
    assert TopAndSpread().select(_selection(scores, grid), k).unique().numel() == k
    assert DominantContextual().select(_selection(scores, grid), k).unique().numel() == k


def test_prumerge_keeps_its_adaptive_count_and_nominal_flops_use_the_mean_share():
    from analysis_lib.pruning.nominal import nominal_kept
    assert nominal_kept(get_method("prumerge").schedule(), 32, (24, 24)) == [(0, 32)]
    assert nominal_kept(get_method("prumerge").schedule(keep=64), 32, (24, 24)) == [(0, 64)]
    assert nominal_kept(get_method("visionzip").schedule(), 32, (24, 24)) == [(0, 64)]
    (_, plus), = nominal_kept(get_method("prumerge_plus").schedule(), 32, (24, 24))
    assert 32 < plus < 144  # the outliers plus every 6th token (stride int(18/3)) less the overlap


@pytest.mark.parametrize("make, message", [
    (lambda: get_method("visionzip").schedule(dominant=1.5), r"dominant=1.5 is outside the allowed range"),
    (lambda: get_method("visionzip").schedule(keep=-3), "keep=-3: a token count must be >= 0"),
    (lambda: get_method("prumerge").schedule(neighbours=0), "neighbours=0: must be an integer >= 1"),
    (lambda: get_method("prumerge").schedule(attention="cls"), "attention='cls'.*'joint', 'heads'"),
    (lambda: get_method("visionzip").schedule(merge_on="pixels"), "merge_on='pixels'.*'input', 'output'"),
    (lambda: get_method("prumerge_plus").schedule(keep=1.5), r"keep=1.5 is outside the allowed range"),
    (lambda: NeighbourMerge(acts_on="pixels"), "acts_on='pixels'.*'projector_input', 'states'"),
    (lambda: ContextualMerge(keys_layer="first"), "keys_layer='first'.*'feature', 'last'"),
    (lambda: Schedule((Stage(2, TextAttentionScorer(), 0.5, merging=NeighbourMerge()),)).resolve(6),
     "acts on the projector's input and needs a stage at layer 0"),
])
def test_bad_merge_parameters_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_projector_input_merge_is_refused_where_the_projector_is_not_per_token(models):
    with pytest.raises(ValueError, match="merging before the projector supports the families 'llava', 'llava_next'"):
        PruningEngine(models[("qwen2_5_vl", "sdpa")], get_method("visionzip").schedule(keep=0.5))


def test_runner_rows_carry_the_merges_and_real_counts(model, tmp_path):
    import json

    from analysis_lib.evaluation.runner import run_grid
    rows = run_grid([model], ["none", "visionzip:keep=0.5", "prumerge"], ["synthetic"], tmp_path, batch_size=4,
                    limit=4, progress=False)
    assert (rows[rows.method == "none"].merged == "[]").all()
    for _, row in rows[rows.method != "none"].iterrows():
        (kept,), (merged,) = json.loads(row.kept), json.loads(row.merged)
        assert merged and {t for t, _, _ in merged} <= set(kept)
        assert json.loads(row.kept_counts) == [len(kept)] and 0 < row.flops_reduction < 1


@pytest.mark.parametrize("seed", range(3))
def test_prumerge_reads_cls_attention_of_the_last_layer_as_one_softmax(seed):
    """The official code: softmax(q_cls·Kᵀ/sqrt(C)) over all heads together at the tower's last layer, [CLS]
    column dropped, IQR outliers (at least the best token) kept."""
    from analysis_lib.adapters import adapter_for
    from analysis_lib.tiny import TinySpec, tiny_inputs, tiny_vlm
    model = tiny_vlm("llava", spec=TinySpec(text_layers=2), seed=seed)
    inputs = tiny_inputs(model, [3], [2], None, seed=seed)
    attention = adapter_for(model).vision_layers[-1].self_attn
    attention.q_proj.weight.data *= 30  # peaked attention, so that several tokens are outliers
    seen = {}
    hooks = [attention.q_proj.register_forward_hook(lambda m, a, o: seen.update(q=o)),
             attention.k_proj.register_forward_hook(lambda m, a, o: seen.update(k=o))]
    try:
        _, record = run(model, inputs, get_method("prumerge").schedule())
    finally:
        for hook in hooks:
            hook.remove()
    q, k = seen["q"][0].double(), seen["k"][0].double()
    cls = torch.softmax(q[0] @ k.T / q.shape[-1] ** 0.5, dim=-1)[1:].numpy()
    q1, q3 = np.percentile(cls, [25, 75])
    outliers = np.where(cls > q3 + 1.5 * (q3 - q1))[0].tolist()
    assert len(outliers) > 1 and record.stages[0].kept[0].tolist() == outliers
    _, heads = run(model, inputs, get_method("prumerge").schedule(attention="heads"))
    assert heads.stages[0].kept[0].tolist() != outliers  # the two readings differ here


def test_hand_checkable_visionzip_and_prumerge_plus():
    """VisionZip, 8 tokens, keep 4 at dominant 1/2: tokens 0 and 3 dominate; of the remaining 1 2 4 5 6 7 every
    3rd (1, 5) is contextual; 2 and 6 point like 1, 4 and 7 like 5, so each target takes two at 1/2.
    PruMerge+, 12 tokens all 0.1 but token 4: one outlier, ratio 1/12, stride int(12/3) = 4: places 0, 4, 8."""
    grid = plain_grid(2, 4)
    scores = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3, 0.05, 0.15, 0.25])
    kept = DominantContextual(0.5).select(_selection(scores, grid), 4)
    assert kept.tolist() == [0, 1, 3, 5]
    keys = torch.tensor([[0, 0], [1, 0], [1, 0.1], [0, 0], [0.2, 1], [0, 1], [1, -0.5], [0.1, 1]])[:, None]
    merge = ContextualMerge(0.5).merge(MergeInputs(kept, torch.ones(8, dtype=torch.bool), scores, keys))
    assert sorted(merge.triples()) == [[1, 2, 0.5], [1, 6, 0.5], [5, 4, 0.5], [5, 7, 0.5]]
    scores = torch.full((12,), 0.1)
    scores[4] = 5.0
    assert Outliers(spatial=True).select(_selection(scores, plain_grid(3, 4))).tolist() == [0, 4, 8]
    assert Outliers(spatial=False).select(_selection(scores, plain_grid(3, 4))).tolist() == [4]
