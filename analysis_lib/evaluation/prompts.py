"""Prompts per model family, task and benchmark, and how each family writes a box.

A prompt is the family's chat wrapper (with the image placeholder) around a template (``{question}``,
``{options}`` for multiple choice, ``{context}`` for TextVQA's OCR tokens), chosen by benchmark when
one has its own, else by task. The LLaVA templates are those of LLaVA-1.5's evaluation question files
(README table "Prompts"): short answers end with "Answer the question using a single word or phrase."
(MME's own " Please answer yes or no." is removed first), VizWiz adds the "Unanswerable" hint,
TextVQA lists the reference OCR tokens, multiple choice lists "A. ..." lines and asks for the letter,
and localization asks for "the bounding box coordinate of the region this sentence describes", which
LLaVA-1.5 answers as [x1, y1, x2, y2] of the image padded to a square ("padded" boxes). The embedded
default model was trained on the bare questions of the synthetic suite and answers boxes in bins.

Qwen2.5-VL and Qwen3-VL use their chat templates (Qwen2.5-VL's adds its default system prompt, Qwen3-VL's
has none) around the same short-answer templates, and localization asks as the Qwen2.5-VL cookbook
(spatial_understanding) does: "Locate the ..., output its bbox coordinates using JSON format." They answer
``{"bbox_2d": [x1, y1, x2, y2], ...}`` in different frames: Qwen2.5-VL in absolute pixels of the image as
resized by its processor (the Qwen2.5-VL technical report; the Qwen maintainers in QwenLM/Qwen3-VL#1427),
Qwen3-VL in relative coordinates 0-1000 (Qwen3-VL cookbook 2d_grounding, quoted in QwenLM/Qwen3-VL#1741).
Every template can be overridden per task or benchmark.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Formatter

from ..layout import QWEN2_5_VL_PIXELS, smart_resize
from ..training.model import SCENE_CONFIG_FILE
from ..training.prompts import prompt as embedded_prompt
from ..validation import check_choice
from .metrics import BOX_FORMATS

TASKS = ("localization", "vqa", "yes_no", "multiple_choice", "mme", "exact_match")
BENCHMARK_TEMPLATE_KEYS = ("textvqa", "vizwiz")
SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
SHORT = "{question}" + SHORT_SUFFIX

LLAVA_TEMPLATES: dict[str, str] = {
    "localization": "Please provide the bounding box coordinate of the region this sentence describes: {question}",
    "vqa": SHORT,
    "yes_no": SHORT,
    "multiple_choice": "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    "mme": SHORT,
    "exact_match": SHORT,
    "textvqa": "{question}\nReference OCR token: {context}" + SHORT_SUFFIX,
    "vizwiz": "{question}\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT_SUFFIX,
}
# Text removed from a task's questions before templating (MME's questions carry their own instruction).
LLAVA_QUESTION_SUFFIXES: dict[str, str] = {"mme": " Please answer yes or no."}
# Generated tokens per task: a box needs ~25 tokens in LLaVA's decimal format, short answers a few.
LLAVA_MAX_NEW_TOKENS: dict[str, int] = {"localization": 32, "vqa": 16, "yes_no": 8, "multiple_choice": 8,
                                        "mme": 8, "exact_match": 16}


@dataclass(frozen=True)
class PromptStyle:
    """``chat``: the family's conversation wrapper with ``{image}`` and ``{text}``; ``templates``: per task
    or benchmark (BENCHMARK_TEMPLATE_KEYS); ``box_format``: one of ``metrics.BOX_FORMATS`` ("bins": ``bins``
    of them; "resized_pixels": the processor's ``resize`` = (cell px, (min, max) pixels)); ``question_suffixes``:
    per task, text cut from the end of a question."""

    name: str
    chat: str
    templates: dict[str, str]
    box_format: str
    max_new_tokens: dict[str, int]
    bins: int | None = None
    image_token: str = "<image>"
    question_suffixes: dict[str, str] = field(default_factory=dict)
    resize: tuple[int, tuple[int, int]] | None = None

    def __post_init__(self):
        check_choice("box_format", self.box_format, BOX_FORMATS)
        if (self.box_format == "resized_pixels") != (self.resize is not None):
            raise ValueError(f"resize={self.resize!r}: box_format='resized_pixels' needs it, other formats take none")
        for key in self.templates:
            check_choice("template", key, TASKS + BENCHMARK_TEMPLATE_KEYS)

    def text(self, task: str, question: str, options: list[str] | None = None, context: str | None = None,
             benchmark: str | None = None) -> str:
        """The full prompt text for one sample (the processor expands the image placeholder). The
        benchmark's template is used when there is one (and, if it asks for ``{context}``, a context is
        given); otherwise the task's, with a context (ScienceQA's hint) before the question as
        "Context: ...", as LLaVA-1.5 evaluates it."""
        check_choice("task", task, TASKS)
        suffix = self.question_suffixes.get(task)
        if suffix and question.endswith(suffix):
            question = question[:-len(suffix)]
        template = self.templates.get(benchmark or "")
        if template is None or ("{context}" in template and not context):
            template = self.templates[task]
            if context:
                question = f"Context: {context}\n{question}"
        lettered = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options or []))
        body = template.format(question=question, options=lettered, context=context or "")
        return self.chat.format(image=self.image_token, text=body)

    def model_image_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) of a width x height image as the model sees it after its processor's resize (None for
        styles whose boxes are not in those pixels)."""
        if self.resize is None:
            return None
        cell, pixels = self.resize
        h, w = smart_resize(height, width, cell, pixels)
        return w, h

    def with_templates(self, overrides: dict[str, str]) -> PromptStyle:
        """The same style with some task or benchmark templates replaced (see ``check_templates``)."""
        check_templates(overrides)
        return replace(self, templates={**self.templates, **overrides})


