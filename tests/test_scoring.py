"""Scoring modes: each official rule on one case per class of disagreement with the lenient parsers or
lmms-eval (the expected values are the official scripts' results, worked out by hand from them)."""
import importlib.metadata

import pandas as pd
import pytest

from analysis_lib.evaluation import lmms
from analysis_lib.evaluation.metrics import normalise_vqa_answer, parse_choice, parse_yes_no
from analysis_lib.evaluation.official import (
    gqa_correct, mme_answer, normalise_evalai_answer, parse_box_strict, pope_answer, sqa_choice,
)
from analysis_lib.evaluation.prompts import STYLES, embedded_style
from analysis_lib.evaluation.runner import run_grid
from analysis_lib.evaluation.scoring import Scoring, benchmark_family, frame_of

OFFICIAL, LENIENT = Scoring(), Scoring("lenient")


def score(scoring, family, prediction, **fields):
    return scoring.rule(family).score(prediction, fields)


# -------------------------------------------------------------------------------------------- MME

@pytest.mark.parametrize("answer, official, lenient", [
    ("Nope.", "no", "yes"),               # "no" in the first four characters
    ("Yes, no doubt.", "yes", "no"),      # "yes" first, whatever follows
    ("I don't see one.", "other", "yes"),  # neither: wrong for both labels
    ("y", "other", "yes"),                # lmms-eval reads a lone "y" as yes; calculation.py does not
    ("No", "no", "no"), ("YES", "yes", "yes"),
])
def test_mme_reads_the_first_characters(answer, official, lenient):
    assert mme_answer(answer) == official and parse_yes_no(answer) == lenient


def test_mme_unparsable_answer_is_wrong_for_both_labels():
    for label in ("yes", "no"):
        assert score(OFFICIAL, "mme", "I don't see one.", answer=label) == 0.0
    assert score(LENIENT, "mme", "I don't see one.", answer="yes") == 1.0


def test_mme_perception_score_official_vs_lenient():
    predictions = ["Nope.", "Yes, no doubt.", "Yes", "No"]  # one image: labels no, yes; another: yes, no
    frame = pd.DataFrame({"prediction": predictions, "answer": ["no", "yes", "yes", "no"],
                          "group": ["existence"] * 4, "pair_id": [1, 1, 2, 2]})
    official = frame.assign(score=[score(OFFICIAL, "mme", p, answer=a) for p, a in zip(frame.prediction, frame.answer)])
    lenient = frame.assign(score=[score(LENIENT, "mme", p, answer=a) for p, a in zip(frame.prediction, frame.answer)])
    assert OFFICIAL.rule("mme").aggregate(official)["perception"] == 200.0
    assert LENIENT.rule("mme").aggregate(lenient)["perception"] == 50.0 + 50.0  # acc 50, acc+ 50


# -------------------------------------------------------------------------------- TextVQA / VizWiz

@pytest.mark.parametrize("text, evalai, vqa", [
    ("red,white", "redwhite", "red white"),  # commas deleted, not spaced
    ("dog's bowl", "dog 's bowl", "dog's bowl"),  # "'s" split off
    ("what?", "what", "what"), ("Two dogs.", "2 dogs", "2 dogs"), ("1,000", "1000", "1000"),
])
def test_evalai_processor(text, evalai, vqa):
    assert normalise_evalai_answer(text) == evalai and normalise_vqa_answer(text) == vqa


def test_textvqa_and_vizwiz_score_with_the_evalai_processor():
    answers = ["red,white", "red white"] + ["blue"] * 8
    for family in ("textvqa", "vizwiz"):
        assert score(OFFICIAL, family, "red, white", answers=answers) == pytest.approx(0.3)
        assert score(LENIENT, family, "red, white", answers=answers) == pytest.approx(0.6)
    assert score(OFFICIAL, "vqav2", "red, white", answers=answers) == pytest.approx(0.6)  # VQA script


