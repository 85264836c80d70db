"""Prompts of LLaVA-1.5's evaluation question files, per task and benchmark."""
import pytest

from analysis_lib.evaluation.prompts import STYLES, embedded_style

LLAVA = STYLES["llava"]
SHORT = "\nAnswer the question using a single word or phrase."


def body(text):
    return text.removeprefix("USER: <image>\n").removesuffix(" ASSISTANT:")


@pytest.mark.parametrize("task, benchmark, question, options, context, expected", [
    ("mme", "mme", "Is there a dog? Please answer yes or no.", None, None, "Is there a dog?" + SHORT),
    ("vqa", "vizwiz", "What is this?", None, None,
     "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT),
    ("vqa", "textvqa", "what brand?", None, "sony, tv", "what brand?\nReference OCR token: sony, tv" + SHORT),
    ("vqa", "textvqa", "what brand?", None, None, "what brand?" + SHORT),  # no OCR tokens: the task's prompt
    ("vqa", "vqav2", "How many?", None, None, "How many?" + SHORT),
    ("yes_no", "pope", "Is there a cat?", None, None, "Is there a cat?" + SHORT),
    ("multiple_choice", "scienceqa_img", "Which?", ["x", "y"], "a hint",
     "Context: a hint\nWhich?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."),
    ("localization", "refcoco", "the red cup", None, None,
     "Please provide the bounding box coordinate of the region this sentence describes: the red cup"),
])
def test_llava_prompts(task, benchmark, question, options, context, expected):
    assert body(LLAVA.text(task, question, options, context, benchmark)) == expected


def test_overrides_and_the_embedded_model():
    style = LLAVA.with_templates({"vizwiz": "{question} Be brief."})
    assert body(style.text("vqa", "What?", benchmark="vizwiz")) == "What? Be brief."
    with pytest.raises(ValueError, match="template='nope'"):
        LLAVA.with_templates({"nope": "{question}"})
    assert embedded_style(32).text("mme", "Is it red? Please answer yes or no.", benchmark="mme").endswith(
        "Is it red? Please answer yes or no. ASSISTANT:")  # its bare questions are kept as they are


@pytest.mark.parametrize("family, system", [("qwen2_5_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"),
                                            ("qwen3_vl", "")])
def test_qwen_prompts(models, family, system):
    """Qwen chat templates with the adapter's image placeholder; short answers as LLaVA's; grounding as the
    Qwen2.5-VL cookbook asks for a JSON box."""
    from analysis_lib.adapters import adapter_for
    style = STYLES[family]
    user = "<|im_start|>user\n" + adapter_for(models[(family, "sdpa")]).image_placeholder
    assert style.text("vqa", "How many?") == system + user + "How many?" + SHORT + "<|im_end|>\n<|im_start|>assistant\n"
    assert "Locate the red cup, output its bbox coordinates using JSON format." in style.text("localization", "red cup")
    with pytest.raises(ValueError, match="resize=None: box_format='resized_pixels' needs it"):
        type(style)("x", "{image}{text}", {}, "resized_pixels", {})
