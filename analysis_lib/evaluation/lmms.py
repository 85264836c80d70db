"""``--scoring lmms-eval``: scores computed by lmms-eval 0.7.3's own task functions (what FoPru reports).

Nothing of lmms-eval is re-implemented here: each rule builds the ``doc`` a task's
``process_results`` reads from a sample's fields and calls that function (and the task's aggregation
or metric function, as its YAML names it). lmms-eval is imported only when a score is asked for; it
is the optional extra ``pip install -e ".[lmms]"``.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
from collections.abc import Mapping
from functools import cache
from typing import Any

import pandas as pd

from .metrics import Metric, _accuracy, _references, _require, _single_reference

LMMS_EVAL_VERSION = "0.7.3"
INSTALL_COMMAND = 'pip install -e ".[lmms]"'
# The metric keyword arguments of the tasks scored by lmms-eval's generic exact_match (gqa.yaml, ai2d.yaml).
_EXACT_MATCH_KWARGS = {"ignore_case": True, "ignore_punctuation": True}

__all__ = ["INSTALL_COMMAND", "LMMS_EVAL_VERSION", "LMMS_RULES", "require_lmms_eval"]


def require_lmms_eval() -> None:
    """A ValueError naming the install command unless lmms-eval 0.7.3 is installed."""
    try:
        version = importlib.metadata.version("lmms-eval")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"scoring='lmms-eval' needs lmms-eval {LMMS_EVAL_VERSION}, which is not installed; install "
                         f"it with: {INSTALL_COMMAND}") from None
    if version != LMMS_EVAL_VERSION:
        raise ValueError(f"scoring='lmms-eval' reproduces lmms-eval {LMMS_EVAL_VERSION}, but {version} is installed; "
                         f"install the pinned one with: {INSTALL_COMMAND}")


@cache
def _module(name: str):
    """``lmms_eval.tasks.<name>`` or another lmms-eval module, imported on first use."""
    require_lmms_eval()
    return importlib.import_module(name if name.startswith("lmms_eval.") else f"lmms_eval.tasks.{name}")


def _exact_match(prediction: str, reference: str) -> float:
    """The registered exact_match on the stripped answer (lmms-eval strips answers before scoring)."""
    metrics = _module("lmms_eval.api.metrics")
    return float(metrics.exact_match_hf_evaluate(predictions=[prediction.strip()], references=[reference],
                                                 **_EXACT_MATCH_KWARGS)["exact_match"])


def _vqav2(prediction: str, fields: Mapping[str, Any]) -> float:
    doc = {"question_id": fields.get("sample_id"), "answers": [{"answer": a} for a in _references(fields)]}
    return float(_module("vqav2.utils").vqav2_process_results_val(doc, [prediction])["exact_match"])


def _textvqa(prediction: str, fields: Mapping[str, Any]) -> float:
    doc = {"question_id": fields.get("sample_id"), "answers": _references(fields)}
    return float(_module("textvqa.utils").textvqa_process_results(doc, [prediction])["exact_match"])


def _vizwiz(prediction: str, fields: Mapping[str, Any]) -> float:
    doc = {"question_id": fields.get("sample_id"), "answers": _references(fields)}
    return float(_module("vizwiz_vqa.utils").vizwiz_vqa_process_results(doc, [prediction])["exact_match"])


def _letters(fields: Mapping[str, Any]) -> str:
    n = int(fields["n_options"] if "n_options" in fields else len(fields["options"]))
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n]


def _scienceqa(prediction: str, fields: Mapping[str, Any]) -> float:
    letters = _letters(fields)
    doc = {"choices": list(letters), "answer": letters.index(_single_reference(fields).strip().upper())}
    return float(_module("scienceqa.utils").sqa_process_results(doc, [prediction])["exact_match"])


def _ai2d(prediction: str, fields: Mapping[str, Any]) -> float:
    """ai2d.yaml: its MultiChoiceRegexFilter, then the generic exact_match against the letter."""
    ai2d = _module("ai2d.utils")
    flt = ai2d.MultiChoiceRegexFilter(regex_pattern=r"([A-Z])\.", group_select=0, **_EXACT_MATCH_KWARGS)
    filtered = flt.apply([[prediction]], [{}])[0]
    return _exact_match(filtered, _single_reference(fields).strip().upper())


def _refcoco_result(prediction: str, fields: Mapping[str, Any]) -> dict:
    doc = {"question_id": fields.get("sample_id"), "answer": fields.get("question", ""), "bbox": list(fields["box"])}
    return _module("refcoco.utils_rec").refcoco_bbox_rec_process_result(doc, [prediction])["refcoco_ACC@0.5"]


def _refcoco_acc05(results: list[dict]) -> float:
    """refcoco_bbox_rec_acc05 (it prints each aggregate; silenced). It divides by zero on a mirrored box
    whose signed area cancels the target's; that is reported, not scored."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return float(_module("refcoco.utils_rec").refcoco_bbox_rec_acc05(results))
    except ZeroDivisionError:
        raise ValueError(f"lmms-eval {LMMS_EVAL_VERSION} fails (ZeroDivisionError in compute_iou) on a predicted box "
                         f"among {[r['pred'] for r in results][:5]}; score with scoring='official'") from None


