"""Tiny batches for the tests: left-padded pairs of samples, one sample cut out of a batch, and generation under
the engine checked for cache = no cache and batch = one by one."""
import torch

from analysis_lib.adapters import adapter_for
from analysis_lib.adapters.calls import padded_position_ids
from analysis_lib.pruning import PruningEngine
from analysis_lib.tiny import tiny_inputs

FAMILIES = {
    # family -> image sizes (height, width) per sample; None for LLaVA-1.5's fixed square input
    "llava": None,
    "llava_next": [(32, 64), (64, 64)],
    # 4x3 and 2x4 merged cells: two windows of 2x2 cells each way, images of different sizes in one batch
    "qwen2_5_vl": [(112, 84), (56, 112)],
    # the same cells at Qwen3-VL's 16 px patches (32 px cells)
    "qwen3_vl": [(128, 96), (64, 128)],
}
PER_TOKEN = ("input_ids", "attention_mask", "position_ids", "mm_token_type_ids")


def batch_inputs(model, family):
    """A left-padded batch of two samples of different lengths; 1-D RoPE families get generate-style position
    ids (Qwen computes its M-RoPE ids itself)."""
    inputs = tiny_inputs(model, [3, 6], [4, 2], FAMILIES[family], seed=1)
    if adapter_for(model).rope_axes == 1:
        inputs["position_ids"] = padded_position_ids(inputs["attention_mask"])
    return inputs


def sample_inputs(inputs, b):
    """Sample ``b`` of a left-padded batch (one image per sample), unpadded, as a batch of one."""
    length = int(inputs["attention_mask"][b].sum())
    out = {}
    for key, value in inputs.items():
        row = value[b:b + 1]
        out[key] = row[:, -length:] if key in PER_TOKEN else row
    if "image_grid_thw" in inputs:  # Qwen: the patches of all images are stacked along one axis
        patches = inputs["image_grid_thw"].prod(-1)
        start = int(patches[:b].sum())
        out["pixel_values"] = inputs["pixel_values"][start:start + int(patches[b])]
    if "position_ids" in inputs:
        out["position_ids"] = padded_position_ids(out["attention_mask"])
    return out


def generate_pruned(model, inputs, schedule, cache=True, new_tokens=4):
    """Greedy new tokens, per-step scores and the prompt's pruning record of one ``generate`` under the engine."""
    with torch.no_grad(), PruningEngine(model, schedule) as engine:
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, use_cache=cache, pad_token_id=0,
                             return_dict_in_generate=True, output_scores=True)
    return out.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(out.scores, dim=1), engine.records[-1]


def assert_cache_and_batch_agree(model, inputs, schedule, new_tokens=4):
    """Generation with the KV cache equals generation without, and each sample of the batch equals its run
    alone (tokens and scores); returns the batch's pruning record and each single run's."""
    tokens, scores, record = generate_pruned(model, inputs, schedule, new_tokens=new_tokens)
    no_cache_tokens, no_cache_scores, _ = generate_pruned(model, inputs, schedule, cache=False, new_tokens=new_tokens)
    assert torch.equal(tokens, no_cache_tokens)
    torch.testing.assert_close(scores, no_cache_scores, atol=2e-5, rtol=1e-4)
    singles = []
    for b in range(tokens.shape[0]):
        single = {k: v for k, v in sample_inputs(inputs, b).items() if k != "position_ids"}
        one_tokens, one_scores, one_record = generate_pruned(model, single, schedule, new_tokens=new_tokens)
        assert torch.equal(tokens[b:b + 1], one_tokens)
        torch.testing.assert_close(scores[b:b + 1], one_scores, atol=2e-5, rtol=1e-4)
        singles.append(one_record)
    return record, singles
