"""Benchmark metrics, checked against values worked out by hand."""
import pandas as pd
import pytest

from analysis_lib.evaluation.metrics import (
    CONTRACTIONS, METRICS, MME_PERCEPTION, Metric, bins_to_box, box_iou, choice_accuracy, exact_match,
    get_metric, localization_hit, mme_scores, normalise_vqa_answer, parse_box, parse_choice, parse_yes_no,
    pope_metrics, square_to_image_box, vqa_accuracy,
)
from analysis_lib.scenes import TASKS, generate_sample, is_correct


# ------------------------------------------------------------------------------------------- VQA

@pytest.mark.parametrize("text, expected", [
    ("Two", "2"), ("none", "0"), ("TEN", "10"),                    # number words -> digits
    ("the dog.", "dog"), ("A cat", "cat"), ("an apple", "apple"),  # articles, final period
    ("dont", "don't"), ("isnt", "isn't"), ("don't", "don't"),       # contractions
    ("couldnt've", "couldn't've"), ("couldn'tve", "couldn't've"), ("couldntve", "couldntve"),
    ("1,000", "1000"),                                              # comma between digits: deleted
    ("3.5", "3.5"), (".5", ".5"), ("a.b", "ab"),                    # period kept only before a digit
    ("yes!", "yes"), ("Yes", "yes"), ("  yes\n", "yes"),
    ("x-ray", "x ray"),        # a mark with no space beside it becomes a space...
    ("x-ray -y", "xray y"),    # ...but is deleted everywhere once it appears next to a space
    ("red,white", "red white"), ("red, white", "red white"),
    ("1,000-yard", "1000yard"),  # a digit comma deletes every mark
    ("what's up?", "what's up"), ("12:30", "12:30"),               # apostrophes and colons are kept
])
def test_vqa_normalisation(text, expected):
    assert normalise_vqa_answer(text) == expected


def test_contraction_table_entries():
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["wont"] == "won't"
    assert CONTRACTIONS["yall'd've"] == CONTRACTIONS["y'alld've"] == CONTRACTIONS["y'all'dve"] == "y'all'd've"
    assert CONTRACTIONS["oclock"] == "o'clock" and CONTRACTIONS["twas"] == "'twas"
    assert "its" not in CONTRACTIONS and "well" not in CONTRACTIONS  # real words stay as they are


@pytest.mark.parametrize("matches, expected", [
    # k of 10 annotators agree: the k matching leave-one-out subsets see k-1, the others see k.
    (0, 0.0), (1, 0.3), (2, 0.6),
    (3, 0.9),   # (3 * 2/3 + 7 * 1) / 10
    (4, 1.0), (10, 1.0),
])
def test_vqa_accuracy_counts(matches, expected):
    answers = ["two"] * matches + ["three"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("The dog.", ["dog"] * 4 + ["cat"] * 6) == 1.0
    assert vqa_accuracy("dont", ["don't"] * 10) == 1.0
    assert vqa_accuracy("1,000", ["1000"] * 10) == 1.0
    assert vqa_accuracy("3.5", ["35"] * 10) == 0.0 and vqa_accuracy("3.5", ["3.5"] * 10) == 1.0
    assert vqa_accuracy("yes!", ["Yes"] * 10) == 1.0
    assert vqa_accuracy("yes", ["no"] * 10) == 0.0


def test_vqa_accuracy_fewer_than_ten_answers():
    # yes, yes, no: each "yes" sees one other "yes" (1/3), the "no" sees two (2/3) -> (4/3) / 3.
    assert vqa_accuracy("yes", ["yes", "yes", "no"]) == pytest.approx(4 / 9)
    assert vqa_accuracy("yes", ["yes"]) == 0.0  # leave-one-out leaves nothing to match
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy("yes", [])
    with pytest.raises(TypeError):
        vqa_accuracy("yes", "yes")


# ------------------------------------------------------------------------------------------ boxes

@pytest.mark.parametrize("text, expected", [
    ("[0.12, 0.3, 0.5, 0.7]", (0.12, 0.3, 0.5, 0.7)),
    ("(0.12,0.3),(0.5,0.7)", (0.12, 0.3, 0.5, 0.7)),
    ("0.12 0.3 0.5 0.7", (0.12, 0.3, 0.5, 0.7)),
    ("The box is [0.12, 0.3, 0.5, 0.7].", (0.12, 0.3, 0.5, 0.7)),
    ("[3, 5, 10, 20]", (3.0, 5.0, 10.0, 20.0)),
    ("[0.5, 0.7, 0.12, 0.3]", (0.12, 0.3, 0.5, 0.7)),             # reordered
    ("[0.5, 0.3, 0.12, 0.7]", (0.12, 0.3, 0.5, 0.7)),
    ("x1: 0.1, y1: 0.2, x2: 0.5, y2: 0.6", (0.1, 0.2, 0.5, 0.6)),  # "x1" is a name, not a number
    ("Object 2 is at [0.1, 0.2, 0.3, 0.4]", (0.1, 0.2, 0.3, 0.4)),  # the bracketed four win
    ("[1, 2, 3]", None), ("I cannot see it.", None), ("", None),
])
def test_parse_box(text, expected):
    assert parse_box(text) == (None if expected is None else pytest.approx(expected))


def test_box_iou_by_hand():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)  # overlap 1, union 4 + 4 - 1
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 0.5)) == pytest.approx(0.5)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4)) == pytest.approx(1.0)


