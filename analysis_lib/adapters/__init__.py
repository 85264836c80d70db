"""Adapter registry: model type (config.model_type) -> adapter class."""
from __future__ import annotations

from torch import nn

from ..validation import check_choice
from .base import AttentionGeometry, ModelAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "llava": LlavaAdapter,
    "llava_next": LlavaNextAdapter,
    "qwen2_5_vl": Qwen2_5_VLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
}


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded VLM, chosen by its config's model_type."""
    model_type = getattr(model.config, "model_type", None)
    check_choice("model_type", model_type, ADAPTERS)
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "AttentionGeometry", "LlavaAdapter", "LlavaNextAdapter", "ModelAdapter", "Qwen2_5_VLAdapter",
           "Qwen3VLAdapter", "adapter_for"]
