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
