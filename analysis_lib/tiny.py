"""Tiny random-weight VLMs built from configs, offline, and inputs for them.

Real transformers classes with small shapes: what the tests, the benchmark and the CPU default of
``make reproduce`` run on when no checkpoint is around. Nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from .adapters import adapter_for
from .validation import check_choice

IMAGE_TOKEN_ID = 3
PAD_TOKEN_ID = 0
#: Qwen's vision start / end and video tokens; random text tokens are drawn above them
VISION_START_ID, VISION_END_ID, VIDEO_TOKEN_ID = 4, 5, 6
FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "qwen3_vl")
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl")


@dataclass(frozen=True)
class TinySpec:
    """Shapes of a tiny LLaVA-family model."""

    text_layers: int = 4
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 128
    vision_layers: int = 3
    vision_hidden: int = 32
    vision_heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    rope_theta: float = 10000.0


def _configs(spec: TinySpec, attn_implementation: str):
    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                              image_size=spec.image_size, patch_size=spec.patch_size)
    text = LlamaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                       num_hidden_layers=spec.text_layers, num_attention_heads=spec.heads,
                       num_key_value_heads=spec.kv_heads, max_position_embeddings=4096,
                       rope_theta=spec.rope_theta, pad_token_id=PAD_TOKEN_ID, bos_token_id=1, eos_token_id=2)
    vision._attn_implementation = attn_implementation
    text._attn_implementation = attn_implementation
    return vision, text


def _qwen_config(family: str, spec: TinySpec) -> Qwen2_5_VLConfig | Qwen3VLConfig:
    """Qwen2.5-VL shapes: patch 14, 2×2 merge, windows of 2×2 cells, full attention in the last block.
    Qwen3-VL: patch 16, 2×2 merge, DeepStack from every vision block (added after the first as many decoder
    layers), interleaved M-RoPE."""
    head_dim = spec.hidden // spec.heads
    section = [head_dim // 8, 3 * head_dim // 16, head_dim // 2 - head_dim // 8 - 3 * head_dim // 16]
    text = dict(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                num_hidden_layers=spec.text_layers, num_attention_heads=spec.heads,
                num_key_value_heads=spec.kv_heads, max_position_embeddings=4096, pad_token_id=PAD_TOKEN_ID,
                bos_token_id=1, eos_token_id=2)
    vision = dict(depth=spec.vision_layers, hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
                  num_heads=spec.vision_heads, out_hidden_size=spec.hidden, spatial_merge_size=2,
                  temporal_patch_size=2)
    tokens = dict(image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID, vision_start_token_id=VISION_START_ID,
                  vision_end_token_id=VISION_END_ID)
    if family == "qwen3_vl":
        text.update(head_dim=head_dim, rope_parameters={"rope_type": "default", "mrope_section": section,
                                                        "mrope_interleaved": True, "rope_theta": spec.rope_theta})
        vision.update(patch_size=16, num_position_embeddings=16,
                      deepstack_visual_indexes=list(range(spec.vision_layers)))
        return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    text["rope_scaling"] = {"type": "mrope", "mrope_section": section, "rope_theta": spec.rope_theta}
    vision.update(patch_size=14, window_size=4 * 14, fullatt_block_indexes=[spec.vision_layers - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, bos_token_id=1, eos_token_id=2,
                            pad_token_id=PAD_TOKEN_ID, **tokens)


def tiny_vlm(family: str = "llava", spec: TinySpec = TinySpec(), seed: int = 0,
             attn_implementation: str = "sdpa") -> torch.nn.Module:
    """A random-weight LLaVA-1.5 ("llava"), LLaVA-NeXT ("llava_next"), Qwen2.5-VL ("qwen2_5_vl") or Qwen3-VL
    ("qwen3_vl") model in eval mode."""
    check_choice("family", family, FAMILIES)
    check_choice("attn_implementation", attn_implementation, ("sdpa", "eager"))
    if family in QWEN_FAMILIES:
        config = _qwen_config(family, spec)
        for sub in (config, config.text_config, config.vision_config):
            sub._attn_implementation = attn_implementation
        torch.manual_seed(seed)
        model_class = Qwen3VLForConditionalGeneration if family == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
        return model_class(config).eval()
    vision, text = _configs(spec, attn_implementation)
    grid = spec.image_size // spec.patch_size
    common = dict(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
                  vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    if family == "llava":
        config = LlavaConfig(image_seq_length=grid * grid, **common)
        model = LlavaForConditionalGeneration(config)
    else:
        s = spec.image_size
        config = LlavaNextConfig(image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
                                 image_seq_length=grid * grid, **common)
        model = LlavaNextForConditionalGeneration(config)
    model.config._attn_implementation = attn_implementation
    return model.eval()


def tiny_inputs(model: torch.nn.Module, text_before: list[int], text_after: list[int],
                image_sizes: list[tuple[int, int]] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch: random system tokens, one image, random question tokens per sample.

    ``text_before[b]`` / ``text_after[b]`` are the numbers of text tokens before / after sample b's
    image. For LLaVA-NeXT and Qwen, ``image_sizes`` gives each image's (height, width) in pixels (Qwen: of
    the resized image, multiples of patch × merge: 28 for Qwen2.5-VL, 32 for Qwen3-VL).
    """
    adapter = adapter_for(model)
    batch = len(text_before)
    if len(text_after) != batch:
        raise ValueError("text_after: must have one entry per sample, like text_before")
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    qwen = adapter.family in QWEN_FAMILIES
    first_text = VIDEO_TOKEN_ID + 1 if qwen else 4
    if qwen:
        patch = model.config.vision_config.patch_size
        grid = torch.tensor([[1, h // patch, w // patch] for h, w in image_sizes])
    rows = []
    for b in range(batch):
        if qwen:  # sizes are already the resized ones: one token per merged 2×2 cell
            n_img = int(grid[b].prod()) // adapter.merge ** 2
        else:
            n_img = adapter.num_visual_tokens(image_sizes[b] if image_sizes else None)
        before = torch.randint(first_text, vocab, (text_before[b],), generator=gen)
        after = torch.randint(first_text, vocab, (text_after[b],), generator=gen)
        image = torch.full((n_img,), IMAGE_TOKEN_ID)
        if qwen:
            image = torch.cat([torch.tensor([VISION_START_ID]), image, torch.tensor([VISION_END_ID])])
        rows.append(torch.cat([before, image, after]))
    length = max(r.numel() for r in rows)
    input_ids = torch.full((batch, length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, length - r.numel():] = r
        attention_mask[b, length - r.numel():] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if qwen:
        v = model.config.vision_config
        patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
        inputs.update(pixel_values=torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=gen),
                      image_grid_thw=grid, mm_token_type_ids=(input_ids == IMAGE_TOKEN_ID).long())
    elif adapter.family == "llava_next":
        size = model.config.vision_config.image_size
        crops = [adapter._crops(s) for s in image_sizes]
        pixel = torch.randn(batch, max(crops), 3, size, size, generator=gen)
        inputs.update(pixel_values=pixel, image_sizes=torch.tensor(image_sizes))
    else:
        size = model.config.vision_config.image_size
        inputs["pixel_values"] = torch.randn(batch, 3, size, size, generator=gen)
    return inputs
