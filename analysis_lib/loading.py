"""Load a VLM by Hugging Face id or local path and wrap it in its adapter.

    model, processor, adapter = load_vlm("llava-hf/llava-1.5-7b-hf", device="cuda", dtype="float16")
    model, processor, adapter = load_vlm("/models/llava-1.5-7b-hf")          # local: never touches the network

The model class comes from the config's model_type (LLaVA-1.5 -> LlavaForConditionalGeneration,
LLaVA-NeXT -> LlavaNextForConditionalGeneration, Qwen2.5-VL, Qwen3-VL). ``attn_implementation="flash_attention_2"`` falls
back to "sdpa" when flash-attn is not installed. Capture works with any backend; in-LLM pruning
needs "sdpa" or "eager".

A checkpoint larger than one GPU: ``device_map="auto"`` (or "balanced", "sequential", or a dict of module
name -> GPU index, "cpu" or "disk") places its layers through accelerate's dispatch hooks, offloading what
does not fit to CPU memory or ``offload_folder``; capture, pruning and generation run unchanged.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration,
                          Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration)

from .adapters import ADAPTERS, ModelAdapter, adapter_for
from .validation import check_choice, check_device

MODEL_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration,
                 "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen3_vl": Qwen3VLForConditionalGeneration}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTENTION = ("sdpa", "eager", "flash_attention_2")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
#: "owner/name" as the Hugging Face hub spells repository ids
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


def resolve_attention(requested: str) -> str:
    """The attention backend to use: flash-attention only if the package is importable."""
    check_choice("attn_implementation", requested, ATTENTION)
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "sdpa"
    return requested


def check_device_map(device_map: str | dict | None) -> str | dict | None:
    """A device map transformers can dispatch with; accelerate must be installed for one."""
    if device_map is None:
        return None
    if not isinstance(device_map, dict):
        check_choice("device_map", device_map, DEVICE_MAPS)
    if importlib.util.find_spec("accelerate") is None:
        raise ValueError(f"device_map={device_map!r} needs accelerate: pip install 'accelerate>=1.1'")
    return device_map


def load_vlm(name_or_path: str | Path, device: str = "cpu", dtype: str = "float32", attn_implementation: str = "sdpa",
             load_processor: bool = True, device_map: str | dict | None = None,
             offload_folder: str | Path | None = None) -> tuple[torch.nn.Module, object | None, ModelAdapter]:
    """(model in eval mode, processor or None, adapter) for a hub id or a local checkpoint folder.
    ``device_map`` (see the module doc) replaces ``device``; ``offload_folder`` receives disk-offloaded
    weights."""
    check_choice("dtype", dtype, DTYPES)
    check_device(device)
    placement = {"device_map": device_map, "offload_folder": offload_folder} if check_device_map(device_map) else {}
    local = Path(name_or_path).expanduser().is_dir()
    if not local and Path(name_or_path).expanduser().exists():
        raise ValueError(f"name_or_path={str(name_or_path)!r} is a file; give a checkpoint folder or a hub id")
    if not local and not HUB_ID.fullmatch(str(name_or_path)):
        raise FileNotFoundError(f"model {str(name_or_path)!r}: no such folder (and not a hub id like "
                                "'llava-hf/llava-1.5-7b-hf')")
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local)
    except OSError as err:
        if local:
            raise ValueError(f"model folder {str(name_or_path)!r}: no readable config.json ({err})") from None
        raise FileNotFoundError(
            f"model {str(name_or_path)!r}: not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline={os.environ.get('HF_HUB_OFFLINE', '0')}); download it first (huggingface-cli download "
            f"{name_or_path}) or give a local folder") from None
    check_choice("model_type", config.model_type, ADAPTERS)
    model = MODEL_CLASSES[config.model_type].from_pretrained(
        name_or_path, dtype=DTYPES[dtype], attn_implementation=resolve_attention(attn_implementation),
        local_files_only=local, **placement)
    model = (model if placement else model.to(device)).eval()
    processor = AutoProcessor.from_pretrained(name_or_path, local_files_only=local) if load_processor else None
    return model, processor, adapter_for(model)
