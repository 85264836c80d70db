"""Shared scoring primitives and the lenient rules (``--scoring lenient``), with a small registry.

The default scoring follows each benchmark's official script (``official.py``); the parsers here
accept more answer shapes than those scripts and are kept as the explicit "lenient" mode.

* ``vqa``: VQAv2 / TextVQA / VizWiz accuracy with the answer normalisation of the official VQA
  evaluation script (``normalise_vqa_answer``, ``vqa_accuracy``).
* ``localization``: RefCOCO / RefCOCO+ / RefCOCOg accuracy at IoU >= 0.5, for boxes normalised to the
  image, to LLaVA-1.5's padded square, or given as integer bins of the synthetic suite
  (``parse_box``, ``box_iou``, ``square_to_image_box``, ``bins_to_box``, ``localization_hit``).
* ``pope``: POPE's yes/no parsing and accuracy / precision / recall / F1 / yes-ratio
  (``parse_yes_no``, ``pope_metrics``).
* ``multiple_choice``: ScienceQA-IMG / AI2D / MMBench-like option letters (``parse_choice``,
  ``choice_accuracy``).
* ``mme``: MME's acc, acc+ and perception score (``mme_scores``).
* ``exact_match``: lightly normalised string equality (the synthetic suite's non-box tasks).

``METRICS`` / ``get_metric`` give each as a ``Metric`` with a per-sample ``score(prediction, fields)``
and an ``aggregate(frame)`` over a pandas DataFrame of scored samples.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..scenes.boxes import Box, box_iou, dequantise_box
from ..scenes.boxes import parse_box as parse_bin_box
from ..scenes.scoring import IOU_THRESHOLD
from ..validation import check_choice

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ARTICLES", "BOX_FORMATS", "CONTRACTIONS", "IOU_THRESHOLD", "METRICS", "MME_PERCEPTION", "Metric",
    "NUMBER_WORDS", "bins_to_box", "box_iou", "choice_accuracy", "exact_match", "get_metric",
    "localization_hit", "mme_scores", "normalise_exact", "normalise_vqa_answer", "parse_box",
    "parse_choice", "parse_yes_no", "pope_aggregate", "pope_metrics", "square_to_image_box", "vqa_accuracy",
]

# --------------------------------------------------------------------------------------------------
# VQA accuracy (VQAv2 / TextVQA / VizWiz): the official evaluation script's normalisation and metric.
# --------------------------------------------------------------------------------------------------

# Characters the script treats as punctuation. Apostrophes, colons and most symbols are kept; periods
# are handled separately (see _PERIOD).
_PUNCTUATION: tuple[str, ...] = tuple(";/[]\"{}()=+\\_-><@`,?!")
# A comma between digits ("1,000"): its presence anywhere makes every punctuation mark be deleted.
_DIGIT_COMMA = re.compile(r"\d,\d")
# The script removes a period unless a digit follows it (its intended look-behind is mistyped and never
# fires), so "3.5" and ".5" keep theirs while "dog." and "a.b" lose it.
_PERIOD = re.compile(r"\.(?!\d)")

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})


def _contractions() -> dict[str, str]:
    """The script's table of contractions written without (some of) their apostrophes.

    A form with one apostrophe is looked up without it ("dont" -> "don't"); a form with several is
    looked up with exactly one of them missing ("couldnt've" and "couldn'tve" -> "couldn't've"; the
    script has no entry for "couldntve"). The script's capitalised keys ("Im", "Ive", "Id've",
    "I'dve") can never match its lower-cased words, so they are left out here with the same effect.
    """
    forms = (
        "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
        "hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't "
        "mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've "
        "should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've "
        "someone'll someone's something'd something'd've something'll that's there'd there'd've "
        "there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've "
        "weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
        "who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
        "y'all'd've you'd you'd've you'll you're you've"
    ).split()
    table: dict[str, str] = {}
    for form in forms:
        positions = [i for i, c in enumerate(form) if c == "'"]
        if len(positions) == 1:
            table[form.replace("'", "")] = form
        else:
            for i in positions:
                table[form[:i] + form[i + 1:]] = form
    # Quirks of the script's table, kept so that scores match it.
    table["somebody'd"] = "somebodyd"
    for variant in ("ow's'at", "'ows'at", "'ow'sat"):
        table[variant] = "'ow's'at"
    return table


CONTRACTIONS: dict[str, str] = _contractions()


def normalise_vqa_answer(text: str) -> str:
    """Normalise an answer as the official VQA evaluation script does.

    1. Newlines and tabs become spaces; the text is stripped.
    2. Punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: a mark is deleted if it appears
       next to a space anywhere in the text ("red, white") or if the text holds a comma between digits
       ("1,000" -> "1000", which then deletes every mark); otherwise it becomes a space ("x-ray" ->
       "x ray"). The test looks at the original text, one mark at a time.
    3. Periods not followed by a digit are deleted ("dog." -> "dog", "3.5" stays).
    4. Lower-case; per word: number words become digits ("two" -> "2", "none" -> "0"), the articles
       a / an / the are dropped, and contractions written without apostrophes get them back
       ("dont" -> "don't").
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = _PERIOD.sub("", out)
    words = []
    for word in out.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str],
                 normalise: Callable[[str], str] = normalise_vqa_answer) -> float:
    """The official VQA accuracy: for each ground-truth answer, min(1, (matches among the others) / 3),
    averaged over the answers (leave-one-out over the 10 annotators of VQAv2 / TextVQA / VizWiz).

    Prediction and answers are both normalised with ``normalise`` (default ``normalise_vqa_answer``;
    TextVQA and VizWiz use the EvalAI processor, ``official.normalise_evalai_answer``). The VQA script
    normalises only when the annotators disagree; LLaVA-1.5 uploads answers already normalised by the
    EvalAI processor, so normalising every time gives the numbers it reports.
    With 10 answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.
    With k < 10 answers the same leave-one-out average is taken, so the score is at most (k - 1) / 3:
    a single reference answer always scores 0 — use ``exact_match`` for single-answer data.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of ground-truth answers, not a single string")
    references = [normalise(a) for a in answers]
    if not references:
        raise ValueError("answers is empty: VQA accuracy needs the annotators' answers")
    predicted = normalise(prediction)
    matches = sum(r == predicted for r in references)
    return sum(min(1.0, (matches - (r == predicted)) / 3) for r in references) / len(references)


# --------------------------------------------------------------------------------------------------
# Boxes (RefCOCO / RefCOCO+ / RefCOCOg: a hit is IoU >= 0.5 with the target box)
# --------------------------------------------------------------------------------------------------

#: what a predicted box's numbers are: fractions of the image, of LLaVA-1.5's padded square, the synthetic suite's
#: integer bins, pixels of the image as the model saw it after its processor's resize (Qwen2.5-VL), or
#: thousandths of the image (Qwen3-VL's 0-1000 relative coordinates)
BOX_FORMATS: tuple[str, ...] = ("image", "padded", "bins", "resized_pixels", "thousandths")

# A number not glued to a letter, digit or period on its left (so "x1" in "x1: 0.2" is not one).
_BOX_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])-?(?:\d+(?:\.\d*)?|\.\d+)")
_BRACKETED = re.compile(r"[\[(]([^\[\]()]*)[\])]")


def parse_box(text: str) -> Box | None:
    """The (x1, y1, x2, y2) box in a model's answer, or None when it holds fewer than four numbers.

    Accepts "[0.12, 0.3, 0.5, 0.7]", "(0.12,0.3),(0.5,0.7)", "0.12 0.3 0.5 0.7", integers, and text
    around the box ("The box is [...]."). If one bracket holds exactly four numbers those are used,
    otherwise the first four numbers of the text. Coordinates are reordered so x1 <= x2 and y1 <= y2.
    """
    numbers = None
    for group in _BRACKETED.findall(text):
        found = _BOX_NUMBER.findall(group)
        if len(found) == 4:
            numbers = found
            break
    if numbers is None:
        numbers = _BOX_NUMBER.findall(text)[:4]
        if len(numbers) < 4:
            return None
    x1, y1, x2, y2 = (float(n) for n in numbers)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def square_to_image_box(box: Sequence[float], width: int, height: int) -> Box:
    """A box normalised to LLaVA-1.5's padded square -> the box normalised to the original image.

    LLaVA-1.5 (``expand2square``) pastes a width x height image into a max(width, height) square at
    offset ((side - width) // 2, (side - height) // 2), i.e. the short side centred, before encoding;
    its boxes are fractions of that square. The result is clipped to [0, 1] (padding is outside).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got width={width!r}, height={height!r}")
    side = max(width, height)
    dx, dy = (side - width) // 2, (side - height) // 2
    x1, y1, x2, y2 = box

    def clip(v: float) -> float:
        return min(1.0, max(0.0, v))

    return (clip((x1 * side - dx) / width), clip((y1 * side - dy) / height),
            clip((x2 * side - dx) / width), clip((y2 * side - dy) / height))


def bins_to_box(box: Sequence[int], bins: int) -> Box:
    """An integer-bin box of the synthetic suite -> coordinates normalised to the image.

    Uses the suite's own quantisation (``scenes.boxes``): a coordinate c in [0, 1] is stored as bin
    round(c * (bins - 1)), so bin b decodes to b / (bins - 1) (bin 0 -> 0.0, bin bins-1 -> 1.0).
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins!r}")
    values = tuple(box)
    if len(values) != 4 or any(int(v) != v or not 0 <= v < bins for v in values):
        raise ValueError(f"box must be four integers in 0 .. {bins - 1}, got {box!r}")
    return dequantise_box(tuple(int(v) for v in values), 1, bins)


def _fractions(box: Box, width: float, height: float) -> Box:
    x1, y1, x2, y2 = box
    return x1 / width, y1 / height, x2 / width, y2 / height


def localization_hit(prediction: str, target: Sequence[float], box_format: str = "image", *,
                     width: int | None = None, height: int | None = None, bins: int | None = None,
                     resized: tuple[int, int] | None = None,
                     parse: Callable[[str], Box | None] = parse_box) -> float:
    """RefCOCO accuracy@0.5 for one answer: 1.0 if the predicted box has IoU >= 0.5 with ``target``,
    else 0.0 (also when no box can be parsed).

    ``target`` is (x1, y1, x2, y2) normalised to the original image (the suite's ``box_normalised``).
    ``box_format`` says how the prediction is written: "image" (fractions of the image), "padded"
    (fractions of LLaVA-1.5's padded square; needs ``width`` and ``height``) or "bins" (the synthetic
    suite's "[x1, y1, x2, y2]" integer bins; needs ``bins``; parsed exactly as ``scenes.scoring``
    does — four integers in 0 .. bins-1 — so the two agree), "resized_pixels" (pixels of the resized
    image the model saw, ``resized`` = its (width, height)) or "thousandths" (0-1000 of the image).
    ``parse`` reads a decimal box (default
    the lenient ``parse_box``; the official rule passes ``official.parse_box_strict``).
    """
    check_choice("box_format", box_format, BOX_FORMATS)
    if box_format == "bins" and bins is None:
        raise ValueError("box_format='bins' needs bins")
    if box_format == "padded" and (width is None or height is None):
        raise ValueError("box_format='padded' needs width and height of the original image")
    if box_format == "resized_pixels" and resized is None:
        raise ValueError("box_format='resized_pixels' needs resized, the (width, height) the model saw")
    if box_format == "bins":
        predicted = parse_bin_box(prediction, 1, bins)
    else:
        predicted = parse(prediction)
        if box_format == "padded" and predicted is not None:
            predicted = square_to_image_box(predicted, width, height)
        elif box_format == "resized_pixels" and predicted is not None:
            predicted = _fractions(predicted, *resized)
        elif box_format == "thousandths" and predicted is not None:
            predicted = _fractions(predicted, 1000, 1000)
    if predicted is None:
        return 0.0
    return float(box_iou(predicted, tuple(target)) >= IOU_THRESHOLD)


# --------------------------------------------------------------------------------------------------
# Yes / no (POPE, MME)
# --------------------------------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[^a-z0-9']+")


def parse_yes_no(text: str) -> str:
    """POPE's rule: "no" if the first sentence has the word "no" or "not", else "yes".

    Exactly: keep the text before the first "." (the whole text if there is none), lower-case it,
    turn every character other than letters, digits and apostrophes into a space, split on spaces;
    "no" if "no" or "not" is among the words, otherwise "yes". POPE's script only removes commas and
    matches "No" / "no" / "not" case-sensitively; here "NOT" and "No!" also count. Like POPE,
    contractions ("isn't") and other negations do not count, and anything else ("maybe") is "yes".
    """
    words = _NOT_WORD.sub(" ", text.split(".", 1)[0].lower()).split()
    return "no" if "no" in words or "not" in words else "yes"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def pope_metrics(predictions: Sequence[str], labels: Sequence[str],
                 parse: Callable[[str], str] = parse_yes_no) -> dict[str, float]:
    """POPE: accuracy, precision, recall, F1 (positive class "yes") and the ratio of "yes" answers.

    ``predictions`` are raw answers, read with ``parse`` (default ``parse_yes_no``); ``labels`` are
    "yes" / "no" (case and surrounding spaces ignored). A zero denominator gives 0.0.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"got {len(predictions)} predictions for {len(labels)} labels")
    tp = fp = tn = fn = 0
    for prediction, label in zip(predictions, labels):
        label = check_choice("labels", str(label).strip().lower(), ("yes", "no"))
        predicted_yes = parse(prediction) == "yes"
        if label == "yes":
            tp, fn = tp + predicted_yes, fn + (not predicted_yes)
        else:
            fp, tn = fp + predicted_yes, tn + (not predicted_yes)
    n = tp + fp + tn + fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(tp + fp, n),
    }


