"""DivPrune and DART: their selections against loop re-computations written from the definitions, hand-checkable
cases, the signals the engine feeds them (checked against the model's own tensors), and generation with and
without the KV cache."""
import math

import pytest
import torch

from analysis_lib.pruning import PruningEngine
from analysis_lib.pruning.methods import get_method
from analysis_lib.pruning.nominal import plain_grid
from analysis_lib.pruning.selectors import MaxMinDiversity, PivotDuplicates, SampleSelection
from analysis_lib.pruning.states import SampleStates
from test_engine import _language_model_kwargs
from tiny_setup import batch_inputs, sample_inputs


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def divprune_reference(rows, candidates, k):
    """Greedy max–min diversity with distance 1 - cos: first the candidate farthest from its nearest other
    candidate, then each time the candidate farthest from its nearest picked one (first index on ties)."""
    pool = [i for i, c in enumerate(candidates) if c]
    if k == 0:
        return []
    dist = {(i, j): 1 - cosine(rows[i], rows[j]) for i in pool for j in pool}
    picked = [max(pool, key=lambda j: (min(dist[i, j] for i in pool if i != j), -j))]
    while len(picked) < k:
        left = [j for j in pool if j not in picked]
        picked.append(max(left, key=lambda j: (min(dist[s, j] for s in picked), -j)))
    return sorted(picked)


def dart_reference(visual, text, visual_keys, text_keys, candidates, k, n_image, n_text):
    """DART: image pivots = candidates with the largest key L1 norm, text pivots likewise among the text; the
    image pivots are kept, the other k - (image pivots) tokens are shared out over the pivots in sequence
    order (the first ones take one more), each taking the candidates least cosine-similar to it."""
    pool = [i for i, c in enumerate(candidates) if c]
    l1 = lambda row: sum(abs(x) for x in row)  # noqa: E731
    image = sorted(sorted(pool, key=lambda i: -l1(visual_keys[i]))[:min(n_image, k)])
    words = sorted(sorted(range(len(text)), key=lambda t: -l1(text_keys[t]))[:n_text])
    pivots = [visual[i] for i in image] + [text[t] for t in words]
    rest, kept = k - len(image), list(image)
    left = [i for i in pool if i not in image]
    for p, pivot in enumerate(pivots):
        quota = rest // len(pivots) + (1 if p < rest % len(pivots) else 0)
        taken = sorted(left, key=lambda i: cosine(pivot, visual[i]))[:quota]
        kept += taken
        left = [i for i in left if i not in taken]
    return sorted(kept)


def selection(n, candidates, states) -> SampleSelection:
    return SampleSelection(torch.zeros(n), candidates, plain_grid(1, n), states=states)


def random_case(seed, n=30, text=6, width=5):
    g = torch.Generator().manual_seed(seed)
    visual, words = torch.randn(n, width, generator=g).double(), torch.randn(text, width, generator=g).double()
    keys, text_keys = torch.randn(n, 7, generator=g).double(), torch.randn(text, 7, generator=g).double()
    candidates = torch.rand(n, generator=g) < 0.8
    return SampleStates(visual, words, visual, words, keys, text_keys), candidates


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [0, 1, 2, 7, 15])
def test_divprune_matches_the_loop_reference(seed, k):
    states, candidates = random_case(seed)
    kept = MaxMinDiversity().select(selection(30, candidates, states), k)
    assert kept.tolist() == divprune_reference(states.visual.tolist(), candidates.tolist(), k)
    assert kept.numel() == k and candidates[kept].all()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k, n_image, n_text", [(0, 4, 4), (3, 4, 4), (12, 4, 4), (13, 2, 3), (20, 0, 5), (9, 3, 0)])
def test_dart_matches_the_loop_reference(seed, k, n_image, n_text):
    states, candidates = random_case(seed)
    kept = PivotDuplicates(n_image, n_text).select(selection(30, candidates, states), k)
    expected = dart_reference(states.visual_normed.tolist(), states.text_normed.tolist(), states.visual_keys.tolist(),
                              states.text_keys.tolist(), candidates.tolist(), k, n_image, n_text)
    assert kept.tolist() == expected
    assert kept.numel() == k and candidates[kept].all()


