"""``--scoring lmms-eval`` against lmms-eval 0.7.3 itself, on generated answers.

Runs only where lmms-eval is installed: ``make check-lmms`` builds the throw-away environment
(runs/lmms-venv) and runs this file there; elsewhere it is reported as skipped. The reference side
reads each task's YAML with lmms-eval's own loader and follows it (filters, process_results or the
registered metric with its keyword arguments, the aggregation) — so the choice of function, document
fields and metric options in ``analysis_lib/evaluation/lmms.py`` is checked, not just restated.
"""
import random
from pathlib import Path

import pandas as pd
import pytest

lmms_eval = pytest.importorskip("lmms_eval")
from lmms_eval.api.registry import get_metric  # noqa: E402
from lmms_eval.utils import load_yaml_config  # noqa: E402

from analysis_lib.evaluation.scoring import Scoring  # noqa: E402

TASKS = Path(lmms_eval.__file__).parent / "tasks"
YAMLS = {"vqav2": "vqav2/vqav2_val.yaml", "textvqa": "textvqa/textvqa_val.yaml", "vizwiz": "vizwiz_vqa/vizwiz_vqa_val.yaml",
         "gqa": "gqa/gqa.yaml", "pope": "pope/pope.yaml", "mme": "mme/mme.yaml",
         "scienceqa_img": "scienceqa/scienceqa_img.yaml", "ai2d": "ai2d/ai2d.yaml",
         "refcoco": "refcoco/refcoco_bbox_rec_val.yaml"}
N = 400


def variants(rng: random.Random, core: str) -> str:
    """One answer shape around a core answer: case, punctuation, articles, prefixes, sentences."""
    shapes = ["{}", "{}.", "{}!", "{}?", "The answer is {}.", "Answer: {}", "{}, I think.", "It's {}.", "  {}  ",
              "{}\nbecause", "the {}", "{}'s", "{},{}", "Not {}", "{}. No.", "({})", "{} ...."]
    text = rng.choice(shapes).format(core, core)
    return rng.choice([str.lower, str.upper, str.title, str])(text)