def test_kept_where_lmms_eval_differs_vqa_periods_and_double_comma():
    # lmms-eval's processor removes at most 32 periods and reads "1,,000" as "1000" in VQAv2.
    assert normalise_vqa_answer("yes" + "." * 40) == "yes"
    assert normalise_evalai_answer("yes" + "." * 40) == "yes"
    assert normalise_vqa_answer("1,,000") == "1 000"  # the VQA script's digit-comma rule needs one comma


# ------------------------------------------------------------------------------------------- GQA

@pytest.mark.parametrize("prediction, answer, expected", [
    ("Yes.", "yes", 1.0), ("yes", "yes", 1.0),
    ("the dog", "dog", 0.0),       # no article removal in GQA's eval.py
    ("yes!", "yes", 0.0),          # only trailing periods go
])
def test_gqa(prediction, answer, expected):
    assert gqa_correct(prediction, answer) == expected
    assert score(OFFICIAL, "gqa", prediction, answer=answer) == expected


# ------------------------------------------------------------------------------------------ POPE

@pytest.mark.parametrize("answer, official, lenient", [
    ("No!", "yes", "no"), ("NOT at all", "yes", "no"),  # eval_pope.py: exact words "No", "no", "not"
    ("No, there is not.", "no", "no"), ("Yes. There is no cat.", "yes", "yes"),
    ("There isn't a dog.", "yes", "yes"), ("no", "no", "no"),
])
def test_pope_words(answer, official, lenient):
    assert pope_answer(answer) == official and parse_yes_no(answer) == lenient


def test_pope_yes_ratio_counts_predictions_not_labels():
    frame = pd.DataFrame({"prediction": ["Yes", "Yes", "Yes", "no"], "answer": ["yes", "no", "no", "no"]})
    out = OFFICIAL.rule("pope").aggregate(frame)
    assert out["yes_ratio"] == 0.75 and out["accuracy"] == 0.5  # lmms-eval 0.7.3 would give 0.25 (labels)


# ------------------------------------------------------------------------------- multiple choice

@pytest.mark.parametrize("answer, official, lenient", [
    ("Not B", None, "B"),                  # no rule of eval_science_qa.py matches
    ("C. The answer is B", "C", "B"),      # a leading "C. " wins
    ("B", "B", "B"), ("The answer is B.", "B", "B"),
    ("b", None, "B"), ("(B)", None, "B"), ("B.", None, "B"),  # case and shape matter
    ("The answer is B", None, "B"),        # its pattern needs a character after the letter
    ("E", None, None),                     # beyond the four options
])
def test_multiple_choice_as_eval_science_qa(answer, official, lenient):
    assert sqa_choice(answer, 4) == official and parse_choice(answer, 4) == lenient
    for family in ("scienceqa_img", "ai2d"):
        assert score(OFFICIAL, family, answer, answer="C", n_options=4) == float(official == "C")


# --------------------------------------------------------------------------------------- RefCOCO

@pytest.mark.parametrize("answer, box", [
    ("[0.1, 0.2, 0.5, 0.6]", (0.1, 0.2, 0.5, 0.6)),
    ("The box is [0.1,0.2, 0.5 ,0.6].", (0.1, 0.2, 0.5, 0.6)),
    ("[0.5, 0.6, 0.1, 0.2]", (0.5, 0.6, 0.1, 0.2)),     # kept as written
    ("[0.1, 0.2, 0.5, 0.6, 0.7]", None),                # five numbers: not a box
    ("(0.1, 0.2), (0.5, 0.6)", None), ("0.1 0.2 0.5 0.6", None), ("[1, 2, 3]", None),
])
def test_strict_box(answer, box):
    assert parse_box_strict(answer) == (None if box is None else pytest.approx(box))


