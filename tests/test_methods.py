"""Every registered method end to end on tiny LLaVA-1.5 and LLaVA-NeXT models (6 layers, 4×4 crops)."""
import pytest
import torch

from analysis_lib.cli import main
from analysis_lib.pruning import FixedScorer, PruningEngine, Schedule, Stage
from analysis_lib.pruning.methods import METHODS, get_method
from analysis_lib.pruning.engine import crop_groups
from tiny_setup import FAMILIES, batch_inputs, sample_inputs

# Settings for a 6-layer model with 16 visual tokens per crop: the papers' 32-layer layers as fractions.
SHALLOW = {
    "fastv": {}, "fastv_norope": {}, "uniform": {}, "knn": {}, "fastv_norope_uniform": {},
    "feather": {"K1": 0.25, "K2": 0.5}, "feather_paper": {"K1": 0.25, "K2": 0.5},
    "pyramiddrop": {"K1": 0.25, "K2": 0.5, "K3": 0.75},
    "fopru": {}, "fopru_fastv": {}, "vispruner": {"keep": 0.5}, "divprune": {"R": 0.5}, "dart": {"R": 0.5},
    "random": {}, "before_llm": {}, "sparsevlm": {"keep": 0.5, "K1": 1, "K2": 3, "K3": 5},
    "text_only": {}, "quartile": {}, "region": {}, "rows": {},
    "visionzip": {"keep": 0.5}, "prumerge": {}, "prumerge_plus": {}, "tome": {"keep": 5},
}
VARIANTS = [(name, params) for name, params in SHALLOW.items()] + [
    ("fopru", {"strategy": "row"}), ("fopru", {"reorder": False}), ("fopru", {"rule": "low-variance"}),
    ("vispruner", {"keep": 5, "r": 0.4}), ("quartile", {"q": 3, "K": 0}), ("rows", {"part": "top"}),
    ("fastv", {"scope": "crop"}), ("vispruner", {"keep": 0.5, "scope": "crop"}),
    ("vispruner", {"keep": 0.5, "diverse_order": "image"}), ("knn", {"delta": "plain"}),
    ("divprune", {"R": 0.5, "scope": "crop"}), ("dart", {"R": 0.25, "image_pivots": 1, "text_pivots": 2}),
    ("dart", {"K": 0.5, "image_pivots": 0}),
    ("visionzip", {"keep": 0.5, "scope": "crop"}), ("prumerge", {"keep": 4}), ("prumerge_plus", {"keep": 0.5}),
    ("visionzip", {"keep": 0.5, "merge_on": "output"}), ("prumerge_plus", {"merge_on": "output", "attention": "heads"}),
    ("tome", {"keep": 0.25, "proportional": False}),
]


def ids(variant):
    name, params = variant
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def schedule_of(name, **params):
    return get_method(name).schedule(**{**SHALLOW[name], **params})


def generate(model, inputs, schedule, mode="remove"):
    """Greedy generation of 3 tokens; per-step logits and the prompt's pruning record."""
    with torch.no_grad(), PruningEngine(model, schedule, mode=mode) as engine:
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return torch.stack(out.logits, dim=1), engine.records[-1]


def test_every_registered_method_is_tested():
    assert set(SHALLOW) == set(METHODS)


def runs_on(family, variant):
    """Qwen's merger is not per token and its tower is windowed: merges on the projector's input and ToMe's
    inside the tower are refused there (the refusals are in test_merging and test_tome)."""
    name, params = variant
    schedule = schedule_of(name, **params)
    on_input = any(stage.merges_on == "projector_input" for stage in schedule.stages)
    return not ((on_input or schedule.changes_vision_tower) and family.startswith("qwen"))


@pytest.mark.parametrize("family, variant", [pytest.param(family, variant, id=f"{ids(variant)}-{family}")
                                             for variant in VARIANTS for family in FAMILIES
                                             if runs_on(family, variant)])
def test_method_runs_batched_and_matches_single_samples(models, family, variant):
    """Kept sets are nested, sorted and in range; a batch gives each sample's own kept sets and logits;
    removal equals masking (when the method keeps image order)."""
    name, params = variant
    model = models[(family, "sdpa")]
    schedule = schedule_of(name, **params)
    inputs = batch_inputs(model, family)
    logits, record = generate(model, inputs, schedule)
    assert len(record.stages) == len(schedule.stages)
    for b, n in enumerate(record.num_visual):
        previous = torch.arange(n)
        for stage in record.stages:
            kept = stage.kept[b]
            assert torch.equal(kept, torch.sort(kept).values) and kept.unique().numel() == kept.numel()
            assert torch.isin(kept, previous).all()
            previous = kept
    for b in range(2):
        single_logits, single = generate(model, sample_inputs(inputs, b), schedule)
        for stage_b, stage_1 in zip(record.stages, single.stages):
            assert torch.equal(stage_b.kept[b], stage_1.kept[0])
        torch.testing.assert_close(logits[b:b + 1], single_logits, atol=2e-5, rtol=1e-4)
    if all(stage.order == "image" for stage in schedule.stages):
        masked, mask_record = generate(model, inputs, schedule, mode="mask")
        torch.testing.assert_close(logits, masked, atol=2e-5, rtol=1e-4)
        assert all(torch.equal(a, b) for s, t in zip(record.stages, mask_record.stages) for a, b in zip(s.kept, t.kept))


