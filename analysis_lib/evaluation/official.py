"""Official scoring (the default): each benchmark's rule as written in the script LLaVA-1.5 scores it with.

FEATHER and VisPruner report numbers from these scripts; each function names its source. The only
departures are cases where the script would crash or is plainly broken (a zero denominator, a
period-count bug), listed in the README. Nothing here is copied from those scripts.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..scenes.boxes import Box
from .metrics import (
    Metric, _accuracy, _mme_aggregate, _references, _single_reference, choice_accuracy, localization_hit,
    normalise_vqa_answer, pope_aggregate, vqa_accuracy,
)

__all__ = ["OFFICIAL", "gqa_correct", "mme_answer", "normalise_evalai_answer", "parse_box_strict", "pope_answer",
           "sqa_choice"]


def normalise_evalai_answer(text: str) -> str:
    """TextVQA / VizWiz normalisation: the EvalAI answer processor (``EvalAIAnswerProcessor`` in LLaVA's
    ``llava/eval/m4c_evaluator.py``, used by ``eval_textvqa.py`` and ``convert_vizwiz_for_submission.py``).

    It first lower-cases, deletes every "," and "?" and writes "'s" as " 's" ("red,white" ->
    "redwhite", "dog's" -> "dog 's"), then applies the VQA script's punctuation, period, number,
    article and contraction rules (``normalise_vqa_answer``; with no comma left, the digit-comma rule
    never fires). The processor removes at most 32 periods (``re.sub`` given ``re.UNICODE`` as its
    count); here all are removed.
    """
    return normalise_vqa_answer(text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip())


def gqa_correct(prediction: str, answer: str) -> float:
    """GQA: LLaVA's ``scripts/convert_gqa_for_eval.py`` strips trailing periods and lower-cases the
    answer; GQA's ``eval.py`` counts it correct when it equals the reference exactly."""
    return float(prediction.rstrip(".").lower() == answer)


def pope_answer(text: str) -> str:
    """POPE's yes/no reading, as LLaVA's ``llava/eval/eval_pope.py``: keep the text before the first
    ".", delete commas, split on single spaces; "no" if one of the words is exactly "No", "no" or
    "not", else "yes" ("No!" and "NOT" are "yes"; "There isn't" is "yes")."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def mme_answer(text: str) -> str:
    """MME's reading, as its ``eval_tool/calculation.py`` (``parse_pred_ans``): lower-case; "yes" or
    "no" as they are; otherwise "yes" if "yes" occurs in the first four characters, else "no" if "no"
    does, else "other", which is wrong for either label ("Nope." -> "no", "Yes, no doubt." -> "yes",
    "I don't see one." -> "other")."""
    answer = text.lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def sqa_choice(text: str, n_options: int) -> str | None:
    """The option letter as LLaVA's ``llava/eval/eval_science_qa.py`` reads it, else None (wrong).

    In order: the whole answer is a letter ("B"); it starts with a letter, a period and a space
    ("C. The answer is B" -> C); "The answer is X" followed by any character occurs exactly once.
    Case matters ("b" and "(B)" are wrong) and the letter must be among the first ``n_options``
    (the script lists A-E, enough for ScienceQA's and AI2D's at most five choices).
    """
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_options]
    if text in letters:
        return text
    if len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 and found[0] in letters else None


_NUMBER = r"\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*"
_FOUR_IN_BRACKETS = re.compile(r"^" + ",".join([_NUMBER] * 4) + r"$")
_FIRST_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def parse_box_strict(text: str) -> Box | None:
    """The box of a RefCOCO answer written as LLaVA-1.5 was trained to write it, "[x1, y1, x2, y2]":
    the first square brackets must hold exactly four comma-separated numbers, else None (a miss).
    Corners are kept as written: a mirrored box (x2 < x1) has no area, so IoU 0 (a miss, no crash)."""
    match = _FIRST_BRACKETS.search(text)
    numbers = _FOUR_IN_BRACKETS.match(match.group(1)) if match else None
    return tuple(float(n) for n in numbers.groups()) if numbers else None


def _label(fields: Mapping[str, Any]) -> str:
    return _single_reference(fields).strip().lower()


def _n_options(fields: Mapping[str, Any]) -> int:
    return int(fields["n_options"] if "n_options" in fields else len(fields["options"]))


def _refcoco_score(prediction: str, fields: Mapping[str, Any]) -> float:
    return localization_hit(prediction, fields["box"], fields.get("box_format", "image"), width=fields.get("width"),
                            height=fields.get("height"), bins=fields.get("bins"), resized=fields.get("resized"),
                            parse=parse_box_strict)


def _choice_score(prediction: str, fields: Mapping[str, Any]) -> float:
    return choice_accuracy(prediction, _single_reference(fields), _n_options(fields), parse=sqa_choice)


_EVALAI_VQA = Metric(
    "vqa-evalai", "VQA accuracy over the annotators with the EvalAI answer processor (m4c_evaluator.py)",
    lambda p, f: vqa_accuracy(p, _references(f), normalise_evalai_answer), _accuracy)
_SQA = Metric("multiple_choice-llava", "option letter as LLaVA's eval_science_qa.py reads it", _choice_score, _accuracy)

# Rule per benchmark family (see ``scoring.benchmark_family``).
OFFICIAL: dict[str, Metric] = {
    "vqav2": Metric("vqa-vqav2", "VQA accuracy with the official VQA script's normalisation (vqaEval.py)",
                    lambda p, f: vqa_accuracy(p, _references(f)), _accuracy),
    "textvqa": _EVALAI_VQA,
    "vizwiz": _EVALAI_VQA,
    "gqa": Metric("gqa", "exact match after convert_gqa_for_eval.py (GQA eval.py)",
                  lambda p, f: gqa_correct(p, _single_reference(f)), _accuracy),
    "pope": Metric("pope-llava", "POPE as LLaVA's eval_pope.py: accuracy, precision, recall, F1, yes-ratio",
                   lambda p, f: float(pope_answer(p) == _label(f)), lambda frame: pope_aggregate(frame, pope_answer)),
    "mme": Metric("mme-calculation", "MME as its eval_tool/calculation.py: acc, acc+, score per subtask, perception",
                  lambda p, f: float(mme_answer(p) == _label(f)), _mme_aggregate),
    "scienceqa_img": _SQA,
    "ai2d": _SQA,
    "refcoco": Metric("refcoco-iou", "accuracy at IoU >= 0.5, box written [x1, y1, x2, y2]", _refcoco_score,
                      _accuracy),
}
