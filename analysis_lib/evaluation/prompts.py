"""Prompts per model family and task, and how each family writes a box.

A prompt is the family's chat wrapper (with the image placeholder) around a task template
(``{question}``, and ``{options}`` for multiple choice). The LLaVA templates are LLaVA-1.5's
evaluation prompts: short answers end with "Answer the question using a single word or phrase.",
multiple choice lists "A. ..." lines and asks for the letter, and referring-expression localization
asks for "the bounding box coordinate of the region this sentence describes", which LLaVA-1.5 answers
as [x1, y1, x2, y2] normalised to the image padded to a square ("square" boxes). The embedded
default model was trained on the bare questions of the synthetic suite and answers boxes in bins.
Every template can be overridden per task.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from string import Formatter

from ..training.model import SCENE_CONFIG_FILE
from ..training.prompts import prompt as embedded_prompt
from ..validation import check_choice

TASKS = ("localization", "vqa", "yes_no", "multiple_choice", "mme", "exact_match")
BOX_FORMATS = ("image", "square", "bins")
SHORT = "{question}\nAnswer the question using a single word or phrase."

LLAVA_TEMPLATES: dict[str, str] = {
    "localization": "Please provide the bounding box coordinate of the region this sentence describes: {question}",
    "vqa": SHORT,
    "yes_no": SHORT,
    "multiple_choice": "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    "mme": SHORT,
    "exact_match": SHORT,
}
# Generated tokens per task: a box needs ~25 tokens in LLaVA's decimal format, short answers a few.
LLAVA_MAX_NEW_TOKENS: dict[str, int] = {"localization": 32, "vqa": 16, "yes_no": 8, "multiple_choice": 8,
                                        "mme": 8, "exact_match": 16}


@dataclass(frozen=True)
class PromptStyle:
    """``chat``: the family's conversation wrapper with ``{image}`` and ``{text}``; ``templates``: per task;
    ``box_format``: "image" (normalised to the image), "square" (to the image padded to a square) or
    "bins" (integer bins, ``bins`` of them)."""

    name: str
    chat: str
    templates: dict[str, str]
    box_format: str
    max_new_tokens: dict[str, int]
    bins: int | None = None
    image_token: str = "<image>"

    def __post_init__(self):
        check_choice("box_format", self.box_format, BOX_FORMATS)
        for task in self.templates:
            check_choice("task", task, TASKS)

    def text(self, task: str, question: str, options: list[str] | None = None, context: str | None = None) -> str:
        """The full prompt text for one sample (the processor expands the image placeholder); a context
        (ScienceQA's hint) goes before the question as "Context: ...", as LLaVA-1.5 evaluates it."""
        check_choice("task", task, TASKS)
        if context:
            question = f"Context: {context}\n{question}"
        lettered = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options or []))
        body = self.templates[task].format(question=question, options=lettered)
        return self.chat.format(image=self.image_token, text=body)

    def with_templates(self, overrides: dict[str, str]) -> PromptStyle:
        """The same style with some task templates replaced (see ``check_templates``)."""
        check_templates(overrides)
        return replace(self, templates={**self.templates, **overrides})


TEMPLATE_FIELDS = ("question", "options")


def check_templates(overrides: dict[str, str]) -> None:
    """Each override names a task, contains ``{question}`` and no other field than ``TEMPLATE_FIELDS``."""
    for task, template in overrides.items():
        check_choice("prompt task", task, TASKS)
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


STYLES: dict[str, PromptStyle] = {
    "llava": PromptStyle("llava-1.5", "USER: {image}\n{text} ASSISTANT:", LLAVA_TEMPLATES, "square",
                         LLAVA_MAX_NEW_TOKENS),
    "llava_next": PromptStyle("llava-next (vicuna)", "USER: {image}\n{text} ASSISTANT:", LLAVA_TEMPLATES, "image",
                              LLAVA_MAX_NEW_TOKENS),
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
