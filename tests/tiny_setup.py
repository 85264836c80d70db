"""Tiny batches for the tests: left-padded pairs of samples, and one sample cut out of a batch."""
from analysis_lib.adapters import adapter_for
from analysis_lib.adapters.calls import padded_position_ids
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
