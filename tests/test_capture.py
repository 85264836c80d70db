"""Attention capture: rows rebuilt from q/k equal the eager attention weights; hooks never leak."""
import pytest
import torch

from analysis_lib.attention import TextAttentionSpec
from analysis_lib.capture import capture_attention
from analysis_lib.hooks import hook_count

from tiny_setup import FAMILIES, batch_inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_text_rows_equal_eager_weights(models, family):
    model = models[(family, "eager")]
    inputs = batch_inputs(model, family)
    with torch.no_grad():
        eager = model(**inputs, output_attentions=True).attentions
        with capture_attention(model, layers="all") as cap:
            model(**inputs)
    spec = TextAttentionSpec()
    for layer in range(len(eager)):
        rows = cap.text[(spec.name, layer)]
        for b, grid in enumerate(cap.layout.samples):
            expected = eager[layer][b, :, -1, grid.positions]
            torch.testing.assert_close(rows[b, :, : grid.num_tokens], expected, atol=1e-6, rtol=1e-5)
            assert torch.isnan(rows[b, :, grid.num_tokens:]).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_under_sdpa_matches_eager(models, family):
    """The model runs with SDPA (nothing forced to eager) and gives the same rows and logits."""
    specs = [TextAttentionSpec(q, r, s) for q in ("last", "instruction") for r in ("applied", "removed", "equi")
             for s in ("full", "visual")]
    results = {}
    for impl in ("sdpa", "eager"):
        model = models[(family, impl)]
        inputs = batch_inputs(model, family)
        with torch.no_grad(), capture_attention(model, layers=[0, 3], specs=specs) as cap:
            logits = model(**inputs).logits
        results[impl] = (cap.text, logits[inputs["attention_mask"].bool()])  # padding rows differ by backend
    assert models[(family, "sdpa")].config.text_config._attn_implementation == "sdpa"
    torch.testing.assert_close(results["sdpa"][1], results["eager"][1], atol=1e-5, rtol=1e-4)
    for key, rows in results["eager"][0].items():
        torch.testing.assert_close(results["sdpa"][0][key], rows, atol=1e-6, rtol=1e-5, equal_nan=True)


def test_row_options_behave_as_defined(models):
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    specs = {name: TextAttentionSpec(**kw) for name, kw in {
        "full": {}, "visual": {"softmax": "visual"}, "norope": {"rope": "removed"},
        "instr": {"query": "instruction"}, "equi": {"rope": "equi", "softmax": "visual"},
        "norope_visual": {"rope": "removed", "softmax": "visual"}}.items()}
    with torch.no_grad(), capture_attention(model, layers=[2], specs=list(specs.values())) as cap:
        model(**inputs)
    row = {k: cap.text[(s.name, 2)] for k, s in specs.items()}
    n = cap.layout.samples[0].num_tokens
    # visual-only softmax sums to one over the visual tokens; the full row sums to less (text takes some)
    torch.testing.assert_close(row["visual"][..., :n].sum(-1), torch.ones(2, 4))
    assert (row["full"][..., :n].sum(-1) < 1).all()
    # the visual-only softmax is the full row renormalised over visual keys
    full = row["full"][..., :n]
    torch.testing.assert_close(full / full.sum(-1, keepdim=True), row["visual"][..., :n])
    # removing RoPE and the instruction-mean query change the rows
    assert not torch.allclose(row["norope"], row["full"], equal_nan=True)
    assert not torch.allclose(row["instr"], row["full"], equal_nan=True)
    # shared-position rows are their own criterion (their position-freeness is pinned by the next test)
    assert not torch.allclose(row["equi"], row["visual"], equal_nan=True)


