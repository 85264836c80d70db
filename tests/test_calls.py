"""Forward-call arguments are read in one place, under every spelling of the supported transformers range."""
import inspect
import re
from pathlib import Path

import torch
from transformers import DynamicCache

from analysis_lib.adapters import adapter_for
from analysis_lib.adapters.calls import (CACHE_NAMES, LastResult, ModelCall, cache_tensors, output_cache,
                                         watch_argument)
from analysis_lib.pruning import PruningEngine, Schedule, Stage, TextAttentionScorer
from tiny_setup import batch_inputs, sample_inputs

ROOT = Path(__file__).resolve().parents[1]


def _cache(tokens: int) -> DynamicCache:
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, tokens, 4), torch.zeros(1, 2, tokens, 4), 0)
    return cache


def test_the_cache_is_read_under_each_spelling():
    for name in CACHE_NAMES:
        call = ModelCall((), {name: _cache(7), "input_ids": torch.ones(1, 1, dtype=torch.long)})
        assert call.cached_length == 7 and call.tokens.shape == (1, 1)
    assert ModelCall((torch.ones(1, 3),), {}).cached_length == 0
    # a None under the new name does not hide a cache under the old one
    assert ModelCall((), {"cache": None, "past_key_values": _cache(2)}).cached_length == 2


def test_output_cache_and_layer_tensors():
    cache = _cache(5)
    assert output_cache({"logits": 1, "past_key_values": cache}) is cache
    assert output_cache({"logits": 1, "cache": cache}) is cache
    assert output_cache({"logits": 1}) is None
    [(keys, values)] = cache_tensors(cache)
    assert keys.shape[-2] == values.shape[-2] == 5


def test_watched_arguments_are_seen_positional_or_keyword():
    class Encoder:
        def get_image_features(self, pixel_values, image_sizes=None, **kwargs):
            return pixel_values

    owner, seen = Encoder(), []
    restore = watch_argument(owner, "get_image_features", "image_sizes", seen.append)
    assert owner.get_image_features(1, [2, 3]) == 1
    assert owner.get_image_features(pixel_values=1, image_sizes=[4, 5], other=0) == 1
    assert owner.get_image_features(1) == 1
    assert seen == [[2, 3], [4, 5], None]
    restore()
    assert "get_image_features" not in vars(owner)


def test_a_reused_result_is_returned_only_for_equal_arguments_while_active():
    class Encoder:
        calls = 0

        def get_image_features(self, pixel_values, image_sizes=None):
            Encoder.calls += 1
            return pixel_values * 2

    owner, seen = Encoder(), []
    reuse = LastResult(owner, "get_image_features")
    restore = watch_argument(owner, "get_image_features", "image_sizes", seen.append)  # nested on top
    x = torch.arange(4.0)
    first = owner.get_image_features(x, [1, 2])
    assert owner.get_image_features(x.clone(), [1, 2]) is first and Encoder.calls == 1
    owner.get_image_features(x + 1, [1, 2])  # other pixels
    owner.get_image_features(x + 1, [1, 3])  # other sizes
    owner.get_image_features((x + 1).double(), [1, 3])  # other dtype
    assert Encoder.calls == 4
    reuse.active = False
    owner.get_image_features((x + 1).double(), [1, 3])
    assert Encoder.calls == 5 and seen[1] == [1, 2]  # the watch still sees every call, the positional sizes too
    restore()  # the watch comes off, the reuse stays
    reuse.active = True
    owner.get_image_features((x + 1).double(), [1, 3])
    assert Encoder.calls == 5 and len(seen) == 6
    reuse.close()
    assert "get_image_features" not in vars(owner)


def test_a_decoding_step_is_recognised_under_every_spelling_this_release_accepts(models):
    """A hand-written decode loop passing the cache under either name: the step must be taken as a cached
    continuation of the pruned prompt, equal to re-running the whole sequence without a cache."""
    model = models[("llava", "sdpa")]
    accepted = inspect.signature(type(model).forward).parameters
    # every release in range accepts the old name (5.24 on as a deprecated alias); 5.24 on also the new one
    spellings = ["past_key_values"] + (["cache"] if "cache" in accepted else [])
    schedule = Schedule((Stage(2, TextAttentionScorer(), 0.5),), name="fastv-like")
    inputs = sample_inputs(batch_inputs(model, "llava"), 1)
    inputs.pop("position_ids")
    adapter = adapter_for(model)
    for name in spellings:
        with torch.no_grad(), PruningEngine(model, schedule) as engine:
            out = model(**inputs, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], dim=1)
            step = model(input_ids=nxt, attention_mask=mask, use_cache=True,
                         **{name: adapter.output_cache(out)}).logits[:, -1]
            whole = model(input_ids=torch.cat([inputs["input_ids"], nxt], dim=1), attention_mask=mask,
                          pixel_values=inputs["pixel_values"]).logits[:, -1]
        assert len(engine.records) == 1, f"{name}: the decoding step was taken for a new prompt"
        torch.testing.assert_close(step, whole, atol=2e-5, rtol=1e-4)


def test_only_the_call_readers_name_forward_arguments():
    """Hooks read and rewrite forward arguments through the adapter (adapters/calls.py), never by name."""
    names = (r"(?<![.\w])(past_key_values|cache_position|position_embeddings|inputs_embeds|hidden_states)\b"
             r"|[\"']cache[\"']|get_seq_length|\.layers\[\w+\]\.(keys|values)")
    offenders = []
    for path in sorted((ROOT / "analysis_lib").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("analysis_lib/adapters/", "analysis_lib/training/")):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(names, line) or re.search(r"kwargs(\[|\.get\()", line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


#: the modules that follow the model through the adapter only: no transformers argument, output field or
#: module attribute may appear in them
CONTRACT_MODULES = ("analysis_lib/tracking.py", "analysis_lib/pruning/engine.py", "analysis_lib/pruning/views.py",
                    "analysis_lib/attention.py", "analysis_lib/capture.py", "analysis_lib/analyses/")
TRANSFORMERS_NAMES = (
    r"\b(input_ids|attention_mask|position_ids|pixel_values|image_sizes|image_grid_thw|mm_token_type_ids|"
    r"cu_seqlens|rope_deltas|deepstack\w*|visual_pos_masks|output_attentions|use_cache|logits_to_keep)\b"
    r"|\.(q_proj|k_proj|v_proj|qkv|self_attn|rotary_emb|vision_tower|blocks|multi_modal_projector|merger|"
    r"lm_head|get_image_features|get_rope_index)\b")


def test_contract_modules_name_no_transformers_argument_or_attribute():
    """Tracking, the engine, its views, attention rows, capture and the analyses reach the model only through
    the adapter: a transformers argument or module path there fails this test."""
    offenders = []
    for path in sorted((ROOT / "analysis_lib").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(CONTRACT_MODULES):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = re.sub(r"([\"']).*? .*?\1", "", line.split("#")[0])  # messages may name a parameter
            if re.search(TRANSFORMERS_NAMES, code):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