def unit(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_divprune_by_hand():
    """Tokens at 0°, 5°, 90°, 95°, 180°: 180° is farthest from its nearest neighbour (95°, distance 0.91), then 0°
    (distance 2 to 180°), then 90° (nearest picked at distance 1; 95° is at 0.91 from 180°, 5° at 0.004 from 0°)."""
    rows = torch.tensor([unit(a) for a in (0, 5, 90, 95, 180)])
    states = SampleStates(rows, rows[:0], rows, rows[:0], None, None)
    kept = MaxMinDiversity().select(selection(5, torch.ones(5, dtype=torch.bool), states), 3)
    assert kept.tolist() == [0, 2, 4]


def test_dart_by_hand():
    """Token 0 has the largest key norm (image pivot, kept); the text pivot points at 90°. With k=3 the two other
    places go one to each pivot: token 0 (at 0°) takes the token at 180°, the text pivot (at 90°) then takes the
    one at 10° (cos 0.17) over the one at 80° (cos 0.98)."""
    rows = torch.tensor([unit(a) for a in (0, 80, 180, 10)])
    keys = torch.tensor([[5.0], [1.0], [2.0], [1.0]])
    text, text_keys = torch.tensor([unit(90), unit(45)]), torch.tensor([[3.0], [-1.0]])
    states = SampleStates(rows, text, rows, text, keys, text_keys)
    kept = PivotDuplicates(1, 1).select(selection(4, torch.ones(4, dtype=torch.bool), states), 3)
    assert kept.tolist() == [0, 2, 3]


def _visual_positions(model, inputs):
    return (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()


def test_divprune_reads_the_language_model_input_embeddings(models):
    """The engine's kept set = max–min diversity of the projector outputs the language model receives."""
    model = models[("llava", "sdpa")]
    inputs = sample_inputs(batch_inputs(model, "llava"), 0)
    rows = _language_model_kwargs(model, inputs)["inputs_embeds"][0, _visual_positions(model, inputs)]
    expected = divprune_reference(rows.tolist(), [True] * len(rows), 5)
    with torch.no_grad(), PruningEngine(model, get_method("divprune").schedule(R=1 - 5 / 16)) as engine:
        model(**inputs)
    assert engine.records[-1].stages[0].kept[0].tolist() == expected


def test_dart_reads_the_hidden_states_and_keys_of_layer_k(models):
    """The engine's kept set = DART computed from the model's own tensors: the hidden states entering layer 2
    through the final norm (its weight made non-uniform here, so that the norm changes the cosines), and
    layer 1's keys (k_proj of its normed input, RoPE applied)."""
    model = models[("llava", "sdpa")]
    norm = model.model.language_model.norm
    weight = norm.weight.data.clone()
    norm.weight.data = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) * 2
    try:
        _check_dart_against_the_model(model)
    finally:
        norm.weight.data = weight


def _check_dart_against_the_model(model):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    inputs = sample_inputs(batch_inputs(model, "llava"), 1)
    lm = model.model.language_model
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        layer = lm.layers[1]
        keys = layer.self_attn.k_proj(layer.input_layernorm(hidden[1]))
        head_dim = layer.self_attn.head_dim
        keys = keys.view(1, keys.shape[1], -1, head_dim).transpose(1, 2)
        cos, sin = lm.rotary_emb(hidden[1], inputs["position_ids"])
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
        keys = keys.transpose(1, 2).flatten(2)[0]
        normed = lm.norm(hidden[2])[0]
    image = _visual_positions(model, inputs)
    after = torch.arange(int(image.max()) + 1, normed.shape[0])
    expected = dart_reference(normed[image].tolist(), normed[after].tolist(), keys[image].tolist(),
                              keys[after].tolist(), [True] * len(image), 7, 2, 3)
    schedule = get_method("dart").schedule(K=2, R=1 - 7 / 16, image_pivots=2, text_pivots=3)
    with torch.no_grad(), PruningEngine(model, schedule) as engine:
        model(**inputs)
    assert engine.records[-1].stages[0].kept[0].tolist() == expected


@pytest.mark.parametrize("name, params", [("divprune", {"R": 0.5}), ("dart", {"R": 0.5})])
def test_generation_with_and_without_the_cache_agree(models, name, params):
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    schedule = get_method(name).schedule(**params)

    def generate(cache):
        with torch.no_grad(), PruningEngine(model, schedule):
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=cache, pad_token_id=0,
                                 return_dict_in_generate=True, output_scores=True)
        return out.sequences, torch.stack(out.scores, dim=1)

    (cached, scores), (uncached, scores_uncached) = generate(True), generate(False)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(scores, scores_uncached, atol=2e-5, rtol=1e-4)


def test_flops_use_the_kept_counts():
    """Eq. 1 with the counts each method keeps on LLaVA-1.5's 576 tokens: DART's default 128 after layer 2,
    DivPrune's 56 (9.8%) before the LLM."""
    from analysis_lib.flops import PRESETS
    from analysis_lib.pruning.nominal import nominal_kept
    preset = PRESETS["llava-1.5-7b"]
    assert nominal_kept(get_method("dart").schedule(), 32, preset.grid) == [(2, 128)]
    assert nominal_kept(get_method("divprune").schedule(), 32, preset.grid) == [(0, 56)]
