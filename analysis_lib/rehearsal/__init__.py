"""The rehearsal of the real-model path: every notebook run with the ``llava-1.5-7b`` profile's settings on
CPU, on a random-weight stand-in with LLaVA-1.5-7B's geometry and tiny copies of the profile's benchmarks.

    python -m analysis_lib rehearsal build --out runs/rehearsal     # stand-in + benchmarks, offline, seconds
    python -m analysis_lib reproduce --profile rehearsal --root runs/rehearsal/out

``build`` writes ``<out>/model`` (``save_pretrained``: loaded by ``load_vlm`` like a downloaded checkpoint)
and ``<out>/hub`` (a Hugging Face hub cache holding every benchmark of the registry in its lmms-lab layout,
``benchmarks``); the ``rehearsal`` profile names both. The stand-in has the checkpoint's processor settings
(CLIP preprocessing at 336 px: shortest edge resized, 336×336 center crop, as llava-hf ships them), 14 px
patches (24×24 = 576 visual tokens, [CLS] dropped, features of the tower's penultimate layer), a 24-layer
CLIP tower and a 32-layer Llama decoder, both narrow, and a word-level tokenizer over the benchmarks' and
prompts' words. Its answers are noise, three tokens long (its generation config): the rehearsal checks that every notebook runs and writes
well-formed tables and figures at the real geometry on the real layouts, not what they show.

No Qwen rehearsal: a Qwen2.5-VL / Qwen3-VL processor cannot be built without torchvision (its video
processor requires it, and transformers refuses the processor without one), which this environment lacks.
"""
from __future__ import annotations

from pathlib import Path

from ..evaluation.datasets import BENCHMARKS, load_benchmark
from ..evaluation.prompts import STYLES
from ..training.model import ModelShape, llava_model, llava_processor
from ..training.tokenizer import word_tokenizer
from .benchmarks import write_benchmarks

MODEL_DIR, HUB_DIR = "model", "hub"
#: LLaVA-1.5-7B's geometry: CLIP ViT-L/14 at 336 px (24 layers), 32 decoder layers; narrow widths
IMAGE_SIZE, PATCH_SIZE = 336, 14
SHAPE = ModelShape(vision_hidden=32, vision_layers=24, vision_heads=2, text_hidden=64, text_layers=32, text_heads=4,
                   text_intermediate=128, max_positions=4096)
ANSWER_TOKENS = 3


def prompt_texts(hub: Path) -> list[str]:
    """Every text the rehearsal's prompts hold: the LLaVA-1.5 templates and the benchmarks' questions, answers,
    options and contexts."""
    style = STYLES["llava"]
    texts = [style.chat, *style.templates.values()]
    for name in BENCHMARKS:
        for s in load_benchmark(name, cache_dir=hub):
            texts += [s.question, *s.answers, *(s.options or []), s.context or ""]
    return texts


def build_standin(folder: str | Path, texts: list[str], seed: int = 0) -> Path:
    """A random-weight LLaVA-1.5 with LLaVA-1.5-7B's geometry (module docstring), saved with save_pretrained."""
    tokenizer = word_tokenizer(texts, model_max_length=SHAPE.max_positions)
    model = llava_model(SHAPE, IMAGE_SIZE, PATCH_SIZE, tokenizer, seed)
    # Answers of ANSWER_TOKENS tokens, then end of sequence: random weights never end one, and every notebook
    # would decode each task's full token budget; three tokens still decode twice from the (pruned) KV cache.
    model.generation_config.min_new_tokens = ANSWER_TOKENS
    model.generation_config.sequence_bias = [[[tokenizer.eos_token_id], 1000.0]]
    model.save_pretrained(folder)
    llava_processor(IMAGE_SIZE, PATCH_SIZE, tokenizer).save_pretrained(folder)
    return Path(folder)


def build(out: str | Path) -> dict[str, Path]:
    """The benchmarks (``<out>/hub``) and the stand-in (``<out>/model``); the same files on every run."""
    out = Path(out)
    hub = out / HUB_DIR
    write_benchmarks(hub)
    return {"model": build_standin(out / MODEL_DIR, prompt_texts(hub)), "hub": hub}