def generated(family: str, rng: random.Random) -> list[tuple[str, dict, dict]]:
    """(prediction, our sample fields, lmms-eval's doc) triples."""
    out = []
    for i in range(N):
        if family in ("vqav2", "textvqa", "vizwiz"):
            pool = ["red", "red, white", "two", "2", "dog's", "1,000", "yes", "unanswerable", "the cat", "x-ray"]
            answers = [rng.choice(pool) for _ in range(10)]
            prediction = variants(rng, rng.choice(pool))
            doc = {"question_id": i, "answers": ([{"answer": a} for a in answers] if family == "vqav2" else answers)}
            out.append((prediction, {"answers": answers, "sample_id": i}, doc))
        elif family == "gqa":
            answer = rng.choice(["yes", "no", "left", "dog", "white"])
            prediction = variants(rng, rng.choice(["yes", "no", "left", "dog", "white", "a dog"]))
            out.append((prediction, {"answer": answer}, {"answer": answer}))
        elif family in ("pope", "mme"):
            label = rng.choice(["yes", "no"])
            prediction = variants(rng, rng.choice(["yes", "no", "nope", "y", "n", "yes, no doubt", "there is no dog"]))
            category = ["existence", "count", "OCR", "code_reasoning"][i // 2 % 4]  # both questions of a pair
            pair = f"{category}/{i // 2}"
            fields = {"answer": label, "sample_id": i, "group": category, "pair_id": pair}
            out.append((prediction, fields, {"question_id": pair if family == "mme" else i, "answer": label,
                                             "category": category}))
        elif family in ("scienceqa_img", "ai2d"):
            n = rng.choice([2, 3, 4, 5])
            answer = rng.randrange(n)
            prediction = variants(rng, rng.choice(["A", "B", "C", "D", "E", "b", "B. cat", "C. The answer is B"]))
            options = [f"option {k}" for k in range(n)]
            out.append((prediction, {"answer": "ABCDE"[answer], "options": options},
                        {"choices" if family == "scienceqa_img" else "options": options, "answer": answer}))
        else:  # refcoco
            x, y = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
            target = [x, y, x + rng.uniform(0.1, 0.5), y + rng.uniform(0.1, 0.5)]
            guess = [c + rng.uniform(-0.15, 0.15) for c in target]
            if rng.random() < 0.2:
                guess = [guess[2], guess[1], guess[0], guess[3]]  # mirrored in x
            if rng.random() < 0.2:
                guess.append(0.9)
            prediction = rng.choice(["[{}]", "The box is [{}].", "({})", "{}"]).format(
                ", ".join(f"{c:.2f}" for c in guess))
            out.append((prediction, {"box": tuple(target), "question": "the cat", "sample_id": i},
                        {"question_id": i, "answer": "the cat", "bbox": target}))
    return out


def reference(family: str, samples) -> dict[str, float]:
    """lmms-eval's numbers for the generated answers, following the task's YAML."""
    config = load_yaml_config(str(TASKS / YAMLS[family]))
    filters = [f for group in config.get("filter_list", []) for f in group["filter"]]
    values: dict[str, list] = {}
    for prediction, _, doc in samples:
        for f in filters:
            options = {k: v for k, v in f.items() if k != "function"}
            prediction = f["function"](**options).apply([[prediction]], [doc])[0]
        prediction = prediction.strip()
        if "process_results" in config:
            result = config["process_results"](doc, [prediction])
        else:  # the registered metric with the YAML's keyword arguments, against doc_to_target
            target = config["doc_to_target"]
            gold = doc[target] if isinstance(target, str) else target(doc, config["model_specific_target_kwargs"]["default"])
            result = {}
            for metric in config["metric_list"]:
                kwargs = {k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")}
                result[metric["metric"]] = get_metric(metric["metric"])(references=[gold], predictions=[prediction],
                                                                          **kwargs)[metric["metric"]]
        for key, value in result.items():
            values.setdefault(key, []).append(value)
    out = {}
    for metric in config["metric_list"]:
        name, aggregation = metric["metric"], metric["aggregation"]
        if name not in OURS[family]:  # (submission files)
            continue
        out[name] = (sum(values[name]) / len(values[name]) if aggregation == "mean" else aggregation(values[name]))
    return out


OURS = {"vqav2": {"exact_match": "accuracy"}, "textvqa": {"exact_match": "accuracy"},
        "vizwiz": {"exact_match": "accuracy"}, "gqa": {"exact_match": "accuracy"},
        "scienceqa_img": {"exact_match": "accuracy"}, "ai2d": {"exact_match": "accuracy"},
        "pope": {"pope_accuracy": "accuracy", "pope_precision": "precision", "pope_recall": "recall",
                 "pope_f1_score": "f1", "pope_yes_ratio": "yes_ratio"},
        "mme": {"mme_perception_score": "perception", "mme_cognition_score": "cognition"},
        "refcoco": {"refcoco_ACC@0.5": "accuracy"}}


def ours(family: str, samples, scoring: Scoring) -> dict[str, float]:
    rule = scoring.rule(family)
    rows = []
    for prediction, fields, _ in samples:
        fields = {**fields, "box_format": "image"}
        answers = fields.get("answers", [fields.get("answer")])
        rows.append({"prediction": prediction, "score": rule.score(prediction, fields), "answers": answers,
                     **{k: fields[k] for k in ("sample_id", "group", "pair_id") if k in fields}})
    return rule.aggregate(pd.DataFrame(rows))


@pytest.mark.parametrize("family", list(YAMLS))
def test_lmms_eval_mode_equals_lmms_eval(family, capsys):
    samples = generated(family, random.Random(family))
    expected = reference(family, samples)
    got = ours(family, samples, Scoring("lmms-eval"))
    for name, key in OURS[family].items():
        assert got[key] == pytest.approx(expected[name], abs=1e-12), (family, name)
    official = ours(family, samples, Scoring("official"))
    with capsys.disabled():
        print(f"\n{family}: " + ", ".join(f"{key} lmms-eval {got[key]:.4f} (lmms-eval's own {expected[name]:.4f}), "
                                          f"official {official.get(key, float('nan')):.4f}"
                                          for name, key in OURS[family].items()))


def test_the_official_evalai_processor_equals_lmms_evals_copy():
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    from analysis_lib.evaluation.official import normalise_evalai_answer
    processor = EvalAIAnswerProcessor()
    texts = [p for family in ("textvqa", "vizwiz") for p, _, _ in generated(family, random.Random(family))]
    assert all(normalise_evalai_answer(t) == processor(t) for t in texts)
    assert processor("yes" + "." * 40) != normalise_evalai_answer("yes" + "." * 40) == "yes"  # its 32-period limit
