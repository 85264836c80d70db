"""Tests of the synthetic scene suite (analysis_lib.scenes)."""

import re

import numpy as np
import pytest

from analysis_lib.scenes import (
    COLOURS,
    ReferringExpression,
    SceneConfig,
    SceneObject,
    accuracy_by_task,
    constant_answer_baseline,
    box_iou,
    format_box,
    generate_sample,
    generate_split,
    is_correct,
    object_mask,
    parse_box,
    patch_mask,
    read_samples,
    render_scene,
    write_samples,
)
from analysis_lib.scenes.attributes import BACKGROUND_RGB, PLURALS, RELATIONS
from analysis_lib.scenes.tasks import follow_up_questions
from analysis_lib.scenes.layout import holds

CONFIG = SceneConfig()
PER_TASK = 40


@pytest.fixture(scope="module")
def test_split():
    return generate_split("test", PER_TASK, config=CONFIG)


def of_task(samples, task):
    return [s for s in samples if s.task == task]


def test_same_seed_gives_identical_samples_and_images(test_split):
    again = generate_split("test", PER_TASK, config=CONFIG)
    assert again == test_split
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again, test_split))


def test_other_split_or_seed_gives_different_samples(test_split):
    images = {s.image.tobytes() for s in test_split}
    for other in (generate_split("validation", PER_TASK), generate_split("test", PER_TASK, seed=1)):
        assert not images & {s.image.tobytes() for s in other}


def test_split_prefix_does_not_depend_on_its_size(test_split):
    assert generate_split("test", 3, tasks=("counting",)) == of_task(test_split, "counting")[:3]


def test_relevance_mask_of_planted_objects_is_hand_checked():
    square = SceneObject("square", "red", (16, 16, 32, 32))
    expected = np.zeros((12, 12), dtype=bool)
    expected[2:4, 2:4] = True
    assert np.array_equal(patch_mask(object_mask(square, 96), 8), expected)

    # A 64 px circle in the top-left corner: its 8x8 patch block minus the four corner patches, which
    # the disc misses (the nearest corner-patch pixel, (7, 7), is 34.6 px from the centre, radius 32).
    circle = SceneObject("circle", "blue", (0, 0, 64, 64))
    expected = np.zeros((12, 12), dtype=bool)
    expected[:8, :8] = True
    for r, c in ((0, 0), (0, 7), (7, 0), (7, 7)):
        expected[r, c] = False
    assert np.array_equal(patch_mask(object_mask(circle, 96), 8), expected)


def test_relevance_mask_covers_exactly_the_target_patches(test_split):
    for sample in test_split:
        pixels = np.zeros((CONFIG.image_size,) * 2, dtype=bool)
        for t in sample.targets:
            pixels |= object_mask(sample.objects[t], CONFIG.image_size)
        assert sample.relevance.shape == (CONFIG.grid, CONFIG.grid)
        assert np.array_equal(sample.relevance, patch_mask(pixels, CONFIG.patch_size))
        assert sample.relevance.any() == bool(sample.targets)


def test_relevance_mask_follows_the_patch_grid():
    config = SceneConfig(image_size=64, patch_size=16)
    sample = generate_sample("test", "colour", 0, config)
    assert sample.image.shape == (64, 64, 3) and sample.relevance.shape == (4, 4)


def test_localization_box_is_the_drawn_object(test_split):
    for sample in of_task(test_split, "localization"):
        (target,) = sample.targets
        obj = sample.objects[target]
        assert sample.box == obj.box
        x1, y1, x2, y2 = obj.box
        # Objects keep `gap` pixels apart, so a one-pixel frame around the box holds only this object.
        region = sample.image[max(0, y1 - 1) : y2 + 1, max(0, x1 - 1) : x2 + 1]
        is_colour = (region == COLOURS[obj.colour]).all(-1)
        is_background = (region == BACKGROUND_RGB).all(-1)
        assert (is_colour | is_background).all()
        ys, xs = np.nonzero(is_colour)
        oy, ox = y1 - max(0, y1 - 1), x1 - max(0, x1 - 1)
        assert (xs.min() - ox, ys.min() - oy, xs.max() + 1 - ox, ys.max() + 1 - oy) == (0, 0, x2 - x1, y2 - y1)
        assert box_iou(parse_box(sample.answer, 96, CONFIG.box_bins), obj.box) >= 0.5
        assert sample.box_normalised == tuple(c / 96 for c in obj.box)


EXPRESSION = re.compile(r"Where is the (\w+) (\w+)(?: (?:on|at) the (\w+))?\?")


def test_referring_expression_is_needed(test_split):
    templates = set()
    for sample in of_task(test_split, "localization"):
        colour, shape, position = EXPRESSION.fullmatch(sample.question).groups()
        assert ReferringExpression(colour, shape, position).resolve(sample.objects) == list(sample.targets)
        target = sample.objects[sample.targets[0]]
        others = [o for i, o in enumerate(sample.objects) if i not in sample.targets]
        assert any(o.colour == target.colour or o.shape == target.shape for o in others)
        reduced = [ReferringExpression(None, shape, position), ReferringExpression(colour, None, position)]
        if position:
            reduced.append(ReferringExpression(colour, shape))
        assert any(len(e.resolve(sample.objects)) > 1 for e in reduced)
        templates.add(sample.template)
    assert templates == {"attributes", "position"}