def run(model, inputs, schedule, **options):
    with torch.no_grad(), PruningEngine(model, schedule, **options) as engine:
        logits = model(**inputs).logits
    return logits, engine.records[-1]


def test_uniform_keeps_the_stride_grid(models):
    model = models[("llava", "sdpa")]
    _, record = run(model, batch_inputs(model, "llava"), schedule_of("uniform"))
    assert [k.tolist() for k in record.stages[0].kept] == [[0, 2, 8, 10]] * 2  # rows/cols {0, 2} of 4×4


def test_feather_stages(models):
    """Stage 1 holds the stride-3 grid plus φ-R's top 30%; stage 2 keeps 9% of the survivors (at least 1)."""
    model = models[("llava_next", "sdpa")]
    _, record = run(model, batch_inputs(model, "llava_next"), schedule_of("feather"))
    for b, grid in enumerate(record.layout.samples):
        first, second = record.stages[0].kept[b], record.stages[1].kept[b]
        on_grid = ((grid.row % 3 == 0) & (grid.col % 3 == 0) & grid.is_patch).nonzero().flatten()
        assert torch.isin(on_grid, first).all()
        assert first.numel() >= int(0.3 * record.num_visual[b]) and first.numel() > on_grid.numel()
        assert second.numel() == max(1, int(0.09 * first.numel() + 1e-9))