@pytest.mark.parametrize("answer, official, lenient", [
    ("[0.1, 0.2, 0.5, 0.6]", 1.0, 1.0),
    ("[0.5, 0.6, 0.1, 0.2]", 0.0, 1.0),        # swapped corners: no area (and no crash)
    ("[0.1, 0.2, 0.5, 0.6, 0.9]", 0.0, 1.0),   # cut to four by the lenient parser
    ("(0.1,0.2),(0.5,0.6)", 0.0, 1.0),
])
def test_refcoco(answer, official, lenient):
    target = (0.1, 0.2, 0.5, 0.6)
    assert score(OFFICIAL, "refcoco", answer, box=target, box_format="image") == official
    assert score(LENIENT, "refcoco", answer, box=target, box_format="image") == lenient


@pytest.mark.parametrize("width, height, answer, target", [
    # 200 x 100: the padded square adds 50 px above and below; y_square = (y_image * 100 + 50) / 200.
    (200, 100, "[0.10, 0.25, 0.40, 0.40]", (0.1, 0.0, 0.4, 0.3)),
    # 100 x 300: 100 px left and right; x_square = (x_image * 100 + 100) / 300.
    (100, 300, "[0.3333, 0.10, 0.4333, 0.50]", (0.0, 0.1, 0.3, 0.5)),
])
def test_both_box_frames_on_non_square_images(width, height, answer, target):
    fields = dict(box=target, width=width, height=height)
    assert score(OFFICIAL, "refcoco", answer, box_format="padded", **fields) == 1.0
    assert score(OFFICIAL, "refcoco", answer, box_format="image", **fields) == 0.0
    image_answer = "[" + ", ".join(f"{c:.2f}" for c in target) + "]"
    assert score(OFFICIAL, "refcoco", image_answer, box_format="image", **fields) == 1.0
    assert score(OFFICIAL, "refcoco", image_answer, box_format="padded", **fields) == 0.0


def test_box_frame_setting():
    llava, nxt, embedded = STYLES["llava"].box_format, STYLES["llava_next"].box_format, embedded_style(32).box_format
    assert (Scoring().box_format(llava), Scoring().box_format(nxt)) == ("padded", "image")  # the family's
    assert Scoring(box_frame="image").box_format(llava) == "image"
    assert Scoring(box_frame="padded").box_format(nxt) == "padded"
    assert Scoring(box_frame="padded").box_format(embedded) == "bins"  # the embedded model answers in bins
    assert [frame_of(f) for f in ("padded", "image", "bins")] == ["padded", "image", "image"]


def test_qwen_boxes_in_their_own_frames():
    """Qwen2.5-VL answers pixels of the image its processor resized (640x480 -> 644x476, multiples of 28),
    Qwen3-VL thousandths of the image; both as JSON, which the official rule's first brackets read."""
    from analysis_lib.evaluation.runner import score_fields
    from analysis_lib.evaluation.datasets import EvalSample
    from PIL import Image
    qwen25, qwen3 = STYLES["qwen2_5_vl"], STYLES["qwen3_vl"]
    assert qwen25.model_image_size(640, 480) == (644, 476) and qwen3.model_image_size(640, 480) is None
    target = (0.25, 0.5, 0.75, 1.0)
    sample = EvalSample(sample_id="s", dataset="refcoco", task="localization", question="the cup", answers=[],
                        image=Image.new("RGB", (640, 480)), box=target)
    pixels = '```json\n[{"bbox_2d": [161, 238, 483, 476], "label": "cup"}]\n```'
    thousandths = '[{"bbox_2d": [250, 500, 750, 1000], "label": "cup"}]'
    for mode in (OFFICIAL, LENIENT):
        assert score(mode, "refcoco", pixels, **score_fields(sample, "resized_pixels", qwen25)) == 1.0
        assert score(mode, "refcoco", thousandths, **score_fields(sample, "thousandths", qwen3)) == 1.0
        # the same numbers read in the other family's frame miss
        assert score(mode, "refcoco", pixels, **score_fields(sample, "thousandths", qwen3)) == 0.0
    assert (Scoring().box_format(qwen25.box_format), Scoring().box_format(qwen3.box_format)) == (
        "resized_pixels", "thousandths")
    assert [frame_of(f) for f in ("resized_pixels", "thousandths")] == ["resized_pixels", "thousandths"]
    with pytest.raises(ValueError, match="box_format='resized_pixels' needs resized"):
        score(OFFICIAL, "refcoco", pixels, box=target, box_format="resized_pixels")


