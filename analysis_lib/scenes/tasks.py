"""One scene-and-question builder per task. A builder draws the attributes its question needs
(target, distractors that share its colour or shape, absent objects), places them, and returns a
Draft, or None when the random layout does not allow the question (the caller draws again)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .attributes import BACKGROUND_NAME, COLOURS, NO, OPPOSITE, PLURALS, RELATIONS, SHAPES, YES
from .boxes import format_box
from .config import SceneConfig
from .drawing import SceneObject
from .layout import holds, place_objects
from .referring import POSITIONS, ReferringExpression

Combo = tuple[str, str]  # (colour, shape)
ALL_COMBOS: tuple[Combo, ...] = tuple((c, s) for c in COLOURS for s in SHAPES)

# Questions about the world of the suite, answerable without the image.
KNOWLEDGE_QUESTIONS: dict[str, str] = {
    "Which shape has three corners?": "triangle",
    "Which shape has no corners?": "circle",
    "Which shape has four equal sides?": "square",
    "Which shape looks like a plus sign?": "cross",
}


@dataclass(frozen=True)
class Draft:
    """A placed scene with its question. targets: indices of the objects the answer depends on, in
    the order the question mentions them."""

    objects: list[SceneObject]
    question: str
    answer: str
    targets: tuple[int, ...]
    template: str


def colour_question(shape: str) -> str:
    return f"What colour is the {shape}?"


def shape_question(colour: str) -> str:
    return f"What shape is the {colour} object?"


def counting_question(colour: str | None, shape: str | None) -> str:
    noun = PLURALS[shape] if shape else "objects"
    return f"How many {colour + ' ' if colour else ''}{noun} are there?"


def existence_question(colour: str, shape: str) -> str:
    return f"Is there a {colour} {shape}?"


def spatial_question(first: Combo, relation: str, second: Combo) -> str:
    return f"Is the {first[0]} {first[1]} {relation} the {second[0]} {second[1]}?"


def localization_question(expression: ReferringExpression) -> str:
    return f"Where is {expression.text}?"


def _pick(rng: np.random.Generator, combos: list[Combo]) -> Combo:
    return combos[int(rng.integers(len(combos)))]


def _choice(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(rng: np.random.Generator, count: int, allowed: Callable[[Combo], bool]) -> list[Combo]:
    """`count` random combos satisfying `allowed`."""
    pool = [c for c in ALL_COMBOS if allowed(c)]
    return [_pick(rng, pool) for _ in range(count)]


def _lookalikes(rng: np.random.Generator, count: int, target: Combo) -> list[Combo]:
    """`count` combos that differ from `target` yet half of the time share its colour or its shape."""
    colour, shape = target
    out = []
    for _ in range(count):
        if rng.random() < 0.5:
            out += _fill(rng, 1, lambda c: (c[0] == colour) != (c[1] == shape))
        else:
            out += _fill(rng, 1, lambda c: c != target)
    return out


def _shuffled(rng: np.random.Generator, objects: list[SceneObject], targets: tuple[int, ...]):
    order = rng.permutation(len(objects))
    new_index = {int(old): new for new, old in enumerate(order)}
    return [objects[i] for i in order], tuple(new_index[t] for t in targets)


def _draft(rng, objects, question, answer, targets, template) -> Draft:
    objects, targets = _shuffled(rng, objects, targets)
    return Draft(objects, question, answer, targets, template)


def localization(rng: np.random.Generator, config: SceneConfig, n: int, index: int) -> Draft | None:
    """"Where is the red circle on the left?" -> quantised box. A look-alike sharing the target's
    colour or shape is always present, and "position" expressions have an identical twin."""
    colour, shape = target = _pick(rng, list(ALL_COMBOS))
    n = max(n, 3)
    same_colour = (colour, _choice(rng, [s for s in SHAPES if s != shape]))
    same_shape = (_choice(rng, [c for c in COLOURS if c != colour]), shape)
    template = _choice(rng, ["attributes", "position"])
    if template == "attributes":
        head = [target, same_colour, same_shape]
    else:
        head = [target, target, _choice(rng, [same_colour, same_shape])]
    objects = place_objects(rng, head + _lookalikes(rng, n - 3, target), config)
    if objects is None:
        return None
    target_index, position = 0, None
    if template == "position":
        options = [(pos, i) for pos, rel in POSITIONS.items() for i, j in ((0, 1), (1, 0))
                   if holds(rel, objects[i], objects[j])]
        if not options:
            return None
        position, target_index = options[int(rng.integers(len(options)))]
    expression = ReferringExpression(colour, shape, position)
    box_text = format_box(objects[target_index].box, config.image_size, config.box_bins)
    return _draft(rng, objects, localization_question(expression), box_text, (target_index,), template)


def colour(rng: np.random.Generator, config: SceneConfig, n: int, index: int) -> Draft | None:
    """"What colour is the triangle?" with the triangle the only one of its shape."""
    target = _pick(rng, list(ALL_COMBOS))
    objects = place_objects(rng, [target] + _fill(rng, n - 1, lambda c: c[1] != target[1]), config)
    if objects is None:
        return None
    return _draft(rng, objects, colour_question(target[1]), target[0], (0,), "unique-shape")


def shape(rng: np.random.Generator, config: SceneConfig, n: int, index: int) -> Draft | None:
    """"What shape is the red object?" with the only red object."""
    target = _pick(rng, list(ALL_COMBOS))
    objects = place_objects(rng, [target] + _fill(rng, n - 1, lambda c: c[0] != target[0]), config)
    if objects is None:
        return None
    return _draft(rng, objects, shape_question(target[0]), target[1], (0,), "unique-colour")


def counting(rng: np.random.Generator, config: SceneConfig, n: int, index: int) -> Draft | None:
    """"How many red circles are there?" with an answer uniform in 0 .. config.max_count."""
    colour_, shape_ = target = _pick(rng, list(ALL_COMBOS))
    template = _choice(rng, ["colour", "shape", "both"])
    count = int(rng.integers(0, config.max_count + 1))
    n = max(n, count)
    if template == "colour":
        matching = _fill(rng, count, lambda c: c[0] == colour_)
        others = _fill(rng, n - count, lambda c: c[0] != colour_)
        question = counting_question(colour_, None)
    elif template == "shape":
        matching = _fill(rng, count, lambda c: c[1] == shape_)
        others = _fill(rng, n - count, lambda c: c[1] != shape_)
        question = counting_question(None, shape_)
    else:
        matching = [target] * count
        others = _lookalikes(rng, n - count, target)
        question = counting_question(colour_, shape_)
    objects = place_objects(rng, matching + others, config)
    if objects is None:
        return None
    return _draft(rng, objects, question, str(count), tuple(range(count)), template)


def existence(rng: np.random.Generator, config: SceneConfig, n: int, index: int) -> Draft | None:
    """POPE-like "Is there a red circle?": yes for even indices, no for odd ones (balanced). An
    absent object always has a look-alike in the scene (POPE's adversarial setting)."""
    colour_, shape_ = target = _pick(rng, list(ALL_COMBOS))
    present = index % 2 == 0
    if present:
        attributes = [target] + _lookalikes(rng, n - 1, target)
    else:
        attributes = _fill(rng, 1, lambda c: (c[0] == colour_) != (c[1] == shape_)) + _lookalikes(rng, n - 1, target)
    objects = place_objects(rng, attributes, config)
    if objects is None:
        return None
    answer, targets = (YES, (0,)) if present else (NO, ())
    return _draft(rng, objects, existence_question(colour_, shape_), answer, targets, "present" if present else "absent")


def spatial(rng: np.random.Generator, config: SceneConfig, n: int, index: int) -> Draft | None:
    """VSR-like "Is the red circle left of the blue square?": true (yes) for even indices. Only
    relations that hold clearly (boxes apart along the axis) or whose opposite does are asked."""
    first = _pick(rng, list(ALL_COMBOS))
    second = _pick(rng, [c for c in ALL_COMBOS if c != first])
    others = _fill(rng, max(n, 2) - 2, lambda c: c not in (first, second))
    objects = place_objects(rng, [first, second] + others, config)
    if objects is None:
        return None
    true_relations = [r for r in RELATIONS if holds(r, objects[0], objects[1])]
    if not true_relations:
        return None
    truth = index % 2 == 0
    relation = _choice(rng, true_relations)
    asked = relation if truth else OPPOSITE[relation]
    question = spatial_question(first, asked, second)
    return _draft(rng, objects, question, YES if truth else NO, (0, 1), asked)


def prior(rng: np.random.Generator, config: SceneConfig, n: int, index: int) -> Draft | None:
    """Questions answerable without the image: the answer is stated in the question ("stated"), fixed
    for the whole suite ("background", "any-shapes") or general knowledge ("knowledge")."""
    template = _choice(rng, ["stated", "background", "any-shapes", "knowledge"])
    if template == "stated":
        target = _pick(rng, list(ALL_COMBOS))
        attributes = [target] + _fill(rng, n - 1, lambda c: c[1] != target[1])
        question = f"The {target[1]} is {target[0]}. {colour_question(target[1])}"
        answer = target[0]
    else:
        attributes = _fill(rng, n, lambda c: True)
        if template == "background":
            question, answer = "What colour is the background?", BACKGROUND_NAME
        elif template == "any-shapes":
            question, answer = "Are there any shapes in the image?", YES
        else:
            question = _choice(rng, list(KNOWLEDGE_QUESTIONS))
            answer = KNOWLEDGE_QUESTIONS[question]
    objects = place_objects(rng, attributes, config)
    if objects is None:
        return None
    return _draft(rng, objects, question, answer, (), template)


BUILDERS: dict[str, Callable[[np.random.Generator, SceneConfig, int, int], Draft | None]] = {
    "localization": localization,
    "colour": colour,
    "shape": shape,
    "counting": counting,
    "existence": existence,
    "spatial": spatial,
    "prior": prior,
}


def _unique(objects: list[SceneObject], key: Callable[[SceneObject], str]) -> list[SceneObject]:
    values = [key(o) for o in objects]
    return [o for o in objects if values.count(key(o)) == 1]


def _follow_up(rng: np.random.Generator, objects: list[SceneObject], config: SceneConfig, task: str) -> tuple[str, str] | None:
    if task in ("colour", "shape"):
        candidates = _unique(objects, (lambda o: o.shape) if task == "colour" else (lambda o: o.colour))
        if not candidates:
            return None
        obj = candidates[int(rng.integers(len(candidates)))]
        return (colour_question(obj.shape), obj.colour) if task == "colour" else (shape_question(obj.colour), obj.shape)
    if task == "counting":
        colour_, shape_ = _pick(rng, list(ALL_COMBOS))
        colour_, shape_ = [(colour_, None), (None, shape_), (colour_, shape_)][int(rng.integers(3))]
        count = sum((colour_ in (None, o.colour)) and (shape_ in (None, o.shape)) for o in objects)
        return (counting_question(colour_, shape_), str(count)) if count <= config.max_count else None
    if task == "existence":
        present = {(o.colour, o.shape) for o in objects}
        if rng.random() < 0.5:
            return existence_question(*_pick(rng, sorted(present))), YES
        absent = [c for c in ALL_COMBOS if c not in present and any(c[0] == p[0] or c[1] == p[1] for p in present)]
        return (existence_question(*_pick(rng, absent)), NO) if absent else None
    if task == "spatial":
        unique = _unique(objects, lambda o: o.colour + o.shape)
        pairs = [(a, b, r) for a in unique for b in unique for r in RELATIONS if holds(r, a, b)]
        if not pairs:
            return None
        a, b, relation = pairs[int(rng.integers(len(pairs)))]
        truth = rng.random() < 0.5
        asked = relation if truth else OPPOSITE[relation]
        return spatial_question((a.colour, a.shape), asked, (b.colour, b.shape)), YES if truth else NO
    if task == "localization":
        expressions = [
            (ReferringExpression(o.colour, o.shape, position), o)
            for o in objects
            for position in (None, *POSITIONS)
        ]
        unambiguous = [(e, o) for e, o in expressions if [objects[i] for i in e.resolve(objects)] == [o]
                       and (e.position is None or len(ReferringExpression(o.colour, o.shape).resolve(objects)) > 1)]
        if not unambiguous:
            return None
        expression, obj = unambiguous[int(rng.integers(len(unambiguous)))]
        return localization_question(expression), format_box(obj.box, config.image_size, config.box_bins)
    raise ValueError(f"task must be one of {FOLLOW_UP_TASKS}, got {task!r}")


FOLLOW_UP_TASKS: tuple[str, ...] = ("localization", "colour", "shape", "counting", "existence", "spatial")


def follow_up_questions(
    rng: np.random.Generator, objects: list[SceneObject], config: SceneConfig, count: int,
    tasks: tuple[str, ...] = FOLLOW_UP_TASKS,
) -> list[tuple[str, str]]:
    """Up to `count` more (question, answer) pairs of `tasks` about an existing scene, with the tasks'
    wording and rules (unique referents, clear relations, look-alike absent objects): extra
    supervision per image for training."""
    if not tasks or set(tasks) - set(FOLLOW_UP_TASKS):
        raise ValueError(f"tasks must be a non-empty subset of {FOLLOW_UP_TASKS}, got {tasks!r}")
    pairs: list[tuple[str, str]] = []
    for _ in range(4 * count):
        if len(pairs) == count:
            break
        pair = _follow_up(rng, objects, config, _choice(rng, tasks))
        if pair is not None and pair not in pairs:
            pairs.append(pair)
    return pairs
