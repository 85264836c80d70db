"""Shared fixtures: tiny random-weight models built offline from configs, single-threaded."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from analysis_lib.tiny import TinySpec, tiny_vlm  # noqa: E402
from tiny_setup import FAMILIES  # noqa: E402

@pytest.fixture(scope="session")
def models():
    """One sdpa and one eager tiny model per family, 6 decoder layers, same weights for a family."""
    spec = TinySpec(text_layers=6)
    return {(fam, impl): tiny_vlm(fam, spec=spec, attn_implementation=impl)
            for fam in FAMILIES for impl in ("sdpa", "eager")}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny untrained checkpoint in the embedded model's format (real tokenizer, processor, LLaVA classes)."""
    from analysis_lib.training import RECIPES, build_model, build_processor, build_tokenizer, save_pretrained
    recipe = RECIPES["tiny"]
    tokenizer = build_tokenizer(recipe.scene)
    folder = tmp_path_factory.mktemp("ckpt")
    save_pretrained(folder, build_model(recipe.model, recipe.scene, tokenizer), build_processor(recipe.scene, tokenizer),
                    recipe.scene)
    return folder


@pytest.fixture(scope="session")
def model(checkpoint):
    """The checkpoint loaded for evaluation."""
    from analysis_lib.evaluation.runner import load_eval_model
    return load_eval_model(str(checkpoint))