def test_before_llm_applies_the_in_llm_kept_set_before_the_llm(models):
    """The kept set equals FastV's at the same K and R; the output equals removing that set up front."""
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    moved, record = run(model, inputs, schedule_of("before_llm", K=3, R=0.5))
    _, in_llm = run(model, inputs, schedule_of("fastv", K=3, R=0.5))
    kept = record.stages[0].kept
    assert all(torch.equal(a, b) for a, b in zip(kept, in_llm.stages[0].kept))
    assert record.stages[0].layer == 0
    fixed = Schedule((Stage(0, FixedScorer(tuple(tuple(k.tolist()) for k in kept)), len(kept[0])),))
    direct, _ = run(model, inputs, fixed)
    torch.testing.assert_close(moved[:, -1], direct[:, -1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_equals_the_prompt_without_image_tokens(models, family):
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    logits, record = run(model, inputs, schedule_of("text_only"))
    assert all(k.numel() == 0 for k in record.stages[0].kept)
    image_token = model.config.image_token_id
    for b in range(2):
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
        text = ids[ids != image_token][None]
        with torch.no_grad():
            alone = model(input_ids=text).logits
        torch.testing.assert_close(logits[b, -1], alone[0, -1], atol=1e-5, rtol=1e-5)


def test_fopru_without_reordering_feeds_tokens_by_significance(models):
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    ordered, rec_ordered = run(model, inputs, schedule_of("fopru", R=0.5))
    shuffled, rec_shuffled = run(model, inputs, schedule_of("fopru", R=0.5, reorder=False))
    assert all(torch.equal(a, b) for a, b in zip(rec_ordered.stages[0].kept, rec_shuffled.stages[0].kept))
    assert rec_ordered.stages[0].sequence is None
    for kept, sequence in zip(rec_shuffled.stages[0].kept, rec_shuffled.stages[0].sequence):
        assert torch.equal(torch.sort(sequence).values, kept) and not torch.equal(sequence, kept)
    assert not torch.allclose(ordered[:, -1], shuffled[:, -1], atol=1e-4)  # the order reaches the model


def test_fopru_row_keeps_whole_rows(models):
    model = models[("llava", "sdpa")]
    _, record = run(model, batch_inputs(model, "llava"), schedule_of("fopru", R=0.5, strategy="row"))
    for b, grid in enumerate(record.layout.samples):
        rows = grid.row[record.stages[0].kept[b]]
        assert rows.unique().numel() == 2 and all(int((rows == r).sum()) == 4 for r in rows.unique())


def test_rows_and_quartile_ablations_keep_their_positions(models):
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    _, bottom = run(model, inputs, schedule_of("rows", part="bottom", R=0.5))
    assert bottom.stages[0].kept[0].tolist() == list(range(8, 16))
    _, third = run(model, inputs, schedule_of("quartile", q=3))
    assert third.stages[0].kept[1].tolist() == [8, 9, 10, 11]
    _, region = run(model, inputs, schedule_of("region", region="top-right"))
    assert region.stages[0].kept[0].tolist() == [2, 3, 6, 7]


def test_crop_scope_splits_the_budget_over_crops(models):
    """LLaVA-NeXT: with scope=crop each encoder crop (base image, each high-res tile; a row's newline goes
    with the tile before it) keeps half of its own tokens; globally the split differs."""
    model = models[("llava_next", "sdpa")]
    inputs = batch_inputs(model, "llava_next")
    _, per_crop = run(model, inputs, schedule_of("fastv", R=0.5, scope="crop"))
    _, overall = run(model, inputs, schedule_of("fastv", R=0.5))
    differs = False
    for b, grid in enumerate(per_crop.layout.samples):
        groups = crop_groups(grid, 16)
        assert len(groups) == int((grid.patch[grid.is_patch] // 16).unique().numel()) > 1
        for group in groups:
            in_group = group[per_crop.stages[0].kept[b]].sum()
            assert int(in_group) == max(1, int(group.sum()) // 2)
            differs |= int(group[overall.stages[0].kept[b]].sum()) != int(in_group)
    assert differs


@pytest.mark.parametrize("make, message", [
    (lambda: get_method("fastv").schedule(R=1.0), r"R=1.0 is outside the allowed range \[0.0, 1.0\)"),
    (lambda: get_method("fastv").schedule(R=-0.1), "R=-0.1"),
    (lambda: get_method("uniform").schedule(stride=0), "stride=0"),
    (lambda: get_method("vispruner").schedule(r=1.5), r"r=1.5 is outside the allowed range \[0.0, 1.0\]"),
    (lambda: get_method("fastv").schedule(K=32).resolve(32), "layer=32 is outside this 32-layer model"),
    (lambda: get_method("feather").schedule(K1=16, K2=8).resolve(32), "strictly increasing"),
    (lambda: get_method("fopru").schedule(strategy="column"), "strategy='column'.*'rank', 'row'"),
    (lambda: get_method("fastv").schedule(scope="tile"), "scope='tile'.*'global', 'crop'"),
    (lambda: get_method("fastv").schedule(ratio=0.5), "fastv parameter='ratio'"),
    (lambda: get_method("quartile").schedule(q=5), "q=5"),
    (lambda: get_method("before_llm").schedule(criterion="cls"), "criterion='cls'"),
    (lambda: get_method("vispruner").schedule(diverse_order="raster"), "diverse_order='raster'.*'attention', 'image'"),
    (lambda: get_method("vispruner").schedule(diverse_order=1), "diverse_order=1: must be a string"),
    (lambda: get_method("knn").schedule(delta="cubed"), "delta='cubed'.*'squared', 'plain'"),
    (lambda: get_method("divprune").schedule(R=1.0), r"R=1.0 is outside the allowed range \[0.0, 1.0\)"),
    (lambda: get_method("dart").schedule(K=0), "K=0: dart reads layer K-1's keys"),
    (lambda: get_method("dart").schedule(image_pivots=-1), "image_pivots=-1: must be an integer >= 0"),
    (lambda: get_method("dart").schedule(text_pivots=1.5), "text_pivots=1.5: must be an integer >= 0"),
    (lambda: get_method("dart").schedule(image_pivots=0, text_pivots=0), "at least one pivot"),
    (lambda: get_method("dart").schedule(pivots=8), "dart parameter='pivots'"),
])
def test_bad_method_parameters_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_paper_layer_on_a_shallow_model_says_how_to_scale_it(models):
    with pytest.raises(ValueError, match="8/32 of depth is 0.25"):
        PruningEngine(models[("llava", "sdpa")], get_method("feather").schedule())


@pytest.mark.parametrize("name", METHODS)
def test_flops_command_accepts_every_method(name, capsys):
    assert main(["flops", "--model", "llava-1.5-7b", "--method", name]) == 0
    assert "reduction" in capsys.readouterr().out


def test_methods_command_lists_every_method_with_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, method in METHODS.items():
        assert f"{name}(" in out
        for key, value in method.parameters.items():
            assert f"{key}={value}" in out


def test_feather_flops_match_the_paper():
    """FEATHER Table 1 / §4.2 FLOPs reductions (eq. 1, visual tokens only, SigLIP 27×27 on Llama-2-7B)."""
    from analysis_lib.flops import PRESETS, schedule_flops
    from analysis_lib.pruning.nominal import nominal_kept
    preset = PRESETS["feather-siglip-llama2-7b"]
    expected = {("uniform", 3): 0.66, ("uniform", 8): 0.55, ("knn", 8): 0.55,
                ("fastv_norope_uniform", 3): 0.61, ("fastv_norope_uniform", 8): 0.50}
    for (name, K), reduction in expected.items():
        stages = nominal_kept(get_method(name).schedule(K=K), 32, preset.grid)
        assert schedule_flops(preset.dims, 729, 0, stages).reduction == pytest.approx(reduction, abs=0.01)
    stages = nominal_kept(get_method("feather").schedule(), 32, preset.grid)
    assert [k for _, k in stages] == [pytest.approx(275, abs=2), 24]
    assert schedule_flops(preset.dims, 729, 0, stages).reduction == pytest.approx(0.64, abs=0.005)
