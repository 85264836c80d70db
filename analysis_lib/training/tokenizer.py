"""Word-level tokenizers saved as regular Hugging Face fast tokenizers (AutoTokenizer / AutoProcessor load
them), built offline: the scene suite's closed vocabulary, or the words of any given texts."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..scenes import SPLITS, TASKS, SceneConfig, generate_sample
from ..scenes.tasks import follow_up_questions
from .prompts import END_OF_TURN, IMAGE_TOKEN, SYSTEM

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", END_OF_TURN, IMAGE_TOKEN)
_CORPUS_PER_TASK = 200


def _corpus(config: SceneConfig) -> list[str]:
    """Every text the suite produces: questions and answers of each task and follow-up, the prompt
    words, and every number a box or a count can hold."""
    texts = [SYSTEM, "USER: ASSISTANT:"]
    texts += [str(n) for n in range(max(config.box_bins, config.max_count + 1))]
    rng = np.random.default_rng(0)
    for task in TASKS:
        for index in range(_CORPUS_PER_TASK):
            sample = generate_sample(SPLITS[0], task, index, config)
            texts += [sample.question, sample.answer]
            texts += [t for qa in follow_up_questions(rng, sample.objects, config, 4) for t in qa]
    return texts


def build_tokenizer(config: SceneConfig) -> PreTrainedTokenizerFast:
    """The scene suite's tokenizer: ``word_tokenizer`` over every text the suite produces, so the
    vocabulary is a pure function of the suite's wording."""
    return word_tokenizer(_corpus(config), model_max_length=1024)


def word_tokenizer(texts: Iterable[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: the words and punctuation marks of ``texts`` are tokens, ids in sorted order
    after LLaVA's special tokens (``SPECIAL_TOKENS``; others become ``<unk>``), ``<s>`` prepended."""
    pre_tokenizer = pre_tokenizers.Whitespace()
    words = {w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(text)}
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({w: len(SPECIAL_TOKENS) + i for i, w in enumerate(sorted(words - set(SPECIAL_TOKENS)))})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizer
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token=END_OF_TURN,
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=model_max_length,
        padding_side="left",  # for batched generation; training pads itself
    )