def _refcoco(prediction: str, fields: Mapping[str, Any]) -> float:
    return _refcoco_acc05([_refcoco_result(prediction, fields)])


def _pope_result(prediction: str, fields: Mapping[str, Any]) -> dict:
    doc = {"question_id": fields.get("sample_id"), "answer": _single_reference(fields)}
    return _module("pope.utils").pope_process_results(doc, [prediction])["pope_accuracy"]


def _frame_fields(frame: pd.DataFrame) -> list[tuple[str, dict]]:
    _require(frame, ["prediction", "answers"])
    columns = [c for c in ("sample_id", "group", "pair_id") if c in frame.columns]
    return [(row["prediction"], {"answers": row["answers"], **{c: row[c] for c in columns}})
            for _, row in frame.iterrows()]


def _pope_aggregate(frame: pd.DataFrame) -> dict[str, float]:
    """pope.yaml's five aggregation functions over the frame."""
    pope = _module("pope.utils")
    results = [_pope_result(p, f) for p, f in _frame_fields(frame)]
    out = {name: float(getattr(pope, f"pope_aggregate_{fn}")(results)) if results else 0.0
           for name, fn in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
                            ("f1", "f1_score"), ("yes_ratio", "yes_ratio"))}
    return {**out, "n": float(len(frame))}


def _mme_result(prediction: str, fields: Mapping[str, Any]) -> dict:
    doc = {"question_id": fields.get("pair_id"), "answer": _single_reference(fields), "category": fields.get("group")}
    (value,) = _module("mme.utils").mme_process_results(doc, [prediction]).values()
    return value


def _mme_aggregate(frame: pd.DataFrame) -> dict[str, float]:
    """mme.yaml's aggregation per subtask and for its perception and cognition keys."""
    mme = _module("mme.utils")
    results = [_mme_result(p, f) for p, f in _frame_fields(frame)]
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for category in sorted({r["category"] for r in results}):
            chosen = [r for r in results if r["category"] == category]
            out[f"{category}/score"] = float(mme.mme_aggregate_results(chosen))
        for kind, names in mme.eval_type_dict.items():
            chosen = [r for r in results if r["category"] in names]
            out[kind.lower()] = float(mme.mme_aggregate_results(chosen)) if chosen else 0.0
    return {**out, "n": float(len(frame))}


# Rule per benchmark family (see ``scoring.benchmark_family``).
LMMS_RULES: dict[str, Metric] = {
    "vqav2": Metric("lmms-vqav2", "lmms-eval vqav2_process_results", _vqav2, _accuracy),
    "textvqa": Metric("lmms-textvqa", "lmms-eval textvqa_process_results", _textvqa, _accuracy),
    "vizwiz": Metric("lmms-vizwiz", "lmms-eval vizwiz_vqa_process_results", _vizwiz, _accuracy),
    "gqa": Metric("lmms-gqa", "lmms-eval exact_match (ignore case and punctuation)",
                  lambda p, f: _exact_match(p, _single_reference(f)), _accuracy),
    "pope": Metric("lmms-pope", "lmms-eval pope_process_results and pope_aggregate_*",
                   lambda p, f: float(_pope_result(p, f)["score"]), _pope_aggregate),
    "mme": Metric("lmms-mme", "lmms-eval mme_process_results and mme_aggregate_results",
                  lambda p, f: float(_mme_result(p, f)["score"]), _mme_aggregate),
    "scienceqa_img": Metric("lmms-scienceqa", "lmms-eval sqa_process_results", _scienceqa, _accuracy),
    "ai2d": Metric("lmms-ai2d", "lmms-eval ai2d MultiChoiceRegexFilter + exact_match", _ai2d, _accuracy),
    "refcoco": Metric("lmms-refcoco", "lmms-eval refcoco_bbox_rec_process_result, ACC@0.5", _refcoco, _accuracy),
}