# MME's ten perception subtasks (its score sums them; the four cognition subtasks "commonsense_reasoning",
# "numerical_calculation", "text_translation" and "code_reasoning" are not part of it).
MME_PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
_MME_PERCEPTION_LOWER = frozenset(s.lower() for s in MME_PERCEPTION)


def mme_scores(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """MME scores from rows with keys ``subtask``, ``image_id`` and ``correct`` (bool).

    Per subtask: ``<subtask>/acc`` = percent of questions correct, ``<subtask>/acc_plus`` = percent of
    images all of whose questions (in MME, both: one "yes" and one "no") are correct, and
    ``<subtask>/score`` = acc + acc_plus (at most 200). ``perception`` = sum of the scores of the
    subtasks in ``MME_PERCEPTION`` (names compared case-insensitively; at most 2000); other subtasks
    are reported but not summed. Correctness of an MME answer is ``parse_yes_no(answer) == label``.
    """
    by_image: dict[str, dict[Any, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_image[str(row["subtask"])][row["image_id"]].append(bool(row["correct"]))
    scores: dict[str, float] = {}
    perception = 0.0
    for subtask, images in by_image.items():
        answers = [c for image in images.values() for c in image]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(image) for image in images.values()) / len(images)
        scores[f"{subtask}/acc"] = acc
        scores[f"{subtask}/acc_plus"] = acc_plus
        scores[f"{subtask}/score"] = acc + acc_plus
        if subtask.lower() in _MME_PERCEPTION_LOWER:
            perception += acc + acc_plus
    scores["perception"] = perception
    return scores


# --------------------------------------------------------------------------------------------------
# Multiple choice (ScienceQA-IMG, AI2D, MMBench-like)
# --------------------------------------------------------------------------------------------------

# One option letter: "(b)" in any case, an upper-case letter not followed by a word character, or a
# lower-case one followed by ")" / "." / ":" or the end (so the article in "is a cat" is not one).
_LETTER = r"(?:\(\s*([A-Za-z])\s*\)|([A-Z])(?![\w'])|([a-z])(?=[).:]|\s*$))"
_ANSWER_IS = re.compile(r"(?i:\b(?:answer|option|choice)\b\s*(?:is\b)?)\s*:?\s*" + _LETTER)
_LEADING = re.compile(r"^\s*(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])\s*[).:](?!\S))")
_NON_WORD = re.compile(r"[^\w']+")


def _letters(n_options: int) -> str:
    if not isinstance(n_options, int) or not 1 <= n_options <= 26:
        raise ValueError(f"n_options must be an integer in 1 .. 26, got {n_options!r}")
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_options]


def parse_choice(text: str, n_options: int) -> str | None:
    """The option letter (A, B, ...; one of the first ``n_options``) a model's answer picks, or None.

    Tried in order: the whole answer is one letter ("B", "b"); "answer is B" / "Answer: (B)" /
    "option B" (LLaVA's ScienceQA pattern); a leading marker "(B)", "B.", "B:", "b) cat"; finally, as
    MMBench does, the answer's only stand-alone upper-case option letter ("I pick B"); in answers
    longer than three words "I" is ignored (a pronoun) and a stand-alone "A" makes the answer
    ambiguous (an article?), as in MMBench. None when nothing or several different letters are
    found, or the letter is beyond the options.
    """
    letters = _letters(n_options)
    stripped = text.strip()
    candidate: str | None = None
    if len(stripped) == 1:
        candidate = stripped.upper()
    else:
        match = _ANSWER_IS.search(stripped) or _LEADING.match(stripped)
        if match:
            candidate = next(g for g in match.groups() if g).upper()
        else:
            words = _NON_WORD.sub(" ", stripped).split()
            found = {w for w in words if len(w) == 1 and w in letters}
            if len(words) > 3:
                found.discard("I")
                if "A" in found:  # an article, or one of several letters: ambiguous either way
                    found = set()
            if len(found) == 1:
                candidate = found.pop()
    return candidate if candidate is not None and candidate in letters else None


def choice_accuracy(prediction: str, answer_letter: str, n_options: int,
                    parse: Callable[[str, int], str | None] = parse_choice) -> float:
    """1.0 if ``parse(prediction, n_options)`` (default ``parse_choice``) is ``answer_letter`` (case
    ignored), else 0.0."""
    answer = check_choice("answer_letter", str(answer_letter).strip().upper(), _letters(n_options))
    return float(parse(prediction, n_options) == answer)


# --------------------------------------------------------------------------------------------------
# Exact match (the synthetic suite's non-box tasks)
# --------------------------------------------------------------------------------------------------

def normalise_exact(text: str) -> str:
    """Light normalisation: lower-case, runs of white space -> one space, stripped, no final periods."""
    return " ".join(text.lower().split()).rstrip(".").rstrip()


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised answer (``normalise_exact``), else 0.0.
    For single-word answers this agrees with ``scenes.scoring.is_correct``."""
    references = [answers] if isinstance(answers, str) else list(answers)
    predicted = normalise_exact(prediction)
    return float(any(normalise_exact(a) == predicted for a in references))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """A benchmark metric: ``score(prediction, sample_fields) -> float`` scores one answer;
    ``aggregate(frame) -> dict[str, float]`` summarises a DataFrame with one row per sample (columns
    ``score``, ``prediction`` and the fields the metric needs)."""

    name: str
    description: str
    score: Callable[[str, Mapping[str, Any]], float]
    aggregate: Callable[["pd.DataFrame"], dict[str, float]]


def _references(fields: Mapping[str, Any]) -> list[str]:
    """The ground truth of a sample: ``answers`` (a list or one string), else ``answer``."""
    for key in ("answers", "answer"):
        if key in fields:
            value = fields[key]
            return [value] if isinstance(value, str) else [str(v) for v in value]
    raise KeyError(f"sample fields need 'answers' (or 'answer'); got keys {sorted(fields)}")


def _single_reference(fields: Mapping[str, Any]) -> str:
    references = _references(fields)
    if len(references) != 1:
        raise ValueError(f"expected exactly one reference answer, got {references!r}")
    return references[0]


def _require(frame: "pd.DataFrame", columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing columns {missing}; it has {list(frame.columns)}")


def _accuracy(frame: "pd.DataFrame") -> dict[str, float]:
    """Mean per-sample score as ``accuracy`` (0.0 for no rows), ``n``, and ``accuracy/<group>`` per
    value of a ``group`` column when there is one."""
    _require(frame, ["score"])
    n = len(frame)
    out = {"accuracy": float(frame["score"].mean()) if n else 0.0, "n": float(n)}
    if "group" in frame.columns:
        for group, scores in frame.groupby("group", sort=True)["score"]:
            out[f"accuracy/{group}"] = float(scores.mean())
    return out


def _frame_references(frame: "pd.DataFrame") -> list[str]:
    column = "answers" if "answers" in frame.columns else "answer"
    _require(frame, [column])
    return [_single_reference({column: v}) for v in frame[column]]


def _yes_no_score(prediction: str, fields: Mapping[str, Any]) -> float:
    return float(parse_yes_no(prediction) == _single_reference(fields).strip().lower())


def pope_aggregate(frame: "pd.DataFrame", parse: Callable[[str], str] = parse_yes_no) -> dict[str, float]:
    """``pope_metrics`` of a frame's predictions (read with ``parse``) and answers, with ``n``."""
    _require(frame, ["prediction"])
    return {**pope_metrics(list(frame["prediction"]), _frame_references(frame), parse), "n": float(len(frame))}


def _mme_aggregate(frame: "pd.DataFrame") -> dict[str, float]:
    _require(frame, ["score", "group", "pair_id"])
    rows = ({"subtask": g, "image_id": p, "correct": s > 0.5}
            for g, p, s in zip(frame["group"], frame["pair_id"], frame["score"]))
    return {**mme_scores(rows), "n": float(len(frame))}


def _localization_score(prediction: str, fields: Mapping[str, Any]) -> float:
    return localization_hit(prediction, fields["box"], fields.get("box_format", "image"),
                            width=fields.get("width"), height=fields.get("height"), bins=fields.get("bins"),
                            resized=fields.get("resized"))


def _choice_score(prediction: str, fields: Mapping[str, Any]) -> float:
    n_options = fields["n_options"] if "n_options" in fields else len(fields["options"])
    return choice_accuracy(prediction, _single_reference(fields), int(n_options))


METRICS: dict[str, Metric] = {
    "vqa": Metric(
        "vqa", "VQAv2 / TextVQA / VizWiz accuracy (fields: answers = the annotators' answers)",
        lambda prediction, fields: vqa_accuracy(prediction, _references(fields)), _accuracy),
    "localization": Metric(
        "localization", "RefCOCO(+/g) accuracy at IoU >= 0.5 (fields: box normalised to the image; "
        "box_format 'image' | 'padded' (+ width, height) | 'bins' (+ bins) | 'resized_pixels' (+ resized) | "
        "'thousandths')", _localization_score, _accuracy),
    "pope": Metric(
        "pope", "POPE yes/no correctness; aggregate adds precision, recall, f1, yes_ratio (fields: answer)",
        _yes_no_score, pope_aggregate),
    "multiple_choice": Metric(
        "multiple_choice", "ScienceQA-IMG / AI2D / MMBench option letter (fields: answer letter, "
        "options or n_options)", _choice_score, _accuracy),
    "mme": Metric(
        "mme", "MME yes/no correctness; aggregate gives acc, acc+ and score per subtask (group) over images "
        "(pair_id) and the perception total (fields: answer)", _yes_no_score, _mme_aggregate),
    "exact_match": Metric(
        "exact_match", "Exact match after light normalisation (fields: answers or answer)",
        lambda prediction, fields: exact_match(prediction, _references(fields)), _accuracy),
}


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``; a ValueError listing the names otherwise."""
    return METRICS[check_choice("metric", name, METRICS)]
