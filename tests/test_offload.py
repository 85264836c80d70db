"""Pruning on a model dispatched by accelerate (load_vlm(device_map=...)): some decoder and vision layers
offloaded to disk run behind the same AlignDevicesHook a multi-GPU split installs, weights on the meta
device until each layer runs. The engine's invariants hold there as on a plain model."""
from dataclasses import replace

import pandas as pd
import pytest
import torch

from analysis_lib.loading import load_vlm
from analysis_lib.pruning import PruningEngine
from analysis_lib.tiny import TinySpec, tiny_vlm
from test_engine import FASTV, THREE_STAGES, run
from tiny_setup import batch_inputs

DISK = ("model.vision_tower.encoder.layers.1", "model.language_model.layers.1",
        "model.language_model.layers.2", "model.language_model.layers.4")


def offload_map(model: torch.nn.Module, disk: tuple[str, ...]) -> dict[str, str]:
    """Every module on "cpu" except those named in ``disk``, at the coarsest level that separates them."""
    def place(prefix: str, module: torch.nn.Module) -> dict[str, str]:
        if prefix in disk:
            return {prefix: "disk"}
        if not any(d.startswith(prefix + ".") for d in disk):
            return {prefix: "cpu"}
        placed = {}
        for name, child in module.named_children():
            placed.update(place(f"{prefix}.{name}", child))
        return placed
    return {k: v for name, child in model.named_children() for k, v in place(name, child).items()}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(plain tiny LLaVA, the same weights loaded with four layers offloaded to disk)."""
    plain = tiny_vlm("llava", TinySpec(text_layers=6))
    folder = tmp_path_factory.mktemp("tiny-llava")
    plain.save_pretrained(folder)
    offloaded, _, _ = load_vlm(folder, load_processor=False, device_map=offload_map(plain, DISK),
                               offload_folder=folder / "offload")
    return plain, offloaded


def test_the_layers_really_are_offloaded_behind_dispatch_hooks(pair):
    _, offloaded = pair
    from accelerate.hooks import AlignDevicesHook
    assert {offloaded.hf_device_map[name] for name in DISK} == {"disk"}
    for name in DISK:
        layer = offloaded.get_submodule(name)
        assert any(p.device.type == "meta" for p in layer.parameters()), f"{name} holds its weights on disk"
        assert isinstance(layer._hf_hook, AlignDevicesHook)


def test_keeping_everything_gives_the_plain_logits(pair):
    plain, offloaded = pair
    inputs = batch_inputs(plain, "llava")
    with torch.no_grad():
        reference = plain(**inputs).logits
    keep_all = replace(THREE_STAGES, stages=tuple(replace(stage, keep=1.0) for stage in THREE_STAGES.stages))
    logits, record = run(offloaded, inputs, keep_all, mode="remove")
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], reference[valid], atol=1e-5, rtol=1e-5)
    assert [len(k) for k in record.stages[-1].kept] == record.num_visual


@pytest.mark.parametrize("schedule", [FASTV, THREE_STAGES], ids=lambda s: s.name)
def test_removal_equals_masking_and_the_plain_model(pair, schedule):
    plain, offloaded = pair
    inputs = batch_inputs(plain, "llava")
    removed, rec_r = run(offloaded, inputs, schedule, mode="remove")
    masked, rec_m = run(offloaded, inputs, schedule, mode="mask")
    reference, rec_p = run(plain, inputs, schedule, mode="remove")
    torch.testing.assert_close(removed[:, -1], masked[:, -1], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(removed[:, -1], reference[:, -1], atol=2e-6, rtol=1e-5)
    for record in (rec_m, rec_p):
        assert all(torch.equal(a, b) for s, t in zip(rec_r.stages, record.stages) for a, b in zip(s.kept, t.kept))


def test_generation_with_cache_equals_without(pair):
    plain, offloaded = pair
    inputs = {k: v for k, v in batch_inputs(plain, "llava").items() if k != "position_ids"}

    def generate(model, cache=True):
        with torch.no_grad(), PruningEngine(model, THREE_STAGES, mode="remove"):
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=cache, pad_token_id=0,
                                 return_dict_in_generate=True, output_scores=True)
        return out.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(out.scores, dim=1)

    cached, scores = generate(offloaded)
    for tokens, other in (generate(offloaded, cache=False), generate(plain)):
        assert torch.equal(cached, tokens)
        torch.testing.assert_close(scores, other, atol=2e-5, rtol=1e-4)


def test_a_bad_device_map_names_the_allowed_values(pair, tmp_path):
    with pytest.raises(ValueError, match="device_map='everywhere' is not supported; allowed values: 'auto'"):
        load_vlm(tmp_path, device_map="everywhere")


def test_the_runner_on_an_offloaded_checkpoint_writes_the_rows_of_a_plain_one(model, checkpoint, tmp_path):
    from analysis_lib.evaluation.runner import VARYING_COLUMNS, run_grid
    device_map = offload_map(model.model, ("model.language_model.layers.0", "model.vision_tower.encoder.layers.0"))
    grid = dict(methods=["none", "fastv:K=1,R=0.5"], datasets=["synthetic"], batch_size=2, limit=4, progress=False)
    offloaded = run_grid([str(checkpoint)], out=tmp_path / "offloaded", device_map=device_map, **grid)
    plain = run_grid([str(checkpoint)], out=tmp_path / "plain", **grid)
    assert set(offloaded.device) == {"cpu+disk"} and set(plain.device) == {"cpu"}
    stable = [c for c in plain.columns if c not in (*VARYING_COLUMNS, "device")]
    pd.testing.assert_frame_equal(offloaded[stable], plain[stable])
    assert offloaded[offloaded.method != "none"].kept.map(len).gt(2).all(), "the pruned rows record kept tokens"
