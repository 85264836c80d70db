"""Ground-truth relevant tokens on real localization samples: boxes mapped through what the processor does."""
from dataclasses import astuple
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, LlavaImageProcessor

from analysis_lib.evaluation.datasets import EvalSample
from analysis_lib.evaluation.relevance import IMAGE, Frame, clip_frame, image_frame, relevant_kept, relevant_tokens

G = 24  # LLaVA-1.5-7B: 336 px / 14 px patches


def grid(rows: int, cols: int, newline: bool = False) -> SimpleNamespace:
    """Token centres of a rows x cols grid in reading order (LLaVA / Qwen layouts); ``newline``: one
    LLaVA-NeXT row-end token per row, one column past the grid."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols + newline), indexing="ij")
    r, c = r.flatten(), c.flatten()
    patch = torch.where(c < cols, torch.arange(r.numel()), -1)
    return SimpleNamespace(y=(r.float() + 0.5) / rows, x=(c.float() + 0.5) / cols, is_patch=patch >= 0)


def sample(box, dataset="refcoco", task="localization", size=(672, 336), relevance=None) -> EvalSample:
    return EvalSample("s", Image.new("RGB", size), "the dog", ["[0, 0, 1, 1]"], task, dataset, box=box,
                      relevance=relevance)


LLAVA_HF = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})  # llava-hf's 1.5 config


def test_center_crop_frame_of_a_wide_image():
    # 672x336: resize keeps 672x336, the crop keeps x in [168, 504): image x = t/2 + 1/4
    assert clip_frame(672, 336, CLIPImageProcessor(**LLAVA_HF)) == Frame(0.5, 0.25, 1.0, 0.0)
    # 300x600: resized to 336x672, crop top 168: image y = t/2 + 1/4
    assert astuple(clip_frame(300, 600, CLIPImageProcessor(**LLAVA_HF))) == pytest.approx((1.0, 0.0, 0.5, 0.25))
    # 500x333: resized to 504x336 (int(336 * 500 / 333)), crop left (504 - 336) // 2 = 84
    frame = clip_frame(500, 333, CLIPImageProcessor(**LLAVA_HF))
    assert (frame.scale_x, frame.offset_x) == pytest.approx((336 / 504, 84 / 504))
    assert (frame.scale_y, frame.offset_y) == pytest.approx((1.0, 0.0))


def test_pad_to_square_frame_of_a_wide_image():
    # 672x336 padded to 672x672 (168 rows above), resized to 336: image y = 2t - 1/2
    assert clip_frame(672, 336, LlavaImageProcessor(do_pad=True, **LLAVA_HF)) == Frame(1.0, 0.0, 2.0, -0.5)
    assert clip_frame(336, 336, LlavaImageProcessor(do_pad=True, **LLAVA_HF)) == IMAGE


def test_box_on_the_center_cropped_grid_counts_hand_computed_tokens():
    frame = clip_frame(672, 336, CLIPImageProcessor(**LLAVA_HF))
    # the left half of what survives the crop: image x in [0.25, 0.5) = grid columns 0..11, all 24 rows
    relevant = relevant_tokens(sample((0.25, 0.0, 0.5, 1.0)), grid(G, G), frame).view(G, G)
    assert relevant[:, :12].all() and not relevant[:, 12:].any()
    # a box in the cropped-away left quarter has no token
    assert not relevant_tokens(sample((0.0, 0.0, 0.2, 1.0)), grid(G, G), frame).any()


def test_padding_tokens_are_never_relevant():
    frame = clip_frame(672, 336, LlavaImageProcessor(do_pad=True, **LLAVA_HF))
    relevant = relevant_tokens(sample((0.0, 0.0, 1.0, 1.0)), grid(G, G), frame).view(G, G)
    # image rows are grid rows whose centre maps into [0, 1): (r + 0.5) / 24 in [0.25, 0.75) -> rows 6..17
    assert relevant[6:18].all() and not relevant[:6].any() and not relevant[18:].any()


def _bright_cells(pixel_values: np.ndarray, patch: int) -> np.ndarray:
    """Whether each patch's centre pixel is bright in a processed (C, H, W) image."""
    centre = pixel_values[0, patch // 2::patch, patch // 2::patch]
    return centre > 0.5


@pytest.mark.parametrize("processor", [CLIPImageProcessor(**LLAVA_HF), LlavaImageProcessor(do_pad=True, **LLAVA_HF)],
                         ids=["center-crop", "pad-to-square"])
@pytest.mark.parametrize("size", [(672, 336), (300, 600), (500, 333)])
def test_frame_follows_what_the_processor_does_to_the_pixels(processor, size):
    """A bright box drawn on the image lands, after the real processor, on exactly the tokens ``relevant_tokens``
    marks (every token centre falls clear of the box's edges)."""
    width, height = size
    box = (0.3, 0.2, 0.62, 0.71)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[round(box[1] * height):round(box[3] * height), round(box[0] * width):round(box[2] * width)] = 255
    out = processor(images=Image.fromarray(pixels), do_rescale=True, do_normalize=False, return_tensors="np")
    expected = _bright_cells(out["pixel_values"][0], 14)
    frame = clip_frame(width, height, processor)
    got = relevant_tokens(sample(box, size=size), grid(G, G), frame).view(G, G).numpy()
    assert expected.any() and (got == expected).all()


def test_stretching_families_keep_the_image_frame():
    for family in ("llava_next", "qwen2_5_vl", "qwen3_vl"):
        assert image_frame(family, None, 672, 336) == IMAGE
    assert image_frame("llava", CLIPImageProcessor(**LLAVA_HF), 672, 336) == Frame(0.5, 0.25, 1.0, 0.0)


def test_qwen_merged_grid_and_next_newlines():
    # Qwen2.5-VL: a 448x224 image -> 16 x 8 merged 28-px cells; box = left quarter, top half -> 4 x 4 cells
    relevant = relevant_tokens(sample((0.0, 0.0, 0.25, 0.5), size=(448, 224)), grid(8, 16), IMAGE).view(8, 16)
    assert relevant[:4, :4].all() and int(relevant.sum()) == 16
    # LLaVA-NeXT's unpadded high-res grid: row-end newline tokens are never relevant, even under a full box
    relevant = relevant_tokens(sample((0.0, 0.0, 1.0, 1.0)), grid(3, 5, newline=True), IMAGE).view(3, 6)
    assert relevant[:, :5].all() and not relevant[:, 5].any()


def test_relevant_kept_is_the_fraction_of_box_tokens_kept():
    s, g = sample((0.0, 0.0, 0.5, 0.5), size=(4, 4)), grid(4, 4)  # relevant: tokens 0, 1, 4, 5
    assert relevant_kept(s, g, torch.tensor([0, 1, 2, 3])) == 0.5
    assert relevant_kept(s, g, torch.tensor([5])) == 0.25
    assert relevant_kept(s, g, torch.arange(16)) == 1.0


def test_only_localization_samples_and_masks_have_relevant_tokens():
    g = grid(4, 4)
    assert relevant_tokens(sample((0.0, 0.0, 0.5, 0.5), dataset="pope", task="yes_no"), g, IMAGE) is None
    assert relevant_tokens(sample(None), g, IMAGE) is None
    assert relevant_kept(sample((0.0, 0.0, 0.05, 0.05)), g, torch.arange(16)) is None  # no centre in the box


def test_the_suite_mask_and_a_box_use_the_same_centre_rule():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 4:8] = True  # cells of the box (0.5, 0.25, 1.0, 0.5)
    g = grid(G, G)
    by_mask = relevant_tokens(sample(None, dataset="synthetic", relevance=mask), g, IMAGE)
    by_box = relevant_tokens(sample((0.5, 0.25, 1.0, 0.5), dataset="synthetic"), g, IMAGE)
    assert by_mask.any() and torch.equal(by_mask, by_box)