def test_square_to_image_box_by_hand():
    # 200 x 100 image: a 200 x 200 square with 50 px of padding above and below.
    assert square_to_image_box((0.25, 0.25, 0.75, 0.75), 200, 100) == pytest.approx((0.25, 0.0, 0.75, 1.0))
    # y: 0.5 * 200 - 50 = 50 -> 0.5; 0.6 * 200 - 50 = 70 -> 0.7; x is unchanged.
    assert square_to_image_box((0.1, 0.5, 0.4, 0.6), 200, 100) == pytest.approx((0.1, 0.5, 0.4, 0.7))
    # Inside the top padding: clipped to the image edge.
    assert square_to_image_box((0.0, 0.0, 1.0, 0.2), 200, 100) == pytest.approx((0.0, 0.0, 1.0, 0.0))
    # 100 x 200 (tall): padding left and right; x: 0.5 * 200 - 50 = 50 -> 0.5, 150 - 50 = 100 -> 1.0.
    assert square_to_image_box((0.5, 0.1, 0.75, 0.2), 100, 200) == pytest.approx((0.5, 0.1, 1.0, 0.2))
    # 201 x 100: the offset is (201 - 100) // 2 = 50 (floor), as LLaVA's expand2square pastes it.
    assert square_to_image_box((0.0, 0.5, 1.0, 0.5), 201, 100)[1] == pytest.approx((100.5 - 50) / 100)
    assert square_to_image_box((0.2, 0.3, 0.4, 0.5), 64, 64) == pytest.approx((0.2, 0.3, 0.4, 0.5))
    with pytest.raises(ValueError, match="width"):
        square_to_image_box((0, 0, 1, 1), 0, 10)


def test_bins_to_box():
    assert bins_to_box((0, 0, 31, 31), 32) == pytest.approx((0.0, 0.0, 1.0, 1.0))
    assert bins_to_box((0, 1, 2, 4), 5) == pytest.approx((0.0, 0.25, 0.5, 1.0))  # b / (bins - 1)
    for bad in [(0, 0, 5, 1), (0, 0, 1), (0.5, 0, 1, 1), (-1, 0, 1, 1)]:
        with pytest.raises(ValueError, match="box"):
            bins_to_box(bad, 5)
    with pytest.raises(ValueError, match="bins"):
        bins_to_box((0, 0, 0, 0), 1)


def test_localization_hit_image_format_threshold():
    assert localization_hit("[0, 0, 1, 1]", (0, 0, 1, 0.5)) == 1.0    # IoU exactly 0.5 counts
    assert localization_hit("[0, 0, 1, 1]", (0, 0, 1, 0.49)) == 0.0   # IoU 0.49
    assert localization_hit("The box is (0.1,0.2),(0.3,0.4).", (0.1, 0.2, 0.3, 0.4), "image") == 1.0
    assert localization_hit("no idea", (0.1, 0.2, 0.3, 0.4), "image") == 0.0