# ----------------------------------------------------------------------------- rule resolution

def test_rules_by_benchmark_then_task():
    assert benchmark_family("textvqa", "vqa") == "textvqa" and benchmark_family("my_vqa", "vqa") == "vqav2"
    assert benchmark_family("refcoco+", "localization") == "refcoco"
    assert benchmark_family("refcoco", "localization", "bins") == "bins"
    assert benchmark_family("gqa", "exact_match") == "gqa" and benchmark_family("synthetic", "exact_match") == "exact_match"
    assert benchmark_family("pope", "vqa") == "vqav2"  # a task the benchmark does not have: the task's rule


def test_the_synthetic_suite_scores_the_same_in_every_mode():
    for mode in (OFFICIAL, LENIENT):
        assert mode.rule("exact_match").score("Red.", {"answers": ["red"]}) == 1.0
        assert mode.rule("bins").score("[0, 0, 2, 4]", {"box": (0, 0, 0.5, 1), "box_format": "bins", "bins": 5}) == 1.0
    assert OFFICIAL.rule("bins") is LENIENT.rule("bins")


# ------------------------------------------------------------------------------------- bad input

@pytest.fixture
def no_lmms_eval(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", missing)


def test_unknown_mode_or_frame_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"scoring='strict'.*'official', 'lmms-eval', 'lenient'"):
        Scoring("strict")
    with pytest.raises(ValueError, match=r"box_frame='square'.*'padded', 'image'"):
        Scoring(box_frame="square")


def test_lmms_eval_missing_names_the_install_command(no_lmms_eval):
    with pytest.raises(ValueError, match=r'lmms-eval 0\.7\.3, which is not installed.*pip install -e "\.\[lmms\]"'):
        Scoring("lmms-eval")


def test_lmms_eval_of_another_version_or_with_the_padded_frame(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.6.0")
    with pytest.raises(ValueError, match=r"0\.6\.0 is installed.*\[lmms\]"):
        Scoring("lmms-eval")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: lmms.LMMS_EVAL_VERSION)
    with pytest.raises(ValueError, match=r"box_frame='padded' cannot be used with scoring='lmms-eval'"):
        Scoring("lmms-eval", "padded")
    assert Scoring("lmms-eval").box_format("padded") == "image"  # lmms-eval reads fractions of the image


def test_run_grid_refuses_bad_scoring_before_loading_anything(tmp_path, no_lmms_eval):
    missing_model = str(tmp_path / "no-model")
    for kwargs, message in [({"scoring": "strict"}, "scoring='strict'"), ({"box_frame": "square"}, "box_frame="),
                            ({"scoring": "lmms-eval"}, r"pip install -e")]:
        with pytest.raises(ValueError, match=message):
            run_grid([missing_model], ["none"], ["synthetic"], tmp_path, **kwargs)
    assert not (tmp_path / "parts").exists()


def test_summaries_state_the_scoring_mode_and_box_frame():
    import json

    from analysis_lib.evaluation.runner import summarize
    rows = [{"model": "m", "dataset": "pope", "setting": "none", "task": "yes_no", "scoring": mode, "box_frame": "padded",
             "rule": "pope", "prediction": p, "answers": json.dumps([a]), "score": score(scoring, "pope", p, answer=a),
             "flops_reduction": 0.0} for mode, scoring in (("official", OFFICIAL), ("lenient", LENIENT))
            for p, a in (("No!", "no"), ("Yes", "yes"))]
    summary = summarize(pd.DataFrame(rows)).set_index("scoring")
    assert summary.loc["official", "accuracy"] == 0.5 and summary.loc["lenient", "accuracy"] == 1.0
    assert (summary.box_frame == "padded").all() and summary.loc["official", "yes_ratio"] == 1.0
