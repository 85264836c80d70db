"""Tiny batches for the tests: left-padded pairs of samples, and one sample cut out of a batch."""
from analysis_lib.tiny import tiny_inputs
from analysis_lib.adapters.calls import padded_position_ids

FAMILIES = {
    # family -> image sizes (height, width) per sample; None for LLaVA-1.5's fixed square input
    "llava": None,
    "llava_next": [(32, 64), (64, 64)],
}


def batch_inputs(model, family):
    """A left-padded batch of two samples of different lengths, with generate-style position ids."""
    inputs = tiny_inputs(model, [3, 6], [4, 2], FAMILIES[family], seed=1)
    inputs["position_ids"] = padded_position_ids(inputs["attention_mask"])
    return inputs


def sample_inputs(inputs, b):
    """Sample ``b`` of a left-padded batch, unpadded, as a batch of one."""
    length = int(inputs["attention_mask"][b].sum())
    out = {}
    for key, value in inputs.items():
        row = value[b:b + 1]
        out[key] = row[:, -length:] if key in ("input_ids", "attention_mask", "position_ids") else row
    out["position_ids"] = padded_position_ids(out["attention_mask"])
    return out