def test_localization_hit_square_format():
    # 200 x 100 image. Square (0.1, 0.6, 0.4, 0.7) -> y (120 - 50) / 100 = 0.7, (140 - 50) / 100 = 0.9.
    target = (0.1, 0.7, 0.4, 0.9)
    prediction = "[0.1, 0.6, 0.4, 0.7]"
    assert localization_hit(prediction, target, "padded", width=200, height=100) == 1.0
    assert localization_hit(prediction, target, "image") == 0.0  # read unconverted: no overlap
    assert localization_hit("nothing here", target, "padded", width=200, height=100) == 0.0
    with pytest.raises(ValueError, match="width and height"):
        localization_hit(prediction, target, "padded", width=200)


def test_localization_hit_bins_format():
    # 5 bins: [0, 0, 2, 4] -> (0, 0, 0.5, 1.0).
    assert localization_hit("[0, 0, 2, 4]", (0.0, 0.0, 0.5, 1.0), "bins", bins=5) == 1.0
    assert localization_hit("[0, 0, 1, 4]", (0.0, 0.0, 0.5, 1.0), "bins", bins=5) == 1.0   # IoU 0.5
    assert localization_hit("[0, 0, 1, 3]", (0.0, 0.0, 0.5, 1.0), "bins", bins=5) == 0.0   # IoU 0.375
    assert localization_hit("[0.1, 0.2, 0.3, 0.4]", (0.1, 0.2, 0.3, 0.4), "bins", bins=5) == 0.0
    assert localization_hit("[0, 0, 2, 9]", (0.0, 0.0, 0.5, 1.0), "bins", bins=5) == 0.0    # bin out of range
    with pytest.raises(ValueError, match="bins"):
        localization_hit("[0, 0, 2, 4]", (0.0, 0.0, 0.5, 1.0), "bins")


def test_localization_hit_bad_format():
    with pytest.raises(ValueError, match=r"box_format='pixels'.*'image', 'padded', 'bins'"):
        localization_hit("[0, 0, 1, 1]", (0, 0, 1, 1), "pixels")


def test_bins_agree_with_the_synthetic_suite_scorer():
    sample = generate_sample("test", "localization", 0)
    bins = 32
    x1, y1, x2, y2 = (int(v) for v in sample.answer.strip("[]").split(","))
    hits = []
    for shift in range(8):
        prediction = f"[{x1 + shift}, {y1}, {min(x2 + shift, bins - 1)}, {y2}]"
        hit = localization_hit(prediction, sample.box_normalised, "bins", bins=bins)
        assert hit == float(is_correct(sample, prediction, bins))
        hits.append(hit)
    assert hits[0] == 1.0 and hits[-1] == 0.0  # the shifts cross the threshold


# ----------------------------------------------------------------------------------------- yes/no

@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("no", "no"), ("No", "no"), ("NO!", "no"), ("No, there is no dog.", "no"),
    ("Yes, there is a dog in the image.", "yes"),
    ("There is not a dog in the image.", "no"),
    ("Yes. There is no cat.", "yes"),       # only the first sentence counts
    ("There isn't a dog.", "yes"),          # POPE's rule: contractions are not "no"/"not"
    ("Nothing", "yes"), ("", "yes"), ("maybe", "yes"),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_metrics_confusion_matrix():
    # labels: 4 yes, 6 no. TP 3, FN 1, FP 2, TN 4.
    labels = ["yes"] * 4 + ["no"] * 6
    predictions = ["Yes.", "yes, there is", "Yes", "No, there is not.",
                   "Yes", "yes", "No.", "no", "There is no cat.", "NO"]
    m = pope_metrics(predictions, labels)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))  # = 2/3
    assert m["yes_ratio"] == pytest.approx(5 / 10)


def test_pope_metrics_zero_divisions_and_errors():
    m = pope_metrics(["no", "No."], ["no", " NO "])
    assert m == {"accuracy": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    assert pope_metrics([], []) == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    with pytest.raises(ValueError, match="labels='maybe'"):
        pope_metrics(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])


# -------------------------------------------------------------------------------- multiple choice

