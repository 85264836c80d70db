"""Adapters: layouts match what the model does, nothing is hard-coded, loading works offline."""
import pytest
import torch

from analysis_lib.adapters import adapter_for
from analysis_lib.loading import load_vlm
from analysis_lib.tiny import TinySpec, tiny_inputs, tiny_vlm
from tiny_setup import FAMILIES, batch_inputs


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_layout_matches_the_model_features(models, family):
    """Each visual token's patch index points at the vision feature the model placed there."""
    model = models[(family, "sdpa")]
    inputs = batch_inputs(model, family)
    adapter = adapter_for(model)
    layout = adapter.inputs_layout(inputs)
    placed, features = {}, {}
    h1 = adapter.language_model.register_forward_pre_hook(
        lambda m, a, kw: placed.update(x=kw["inputs_embeds"]), with_kwargs=True)
    h2 = adapter.projector.register_forward_hook(lambda m, a, out: features.update(x=out))
    with torch.no_grad():
        model(**inputs)
    h1.remove(), h2.remove()
    flat = features["x"].flatten(0, 1)
    for b, grid in enumerate(layout.samples):
        real = grid.patch >= 0
        torch.testing.assert_close(placed["x"][b, grid.positions[real]], flat[grid.patch[real]])
        assert grid.num_tokens == int((inputs["input_ids"][b] == model.config.image_token_id).sum())


@pytest.mark.parametrize("family, tokens_448, tokens_450x300", [("qwen2_5_vl", 256, 16 * 11),
                                                                 ("qwen3_vl", 196, 14 * 9)])
def test_qwen_layout_maps_merged_cells_to_their_image_grid(models, family, tokens_448, tokens_450x300):
    """Each visual token is the merged cell the model placed there (its image's features, in row-major cell
    order), with its row/column on the image's cell grid; two images in one prompt get two segments. A
    448x448 image is 16x16 cells of 28 px (Qwen2.5-VL) or 14x14 of 32 px (Qwen3-VL)."""
    model = models[(family, "sdpa")]
    adapter = adapter_for(model)
    inputs = tiny_inputs(model, [2, 5], [3, 1], FAMILIES[family], seed=2)
    placed = {}
    hook = adapter.language_model.register_forward_pre_hook(
        lambda m, a, kw: placed.update(x=kw["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    hook.remove()
    layout = adapter.inputs_layout(inputs)
    for b, grid in enumerate(layout.samples):
        assert [(s.rows, s.cols) for s in grid.segments] == [[(4, 3)], [(2, 4)]][b]
        torch.testing.assert_close(placed["x"][b, grid.positions], features[b])
        assert grid.row.tolist() == (torch.arange(grid.num_tokens) // grid.segments[0].cols).tolist()
        assert float(grid.y.max()) < 1 and float(grid.x.min()) > 0
    two = dict(inputs)
    ids = inputs["input_ids"][1:]
    two["input_ids"] = torch.cat([inputs["input_ids"][:1, -12 - 5:], ids[:, -13:]], dim=1)  # both images, one prompt
    grid = adapter.layout(two["input_ids"], inputs["image_grid_thw"]).samples[0]
    assert grid.num_tokens == 20 and [(s.rows, s.cols) for s in grid.segments] == [(4, 3), (2, 4)]
    assert grid.image.unique().tolist() == [0, 1] and int(grid.patch[12]) == 12  # second image, first cell
    assert adapter.num_visual_tokens((448, 448)) == tokens_448
    assert adapter.num_visual_tokens((450, 300)) == tokens_450x300


def test_llava_next_layout_has_base_and_unpadded_crops(models):
    model = models[("llava_next", "sdpa")]
    adapter = adapter_for(model)
    wide = tiny_inputs(model, [2], [2], [(32, 64)])  # 4x4 base, 1x2 crops -> 4x8 stitched grid
    grid = adapter.layout(wide["input_ids"], wide["image_sizes"]).samples[0]
    assert [(s.name, s.rows, s.cols) for s in grid.segments] == [("base", 4, 4), ("highres", 4, 8)]
    assert grid.num_tokens == 16 + 4 * (8 + 1)  # one newline token per high-res row
    newline = grid.patch < 0
    assert int(newline.sum()) == 4 and bool((grid.col[newline] == 8).all())
    tall = tiny_inputs(model, [2], [2], [(40, 30)])  # 2x1 crops = 8x4 grid, unpadded to the 4:3 image: 6x4
    grid = adapter.layout(tall["input_ids"], tall["image_sizes"]).samples[0]
    assert (grid.segments[1].rows, grid.segments[1].cols) == (6, 4)
    hi = (grid.segment == 1) & (grid.patch >= 0)
    assert float(grid.y[hi].min()) > 0 and float(grid.y[hi].max()) < 1


def test_no_hard_coded_grid(models):
    """A 48 px / 8 px tower gives 36 tokens on 6x6; the prompt template is the family's."""
    model = tiny_vlm("llava", spec=TinySpec(image_size=48, patch_size=8, text_layers=2))
    inputs = tiny_inputs(model, [5], [3])
    adapter = adapter_for(model)
    grid = adapter.layout(inputs["input_ids"]).samples[0]
    assert grid.num_tokens == 36 and grid.segments[0].rows == 6
    assert grid.positions[0] == 5
    assert adapter.format_prompt("What is red?") == "USER: <image>\nWhat is red? ASSISTANT:"
    assert adapter.vision_feature_encoder_layer == len(adapter.vision_layers) - 2


def test_unknown_model_type_is_a_clear_error():
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="model_type='llama'.*'llava', 'llava_next', 'qwen2_5_vl'"):
        adapter_for(model)


def test_load_local_checkpoint_offline(tmp_path, models):
    model = models[("llava", "sdpa")]
    model.save_pretrained(tmp_path)
    loaded, processor, adapter = load_vlm(tmp_path, load_processor=False, attn_implementation="flash_attention_2")
    assert processor is None and adapter.family == "llava"
    assert loaded.config.text_config._attn_implementation == "sdpa"  # flash-attn is not installed here
    inputs = batch_inputs(model, "llava")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        load_vlm(tmp_path, dtype="fp8")
    with pytest.raises(ValueError, match="is a file"):
        load_vlm(tmp_path / "config.json")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_load_qwen_checkpoint_offline(tmp_path, models, family):
    model = models[(family, "sdpa")]
    model.save_pretrained(tmp_path)
    loaded, _, adapter = load_vlm(tmp_path, load_processor=False)
    assert adapter.family == family and type(loaded) is type(model)
    inputs = batch_inputs(model, family)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