TEMPLATE_FIELDS = ("question", "options", "context")


def check_templates(overrides: dict[str, str]) -> None:
    """Each override names a task or benchmark, contains ``{question}`` and no field but ``TEMPLATE_FIELDS``."""
    for task, template in overrides.items():
        check_choice("prompt template", task, TASKS + BENCHMARK_TEMPLATE_KEYS)
        try:
            fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
        except ValueError as err:
            raise ValueError(f"prompt template for task {task!r}: {err} in {template!r}") from None
        if "question" not in fields:
            raise ValueError(f"prompt template for task {task!r} must contain '{{question}}': {template!r}")
        unknown = sorted(fields - set(TEMPLATE_FIELDS))
        if unknown:
            raise ValueError(f"prompt template for task {task!r}: unknown field(s) {unknown} in {template!r}; "
                             f"allowed fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")


QWEN_TEMPLATES = {**LLAVA_TEMPLATES,
                  "localization": "Locate the {question}, output its bbox coordinates using JSON format."}
# a JSON box answer ('```json\n[{"bbox_2d": [...], "label": "..."}]\n```') is about 40 tokens
QWEN_MAX_NEW_TOKENS = {**LLAVA_MAX_NEW_TOKENS, "localization": 64}
QWEN_USER = "<|im_start|>user\n{image}{text}<|im_end|>\n<|im_start|>assistant\n"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"

STYLES: dict[str, PromptStyle] = {
    "llava": PromptStyle("llava-1.5", "USER: {image}\n{text} ASSISTANT:", LLAVA_TEMPLATES, "padded",
                         LLAVA_MAX_NEW_TOKENS, question_suffixes=LLAVA_QUESTION_SUFFIXES),
    "llava_next": PromptStyle("llava-next (vicuna)", "USER: {image}\n{text} ASSISTANT:", LLAVA_TEMPLATES, "image",
                              LLAVA_MAX_NEW_TOKENS, question_suffixes=LLAVA_QUESTION_SUFFIXES),
    "qwen2_5_vl": PromptStyle("qwen2.5-vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN_USER,
                              QWEN_TEMPLATES, "resized_pixels", QWEN_MAX_NEW_TOKENS, image_token=QWEN_IMAGE,
                              question_suffixes=LLAVA_QUESTION_SUFFIXES, resize=(28, QWEN2_5_VL_PIXELS)),
    "qwen3_vl": PromptStyle("qwen3-vl", QWEN_USER, QWEN_TEMPLATES, "thousandths", QWEN_MAX_NEW_TOKENS,
                            image_token=QWEN_IMAGE, question_suffixes=LLAVA_QUESTION_SUFFIXES),
}


def embedded_style(bins: int) -> PromptStyle:
    """The repository's embedded default model: its training prompt, bare questions, boxes in bins."""
    chat = embedded_prompt("{text}").replace("<image>", "{image}")
    return PromptStyle("embedded", chat, {t: "{question}" for t in TASKS}, "bins",
                       {t: 12 for t in TASKS}, bins=bins)


def style_for(model_type: str, checkpoint: str | Path | None = None) -> PromptStyle:
    """The embedded style for a checkpoint written by ``analysis_lib.training`` (it has a scene
    config), else the family's style."""
    if checkpoint is not None and (Path(checkpoint) / SCENE_CONFIG_FILE).is_file():
        scene = json.loads((Path(checkpoint) / SCENE_CONFIG_FILE).read_text())
        return embedded_style(int(scene["box_bins"]))
    check_choice("model_type", model_type, STYLES)
    return STYLES[model_type]