def test_equi_rows_ignore_visual_token_order(models):
    """Equi-position attention is position-free among visual tokens: permuting the image's patches
    permutes the rows the same way (RoPE as applied does not have this property)."""
    model = models[("llava", "sdpa")]
    inputs = batch_inputs(model, "llava")
    spec_equi = TextAttentionSpec(rope="equi", softmax="visual")
    spec_applied = TextAttentionSpec(softmax="visual")
    captured = []
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    hook_features = model.model.multi_modal_projector.register_forward_hook(
        lambda m, a, out: out[:, perm] if captured else out)
    try:
        for _ in range(2):
            with torch.no_grad(), capture_attention(model, layers=[0], specs=[spec_equi, spec_applied]) as cap:
                model(**inputs)
            captured.append({s.name: cap.text[(s.name, 0)] for s in (spec_equi, spec_applied)})
    finally:
        hook_features.remove()
    first, permuted = captured
    torch.testing.assert_close(permuted[spec_equi.name], first[spec_equi.name][..., perm], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(permuted[spec_applied.name], first[spec_applied.name][..., perm], atol=1e-6)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_vision_rows_equal_eager_weights(models, family):
    model = models[(family, "eager")]
    inputs = batch_inputs(model, family)
    with torch.no_grad(), capture_attention(model, layers=None, vision_layers="all", vision_maps=True) as cap:
        model(**inputs)
    pixel = inputs["pixel_values"]
    with torch.no_grad():
        if family == "llava_next":
            from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches
            cfg = model.config
            crops = [image_size_to_num_patches(s.tolist(), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
                     for s in inputs["image_sizes"]]
            pixel = torch.cat([p[:c] for p, c in zip(pixel, crops)])
        eager = model.model.vision_tower(pixel, output_attentions=True).attentions
    for layer, attn in enumerate(eager):
        torch.testing.assert_close(cap.vision[layer].cls, attn[:, :, 0, 1:], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cap.vision[layer].received, attn[:, :, 1:, 1:].mean(2), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cap.vision[layer].given, attn[:, :, 1:, 1:].mean(3), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cap.vision[layer].map, attn.mean(1), atol=1e-6, rtol=1e-5)
    per_token = cap.vision_per_token(cap.feature_layer)
    grid = cap.layout.samples[0]
    flat_cls = eager[cap.feature_layer][:, :, 0, 1:].mean(1).flatten()
    real = grid.patch >= 0
    torch.testing.assert_close(per_token[0][real], flat_cls[grid.patch[real]], atol=1e-6, rtol=1e-5)
    assert torch.isnan(per_token[0][~real]).all()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_vision_rows_equal_the_towers_own_attention(models, family):
    """Qwen's tower returns no attention weights: an attention function registered with transformers records
    the probabilities of every window the tower computes; put back in patch order (Qwen2.5-VL: the tower's
    own window index; Qwen3-VL attends over whole images in patch order), their per-cell means are the
    captured rows. No [CLS]: VisPruner's substitute is "received"."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.vision_utils import get_vision_window_index
    model = models[(family, "eager")]
    inputs = batch_inputs(model, family)
    recorded = []

    def recording(module, q, k, v, attention_mask, scaling=None, **kwargs):
        recorded.append(torch.softmax(q.float() @ k.float().transpose(-1, -2) * scaling, dim=-1)[0])
        return sdpa_attention_forward(module, q, k, v, attention_mask, scaling=scaling, **kwargs)

    AttentionInterface.register("recording", recording)
    vision = model.config.vision_config
    vision._attn_implementation = "recording"
    try:
        with torch.no_grad(), capture_attention(model, layers=None, vision_layers="all") as cap:
            model(**inputs)
    finally:
        vision._attn_implementation = "eager"
    grid = inputs["image_grid_thw"]
    sizes = grid.prod(-1).tolist()
    windowed = family == "qwen2_5_vl"
    if windowed:
        window, windows = get_vision_window_index(grid, 2, vision.window_size, vision.patch_size)
        order = (window[:, None] * 4 + torch.arange(4)).flatten()
    else:
        order = torch.arange(sum(sizes))
    chunks = iter(recorded)
    for layer in range(vision.depth):
        full, start, count = torch.zeros(vision.num_heads, sum(sizes), sum(sizes)), 0, 0
        while start < sum(sizes):  # a layer's chunks cover the whole patch sequence once
            chunk = next(chunks)
            idx = order[start:start + chunk.shape[-1]]
            full[:, idx[:, None], idx[None, :]] = chunk
            start, count = start + chunk.shape[-1], count + 1
        full_attention = not windowed or layer in vision.fullatt_block_indexes
        assert count == (len(sizes) if full_attention else len(windows) - 1)
        offset = 0
        for image, n in enumerate(sizes):
            block = full[:, offset:offset + n, offset:offset + n]
            offset += n
            torch.testing.assert_close(block.sum(-1), torch.ones(block.shape[:2]))  # windows within the image
            received = block.mean(dim=1).unflatten(-1, (-1, 4)).mean(-1)
            given = block.mean(dim=2).unflatten(-1, (-1, 4)).mean(-1)
            rows = cap.vision[layer]
            torch.testing.assert_close(rows.received[image, :, : n // 4], received, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(rows.given[image, :, : n // 4], given, atol=1e-6, rtol=1e-5)
            assert torch.isnan(rows.received[image, :, n // 4:]).all() and rows.cls is None
    assert not windowed or len(windows) - 1 > len(sizes)  # the windowed layers really attend in windows
    with pytest.raises(ValueError, match="kind='cls' is not available"):
        cap.vision_per_token(cap.feature_layer, "cls")


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_removed_after_exit_and_after_error(models, family):
    model = models[(family, "sdpa")]
    before = hook_count(model)
    with capture_attention(model, layers="all", vision_layers="all"):
        assert hook_count(model) > before
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(model, layers="all", vision_layers="all"):
            raise RuntimeError("boom")
    assert hook_count(model) == before
    assert "get_image_features" not in vars(model.model)


def test_capture_bad_input(models):
    model = models[("llava", "sdpa")]
    with pytest.raises(ValueError, match=r"layers=\[99\].*allowed: 0\.\.5"):
        with capture_attention(model, layers=[99]):
            pass
    with pytest.raises(ValueError, match="rope='none'.*'applied', 'removed', 'equi'"):
        TextAttentionSpec(rope="none")
    inputs = batch_inputs(model, "llava")
    inputs["input_ids"] = torch.where(inputs["input_ids"] == model.config.image_token_id, 5, inputs["input_ids"])
    inputs.pop("pixel_values")
    with pytest.raises(ValueError, match="contain no image token"):
        with capture_attention(model):
            model(**inputs)
