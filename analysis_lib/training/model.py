"""The embedded default model: a LLaVA-1.5-architecture model from real transformers classes (CLIP
vision tower with [CLS], two-layer MLP projector, Llama decoder with RoPE), its processor, and
saving/loading them together."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from ..scenes import SceneConfig

# CLIP's normalisation constants, as LLaVA-1.5's image processor uses them.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the tower (vision_*) and the language model (text_*). LLaVA reads the tower's
    penultimate layer (vision_feature_layer=-2), so the tower's last layer is never used, as in LLaVA."""

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 6
    text_heads: int = 4
    text_intermediate: int = 768
    max_positions: int = 1024


def build_model(shape: ModelShape, scene: SceneConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA with one visual token per patch of `scene`'s grid."""
    return llava_model(shape, scene.image_size, scene.patch_size, tokenizer, seed)


def llava_model(shape: ModelShape, image_size: int, patch_size: int, tokenizer: PreTrainedTokenizerFast,
                seed: int = 0) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA-1.5 (CLIP tower reading ``image_size`` px in ``patch_size`` px patches,
    GELU MLP projector, Llama decoder) whose token ids are ``tokenizer``'s."""
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=shape.vision_hidden,
        intermediate_size=4 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_processor(scene: SceneConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """The suite's processor: ``llava_processor`` at the suite's image size (a no-op resize at the native
    size, then CLIP normalisation)."""
    return llava_processor(scene.image_size, scene.patch_size, tokenizer)


def llava_processor(image_size: int, patch_size: int, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """LLaVA-1.5's processor settings at ``image_size``: CLIP preprocessing (resize the shortest edge,
    center crop a square, CLIP normalisation), <image> expanded into (image_size / patch_size)**2 tokens
    ([CLS] dropped)."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


SCENE_CONFIG_FILE = "scene_config.json"


def save_pretrained(directory: str | Path, model: LlavaForConditionalGeneration, processor: LlavaProcessor, scene: SceneConfig) -> None:
    """Write model and processor so that LlavaForConditionalGeneration.from_pretrained(directory) and
    AutoProcessor.from_pretrained(directory) load them offline, plus the scene suite's configuration
    (box bins and geometry the answers use) as scene_config.json."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (Path(directory) / SCENE_CONFIG_FILE).write_text(json.dumps(scene.to_dict(), indent=1))


def load_pretrained(directory: str | Path) -> tuple[LlavaForConditionalGeneration, LlavaProcessor, SceneConfig]:
    """Inverse of save_pretrained."""
    scene = SceneConfig.from_dict(json.loads((Path(directory) / SCENE_CONFIG_FILE).read_text()))
    return LlavaForConditionalGeneration.from_pretrained(directory), AutoProcessor.from_pretrained(directory), scene
