"""Tests of the embedded model's training (analysis_lib.training) on the tiny recipe (seconds)."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from analysis_lib.scenes import TASKS, generate_split
from analysis_lib.training import RECIPES, Stage, build_model, build_processor, build_tokenizer, evaluate_checkpoint, generate_answers, train
from analysis_lib.training.data import conversation_ids, training_batch
from analysis_lib.training.prompts import answer, prompt
from analysis_lib.training.data import COLOUR_CLASSES, SHAPE_CLASSES
from analysis_lib.training.auxiliary import RelevancePointer, image_word_loss
from analysis_lib.training.train import CHECKPOINT, MODEL_DIR

torch.set_num_threads(1)
TINY = RECIPES["tiny"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return out, train("tiny", out, progress=False)


def test_loss_decreases(trained):
    _, result = trained
    for stage in TINY.stages:
        losses = [loss for _, name, loss in result["loss_history"] if name == stage.name]
        assert len(losses) == stage.steps
        assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_saved_directory_loads_back_with_identical_logits(trained):
    out, _ = trained
    model = LlavaForConditionalGeneration.from_pretrained(out / MODEL_DIR).eval()
    processor = AutoProcessor.from_pretrained(out / MODEL_DIR)
    reference = build_model(TINY.model, TINY.scene, build_tokenizer(TINY.scene)).eval()
    reference.load_state_dict(torch.load(out / CHECKPOINT, weights_only=False)["model"])
    reference_processor = build_processor(TINY.scene, build_tokenizer(TINY.scene))
    samples = generate_split("test", 1, config=TINY.scene)
    texts, images = [prompt(s.question) for s in samples], [s.pil_image() for s in samples]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    reference_inputs = reference_processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert all(torch.equal(inputs[k], reference_inputs[k]) for k in reference_inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**reference_inputs).logits)
    assert inputs["input_ids"].eq(model.config.image_token_index).sum(1).eq(TINY.scene.grid**2).all()


def test_interrupted_training_resumes_exactly(trained, tmp_path):
    _, uninterrupted = trained
    first = train("tiny", tmp_path, time_limit_s=0, progress=False)
    assert first["step"] == 1
    resumed = train("tiny", tmp_path, progress=False)
    assert resumed["loss_history"] == uninterrupted["loss_history"]
    assert (tmp_path / "train.log").read_text().count("resumed at step 1") == 1


def test_training_stops_after_until_step_and_carries_on_exactly(trained, tmp_path):
    _, uninterrupted = trained
    first = train("tiny", tmp_path, progress=False, until_step=15)
    assert first["step"] == 15 and (tmp_path / MODEL_DIR / "model.safetensors").is_file()
    assert train("tiny", tmp_path, progress=False)["loss_history"] == uninterrupted["loss_history"]
    with pytest.raises(ValueError, match=r"until_step must be between 1 and recipe 'tiny''s 40 steps, got 41"):
        train("tiny", tmp_path / "other", progress=False, until_step=41)


def test_evaluation_scores_every_task(trained):
    out, _ = trained
    scores = evaluate_checkpoint(out / MODEL_DIR, "test", per_task=2)
    assert set(scores) == set(TASKS) and all(0 <= v <= 1 for v in scores.values())


def test_batched_generation_matches_one_by_one(trained):
    out, _ = trained
    model = LlavaForConditionalGeneration.from_pretrained(out / MODEL_DIR)
    processor = AutoProcessor.from_pretrained(out / MODEL_DIR)
    samples = generate_split("validation", 1, config=TINY.scene)
    batched = generate_answers(model, processor, samples, batch_size=len(samples))
    assert batched == [a for s in samples for a in generate_answers(model, processor, [s], batch_size=1)]


def test_tokenizer_covers_the_suite_and_matches_the_processor(trained):
    out, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out / MODEL_DIR)
    processor = AutoProcessor.from_pretrained(out / MODEL_DIR)
    for sample in generate_split("test", 20):
        assert tokenizer.unk_token_id not in tokenizer(sample.question + " " + sample.answer)["input_ids"]
    sample = generate_split("test", 1, config=TINY.scene)[0]
    ids, labels = conversation_ids(tokenizer, [(sample.question, sample.answer)], TINY.scene.grid**2)
    full = processor(images=[sample.pil_image()], text=[prompt(sample.question) + answer(sample.answer)])["input_ids"][0]
    assert list(full) == ids
    kept = [t for t in labels if t != -100]
    assert tokenizer.decode(kept, skip_special_tokens=True).replace(" ", "") == sample.answer.replace(" ", "")
    assert kept[-1] == tokenizer.eos_token_id


def test_training_batches_are_reproducible():
    processor = build_processor(TINY.scene, build_tokenizer(TINY.scene))
    a, b = (training_batch(processor, 3, 4, TINY.scene, 2, 0) for _ in range(2))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values, b.pixel_values)
    assert not torch.equal(a.input_ids, training_batch(processor, 4, 4, TINY.scene, 2, 0).input_ids)


def test_branch_carries_on_a_run_under_a_recipe_with_the_same_first_steps(trained, tmp_path, monkeypatch):
    out, uninterrupted = trained
    language = TINY.stages[1]
    split = replace(TINY, stages=(TINY.stages[0], replace(language, steps=10),
                                  Stage("counting", 20, "language", lr=3e-3, clutter=("low",), follow_ups=1, tasks=("counting",),
                                        pointer_weight=1.0)))
    monkeypatch.setitem(RECIPES, "tiny-split", split)
    monkeypatch.setitem(RECIPES, "tiny-longer", replace(TINY, stages=(*TINY.stages, replace(language, name="more", steps=5))))
    monkeypatch.setitem(RECIPES, "tiny-other-tower", replace(TINY, stages=(replace(TINY.stages[0], lr=1e-3), language)))
    train("tiny", tmp_path / "source", time_limit_s=0, progress=False)  # stops after step 1
    branched = train("tiny-split", tmp_path / "split", progress=False, branch_from=tmp_path / "source" / CHECKPOINT)
    assert branched["loss_history"][:20] == uninterrupted["loss_history"][:20]
    assert [name for _, name, _ in branched["loss_history"][20:]] == ["counting"] * 20
    assert "pointer" in torch.load(tmp_path / "split" / CHECKPOINT, weights_only=False)  # a pointer stage added
    longer = train("tiny-longer", tmp_path / "longer", progress=False, branch_from=out / CHECKPOINT)
    assert longer["loss_history"][:40] == uninterrupted["loss_history"] and len(longer["loss_history"]) == 45
    with pytest.raises(ValueError, match="branch_from: .* did not train the same first 1 steps as recipe 'tiny-other-tower'"):
        train("tiny-other-tower", tmp_path / "other", progress=False, branch_from=tmp_path / "source" / CHECKPOINT)
    with pytest.raises(ValueError, match="give init_tower_from or branch_from, not both"):
        train("tiny", tmp_path / "both", progress=False, init_tower_from=out / CHECKPOINT, branch_from=out / CHECKPOINT)
    monkeypatch.setitem(RECIPES, "tiny", RECIPES["tiny-other-tower"])  # the recipe changed since the checkpoint
    with pytest.raises(ValueError, match="recipe 'tiny' no longer trains the first 1 steps that wrote"):
        train("tiny", tmp_path / "source", progress=False)


def test_learning_rate_warms_up_then_stays_or_falls_along_a_cosine():
    constant = Stage("c", 101, "language", lr=1e-3)
    falling = replace(constant, final_lr=1e-5)
    assert [constant.lr_at(s, 4) for s in (0, 1, 3, 100)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    assert falling.lr_at(3, 4) == pytest.approx(1e-3 - 99e-5 * (1 - np.cos(np.pi * 3 / 100)) / 2)
    assert falling.lr_at(50, 4) == pytest.approx((1e-3 + 1e-5) / 2)
    assert falling.lr_at(100, 4) == pytest.approx(1e-5)
    rates = [falling.lr_at(s, 4) for s in range(3, 101)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_make_train_default_retrains_the_shipped_recipe_and_step():
    root = Path(__file__).resolve().parents[1]
    make = (root / "Makefile").read_text()
    recipe = re.search(r"^RECIPE \?= (\S+)$", make, re.M).group(1)
    step = int(re.search(r"^UNTIL_STEP \?= (\d+)$", make, re.M).group(1))
    assert recipe in RECIPES and step <= RECIPES[recipe].total_steps
    card = (root / "data" / "embedded-model" / "MODEL_CARD.md").read_text()
    assert f"| recipe | `{recipe}` (`analysis_lib/training/recipe.py`), step {step:,} |" in card


def test_main_questions_may_come_from_other_tasks_than_the_follow_ups():
    processor = build_processor(TINY.scene, build_tokenizer(TINY.scene))
    batch = training_batch(processor, 0, 6, TINY.scene, 3, 0, main_tasks=("localization",))
    texts = processor.tokenizer.batch_decode(batch.input_ids, skip_special_tokens=True)
    questions = [re.findall(r"(?:Where|What|How|Is) [^?]*\?", t) for t in texts]
    assert all(q[0].startswith("Where is") for q in questions)
    assert any(not x.startswith("Where is") for q in questions for x in q[1:])  # follow-ups of every task
    assert batch.relevance.any(1).all()  # a localization target on every image


def test_bad_stage_or_recipe_raises():
    with pytest.raises(ValueError, match=r"trains must be one of \('tower', 'language'\)"):
        Stage("x", 1, "projector", lr=1e-3)
    with pytest.raises(ValueError, match=r"final_lr must be None or between 0 and lr=0.001, got 0.01"):
        Stage("x", 1, "language", lr=1e-3, final_lr=1e-2)
    with pytest.raises(ValueError, match=r"pointer_tokens must be one of \('first', 'answer'\), got 'all'"):
        Stage("x", 1, "language", lr=1e-3, pointer_tokens="all")
    with pytest.raises(ValueError, match=r"main_tasks must be distinct tasks of \('localization', .*\), got \('where',\)"):
        Stage("x", 1, "language", lr=1e-3, main_tasks=("where",))
    with pytest.raises(ValueError, match=r"pointer_weight must be None or >= 0, got -1.0"):
        Stage("x", 1, "language", lr=1e-3, pointer_weight=-1.0)
    with pytest.raises(ValueError, match=r"image_words must be a non-empty subset of \('colour', 'shape', 'box'\)"):
        replace(TINY, image_words=("size",))


def test_pointer_recipe_starts_from_another_runs_tower(trained, tmp_path, monkeypatch):
    out, _ = trained
    monkeypatch.setitem(RECIPES, "tiny-pointer", replace(TINY, pointer_weight=1.0))
    result = train("tiny-pointer", tmp_path, progress=False, init_tower_from=out / CHECKPOINT)
    assert [name for _, name, _ in result["loss_history"]] == ["language"] * TINY.stages[1].steps
    source, resumed = (torch.load(p / CHECKPOINT, weights_only=False) for p in (out, tmp_path))
    tower = [k for k in source["model"] if k.startswith("model.vision_tower.")]
    assert tower and all(torch.equal(source["model"][k], resumed["model"][k]) for k in tower)
    assert "pointer" in resumed


def _pointer_oracle(pointer, hidden, batch, image_token_id, tokens):
    """The pointer loss written out one query position at a time."""
    losses = []
    for row in range(hidden.shape[0]):
        relevant = batch.relevance[row]
        answer = (batch.labels[row] != -100).nonzero().squeeze(1).tolist()
        run = [answer[0]]
        while tokens == "answer" and run[-1] + 1 in answer:
            run.append(run[-1] + 1)
        image = hidden[row, batch.input_ids[row] == image_token_id]
        for position in run:
            if relevant.any():
                scores = pointer.key(image) @ pointer.query(hidden[row, position - 1]) / 8
                losses.append(-scores.log_softmax(0)[relevant].logsumexp(0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("tokens", ["first", "answer"])
def test_relevance_pointer_reads_the_first_answers_tokens(tokens):
    tokenizer = build_tokenizer(TINY.scene)
    batch = training_batch(build_processor(TINY.scene, tokenizer), 0, 8, TINY.scene, 1, 0, tasks=("localization", "counting"))
    image_token_id = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    torch.manual_seed(0)
    pointer = RelevancePointer(16, 0)
    hidden = torch.randn(*batch.input_ids.shape, 16)
    loss = pointer.loss((hidden,), batch, image_token_id, tokens)
    assert loss.item() == pytest.approx(_pointer_oracle(pointer, hidden, batch, image_token_id, tokens).item(), rel=1e-5)
    if tokens == "answer":  # boxes have many tokens: more query positions, another loss
        assert loss.item() != pytest.approx(pointer.loss((hidden,), batch, image_token_id, "first").item(), rel=1e-3)


def _image_word_setup():
    """A tiny training batch, its tokenizer, the image token id and all-zero logits to plant answers in."""
    tokenizer = build_tokenizer(TINY.scene)
    batch = training_batch(build_processor(TINY.scene, tokenizer), 0, 2, TINY.scene, 0, 0)
    logits = torch.zeros(*batch.input_ids.shape, len(tokenizer))
    return tokenizer, batch, tokenizer.convert_tokens_to_ids(tokenizer.image_token), logits


def test_image_word_loss_is_low_when_image_tokens_name_their_object():
    tokenizer, batch, image_token_id, logits = _image_word_setup()
    assert image_word_loss(logits, batch, image_token_id, tokenizer, ("colour", "shape")).item() == pytest.approx(np.log(len(tokenizer)))
    rows, cols = (batch.input_ids == image_token_id).nonzero(as_tuple=True)
    names = [("black", "black") if c == 0 else (COLOUR_CLASSES[c], SHAPE_CLASSES[s])
             for c, s in zip(batch.patch_colour.flatten().tolist(), batch.patch_shape.flatten().tolist())]
    for r, c, (colour, shape) in zip(rows.tolist(), cols.tolist(), names):
        logits[r, c, tokenizer.convert_tokens_to_ids(colour)] = 50
        logits[r, c, tokenizer.convert_tokens_to_ids(shape)] = 50
    # Background patches name one word ("black") twice: no loss; object patches split colour and shape.
    expected = np.log(2) * (batch.patch_colour > 0).float().mean().item()
    assert image_word_loss(logits, batch, image_token_id, tokenizer, ("colour", "shape")).item() == pytest.approx(expected, abs=1e-3)


def test_image_word_loss_with_box_words():
    tokenizer, batch, image_token_id, logits = _image_word_setup()
    rows, cols = (batch.input_ids == image_token_id).nonzero(as_tuple=True)
    boxes = batch.patch_box.reshape(-1, 4).tolist()
    for r, c, box in zip(rows.tolist(), cols.tolist(), boxes):
        for b in set(box) - {-100}:
            logits[r, c, tokenizer.convert_tokens_to_ids(str(b))] = 50
    # An object patch spreads its mass evenly over its distinct bins, so its loss is log(#distinct);
    # background patches have no box words and are left out.
    expected = np.mean([np.log(len(set(box))) for box in boxes if box[0] >= 0])
    loss = image_word_loss(logits, batch, image_token_id, tokenizer, ("box",))
    assert loss.item() == pytest.approx(expected, abs=1e-3)


def test_stage_tasks_and_objects_restrict_the_batches():
    from analysis_lib.scenes.tasks import FOLLOW_UP_TASKS
    from analysis_lib.training.data import task_follow_ups, training_samples

    stage = Stage("binding", 1, "language", lr=1e-3, clutter=("low",), follow_ups=3,
                  tasks=("colour", "existence"), objects=(2, 3))
    scene = replace(TINY, scene=replace(TINY.scene, clutter={"low": (1, 2), "high": (4, 5)})).scene_for(stage)
    assert scene.clutter == {"low": (2, 3)}
    samples = training_samples(0, 8, scene, 0, stage.tasks)
    assert [s.task for s in samples] == ["colour", "existence"] * 4
    assert all(2 <= len(s.objects) <= 3 for s in samples)
    tokenizer = build_tokenizer(TINY.scene)
    batch = training_batch(build_processor(TINY.scene, tokenizer), 0, 8, scene, stage.follow_ups, 0, stage.tasks)
    questions = [q for row in batch.input_ids for q in tokenizer.decode(row, skip_special_tokens=True).split("USER :")[1:]]
    assert len(questions) > 8 and all(q.strip().startswith(("What colour", "Is there")) for q in questions)
    # No tasks: exactly the suite's follow-ups, so existing recipes' batches are unchanged.
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    from analysis_lib.scenes.tasks import follow_up_questions
    assert task_follow_ups(rng_a, samples[0].objects, scene, 5) == follow_up_questions(rng_b, samples[0].objects, scene, 5)
    assert set(FOLLOW_UP_TASKS) <= set(TASKS)


def test_bad_stage_tasks_or_objects_raise():
    with pytest.raises(ValueError, match="tasks must be distinct tasks"):
        Stage("x", 1, "language", lr=1e-3, tasks=("colour", "size"))
    with pytest.raises(ValueError, match="follow_ups need one of"):
        Stage("x", 1, "language", lr=1e-3, tasks=("prior",), follow_ups=2)
    with pytest.raises(ValueError, match="objects must be"):
        Stage("x", 1, "language", lr=1e-3, objects=(3, 2))