@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("B: dog", "B"), ("b) cat", "B"),
    ("The answer is B", "B"), ("The answer is B.", "B"), ("Answer: (c)", "C"), ("option D", "D"),
    ("I think it is B", "B"),
    ("The answer is a cat", None),          # an article, not option a
    ("Both A and B", None), ("C or D", None),
    ("E", None), ("The answer is E.", None),  # beyond 4 options
    ("I do not know", None), ("", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, 4) == expected


def test_parse_choice_option_count_and_accuracy():
    assert parse_choice("E", 5) == "E"
    assert parse_choice("A cat is on the mat", 4) is None   # long answer: "A" is likely the article
    assert parse_choice("A cat", 4) == "A"                  # short answer: the letter
    assert parse_choice("I would pick B", 10) == "B"        # "I" (an option of 10) read as the pronoun
    assert choice_accuracy("The answer is C.", "C", 4) == 1.0
    assert choice_accuracy("(c)", "c", 4) == 1.0
    assert choice_accuracy("The answer is C.", "B", 4) == 0.0
    assert choice_accuracy("unsure", "B", 4) == 0.0
    with pytest.raises(ValueError, match="answer_letter='E'"):
        choice_accuracy("A", "E", 4)
    with pytest.raises(ValueError, match="n_options"):
        parse_choice("A", 0)


# -------------------------------------------------------------------------------------------- MME

def test_mme_scores_by_hand():
    rows = [
        # existence: 3 of 4 questions right -> acc 75; image 1 both right, image 2 not -> acc+ 50.
        {"subtask": "existence", "image_id": 1, "correct": True},
        {"subtask": "existence", "image_id": 1, "correct": True},
        {"subtask": "existence", "image_id": 2, "correct": True},
        {"subtask": "existence", "image_id": 2, "correct": False},
        # OCR: all right -> 100 + 100.
        {"subtask": "OCR", "image_id": "a", "correct": True},
        {"subtask": "OCR", "image_id": "a", "correct": True},
        # a cognition subtask: reported, not summed.
        {"subtask": "code_reasoning", "image_id": 7, "correct": True},
        {"subtask": "code_reasoning", "image_id": 7, "correct": False},
    ]
    s = mme_scores(rows)
    assert s["existence/acc"] == 75.0 and s["existence/acc_plus"] == 50.0 and s["existence/score"] == 125.0
    assert s["OCR/score"] == 200.0
    assert s["code_reasoning/acc"] == 50.0 and s["code_reasoning/acc_plus"] == 0.0
    assert s["perception"] == 325.0
    assert len(MME_PERCEPTION) == 10 and "code_reasoning" not in MME_PERCEPTION


# ------------------------------------------------------------------------------------ exact match

def test_exact_match():
    assert exact_match("Red.", "red") == 1.0
    assert exact_match("  3 ", ["3"]) == 1.0
    assert exact_match("yes", ["no", "Yes"]) == 1.0
    assert exact_match("three", "3") == 0.0
    assert exact_match("blue", ["red"]) == 0.0
    assert exact_match("", "red") == 0.0


def test_exact_match_agrees_with_the_synthetic_suite_scorer():
    for task in TASKS:
        if task == "localization":
            continue
        sample = generate_sample("test", task, 1)
        for prediction in (sample.answer.upper() + ".", " " + sample.answer, "zebra"):
            assert exact_match(prediction, sample.answer) == float(is_correct(sample, prediction, 32))


# --------------------------------------------------------------------------------------- registry

def test_registry_names_and_errors():
    assert set(METRICS) == {"vqa", "localization", "pope", "multiple_choice", "mme", "exact_match"}
    assert all(isinstance(m, Metric) and m.name == name for name, m in METRICS.items())
    assert get_metric("pope") is METRICS["pope"]
    with pytest.raises(ValueError, match=r"metric='bleu'.*'vqa'.*'exact_match'"):
        get_metric("bleu")