def assert_answer_agrees(task, question, answer, objects):
    """Recompute the answer from the question's wording and the objects alone."""
    words = question.rstrip("?").split()
    if task == "localization":
        colour, shape, position = EXPRESSION.fullmatch(question).groups()
        (index,) = ReferringExpression(colour, shape, position).resolve(objects)
        assert answer == format_box(objects[index].box, CONFIG.image_size, CONFIG.box_bins)
    elif task == "colour":
        (obj,) = [o for o in objects if o.shape == words[-1]]
        assert answer == obj.colour
    elif task == "shape":
        (obj,) = [o for o in objects if o.colour == words[-2]]
        assert answer == obj.shape
    elif task == "counting":
        matches = [o for o in objects if all(w in (o.colour, PLURALS[o.shape], "objects") for w in words[2:-2])]
        assert int(answer) == len(matches)
    elif task == "existence":
        colour, shape = words[-2:]
        assert answer == ("yes" if any((o.colour, o.shape) == (colour, shape) for o in objects) else "no")
        assert any(o.colour == colour or o.shape == shape for o in objects)
    elif task == "spatial":
        relation = next(r for r in RELATIONS if f" {r} " in question)
        first, second = question[len("Is the ") : question.index(f" {relation} ")], question.split(f" {relation} the ")[1]
        (a,) = [o for o in objects if f"{o.colour} {o.shape}" == first]
        (b,) = [o for o in objects if f"{o.colour} {o.shape}?" == second]
        truth, opposite = holds(relation, a, b), holds(relation, b, a)
        assert truth != opposite and answer == ("yes" if truth else "no")


def test_answers_agree_with_the_objects(test_split):
    for sample in test_split:
        if sample.task == "prior":
            assert not sample.targets
        else:
            assert_answer_agrees(sample.task, sample.question, sample.answer, sample.objects)


def test_follow_up_questions_agree_with_the_objects(test_split):
    rng = np.random.default_rng(0)
    asked = 0
    for sample in test_split:
        for question, answer in follow_up_questions(rng, sample.objects, CONFIG, 4):
            task = next(t for t, prefix in FOLLOW_UP_PREFIXES.items() if question.startswith(prefix))
            assert_answer_agrees(task, question, answer, sample.objects)
            asked += 1
    assert asked > 3 * len(test_split)


def test_follow_up_questions_keep_to_the_tasks_asked_for(test_split):
    rng = np.random.default_rng(0)
    asked = [q for s in test_split for q, _ in follow_up_questions(rng, s.objects, CONFIG, 4, ("existence", "spatial"))]
    assert asked and all(q.startswith(("Is there", "Is the")) for q in asked)
    assert any(q.startswith("Is there") for q in asked) and any(q.startswith("Is the") for q in asked)
    with pytest.raises(ValueError, match=r"tasks must be a non-empty subset of \('localization', .*'spatial'\), got \('prior',\)"):
        follow_up_questions(rng, test_split[0].objects, CONFIG, 4, ("prior",))


FOLLOW_UP_PREFIXES = {
    "localization": "Where is",
    "colour": "What colour",
    "shape": "What shape",
    "counting": "How many",
    "existence": "Is there",
    "spatial": "Is the",
}


def test_yes_no_tasks_are_balanced(test_split):
    for task in ("existence", "spatial"):
        answers = [s.answer for s in of_task(test_split, task)]
        assert answers.count("yes") == answers.count("no") == PER_TASK // 2


def test_objects_appear_everywhere_at_several_clutter_levels(test_split):
    assert any(o.box[1] < CONFIG.patch_size for s in test_split for o in s.objects)
    assert any(s.relevance[0].any() for s in test_split)
    assert any(s.relevance[-1].any() for s in test_split)
    assert {s.clutter for s in test_split} == set(CONFIG.clutter)
    counts = [len(s.objects) for s in test_split]
    assert min(counts) == 1 and max(counts) == 9


def test_ground_truth_answers_score_perfectly(test_split):
    assert all(is_correct(s, s.answer, CONFIG.box_bins) for s in test_split)
    assert all(is_correct(s, re.sub(r"([\[\],])", r" \1 ", s.answer), CONFIG.box_bins) for s in test_split if s.task == "localization")
    scores = accuracy_by_task(test_split, ["none"] * len(test_split), CONFIG.box_bins)
    assert set(scores.values()) == {0.0}
    baseline = constant_answer_baseline(test_split, CONFIG.box_bins)
    assert baseline["existence"] == baseline["spatial"] == 0.5 and baseline["localization"] < 0.1


def test_jsonl_round_trip_is_lossless(test_split, tmp_path):
    path = write_samples(test_split, tmp_path, "test")
    assert read_samples(path) == test_split


def test_render_draws_every_object(test_split):
    sample = test_split[0]
    assert np.array_equal(render_scene(sample.objects, 96), sample.image)


@pytest.mark.parametrize(
    "call, parameter",
    [
        (lambda: generate_split("test", 5, tasks=("caption",)), r"task must be one of \('localization'"),
        (lambda: generate_sample("train", "nonsense", 0), "task must be one of"),
        (lambda: generate_split("dev", 5), r"split must be one of \('train', 'validation', 'test'\)"),
        (lambda: generate_split("test", 0), "per_task must be a positive integer"),
        (lambda: generate_split("test", -3), "per_task must be a positive integer"),
        (lambda: SceneConfig(image_size=96, patch_size=7), r"patch_size must divide image_size=96: allowed values are \[1, 2, 3, 4, 6, 8"),
        (lambda: SceneConfig(object_size=(0.3, 0.2)), "object_size"),
    ],
)
def test_bad_parameters_raise_value_error(call, parameter):
    with pytest.raises(ValueError, match=parameter):
        call()