def test_registry_scores():
    assert get_metric("vqa").score("Two", {"answers": ["2"] * 2 + ["3"] * 8}) == pytest.approx(0.6)
    loc = get_metric("localization")
    assert loc.score("[0.1, 0.6, 0.4, 0.7]", {"box": (0.1, 0.7, 0.4, 0.9), "box_format": "padded",
                                               "width": 200, "height": 100}) == 1.0
    assert loc.score("[0.1, 0.6, 0.4, 0.7]", {"box": (0.1, 0.7, 0.4, 0.9)}) == 0.0  # default: image
    assert loc.score("[0, 0, 2, 4]", {"box": (0, 0, 0.5, 1), "box_format": "bins", "bins": 5}) == 1.0
    assert loc.score("garbage", {"box": (0, 0, 0.5, 1), "box_format": "bins", "bins": 5}) == 0.0
    assert get_metric("pope").score("No, it is not.", {"answer": "no"}) == 1.0
    assert get_metric("pope").score("Yes", {"answers": ["no"]}) == 0.0
    mc = get_metric("multiple_choice")
    assert mc.score("(B) a dog", {"answer": "B", "options": ["cat", "dog", "fish"]}) == 1.0
    assert mc.score("D", {"answer": "B", "options": ["cat", "dog", "fish"]}) == 0.0  # only A-C exist
    assert mc.score("D", {"answer": "D", "n_options": 4}) == 1.0
    assert get_metric("mme").score("Yes, it is.", {"answer": "Yes"}) == 1.0
    assert get_metric("exact_match").score("Blue.", {"answers": ["blue"]}) == 1.0
    assert get_metric("exact_match").score("blue", {"answer": "red"}) == 0.0
    with pytest.raises(KeyError, match="answers"):
        get_metric("exact_match").score("blue", {})


def _scored(metric_name, frame):
    metric = get_metric(metric_name)
    fields = [c for c in frame.columns if c != "prediction"]
    frame = frame.copy()
    frame["score"] = [metric.score(p, {k: row[k] for k in fields})
                      for p, (_, row) in zip(frame["prediction"], frame.iterrows())]
    return metric.aggregate(frame)


def test_aggregate_accuracy_with_groups():
    frame = pd.DataFrame({
        "prediction": ["red", "blue", "3", "4"],
        "answers": ["red", "red", "3", "3"],
        "group": ["colour", "colour", "counting", "counting"],
    })
    out = _scored("exact_match", frame)
    assert out == {"accuracy": 0.5, "n": 4.0, "accuracy/colour": 0.5, "accuracy/counting": 0.5}
    vqa = pd.DataFrame({"prediction": ["two", "dog"], "answers": [["2"] * 10, ["dog"] * 2 + ["cat"] * 8]})
    assert _scored("vqa", vqa) == pytest.approx({"accuracy": (1.0 + 0.6) / 2, "n": 2.0})
    with pytest.raises(ValueError, match="missing columns"):
        get_metric("vqa").aggregate(pd.DataFrame({"prediction": ["x"]}))


def test_aggregate_pope():
    labels = ["yes"] * 4 + ["no"] * 6
    predictions = ["Yes.", "yes", "Yes", "No.", "Yes", "yes", "No.", "no", "no", "NO"]
    out = _scored("pope", pd.DataFrame({"prediction": predictions, "answer": labels}))
    assert out["accuracy"] == pytest.approx(0.7) and out["n"] == 10.0
    assert out["precision"] == pytest.approx(0.6) and out["recall"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(2 / 3) and out["yes_ratio"] == pytest.approx(0.5)


def test_aggregate_mme():
    frame = pd.DataFrame({
        "prediction": ["Yes", "No.", "Yes", "Yes", "yes", "no"],
        "answer": ["yes", "no", "yes", "no", "yes", "no"],
        "group": ["color", "color", "color", "color", "commonsense_reasoning", "commonsense_reasoning"],
        "pair_id": [1, 1, 2, 2, 3, 3],
    })
    out = _scored("mme", frame)
    # color: 3 of 4 right -> 75; image 1 both right, image 2 not -> 50.
    assert out["color/acc"] == 75.0 and out["color/acc_plus"] == 50.0 and out["color/score"] == 125.0
    assert out["commonsense_reasoning/score"] == 200.0
    assert out["perception"] == 125.0
    with pytest.raises(ValueError, match="pair_id"):
        get_metric("mme").aggregate(frame.drop(columns="pair_id").assign(score=1.0))
