"""The training loop: staged, resumable (checkpoint every few steps, exact resume), logged to
<out>/train.log and <out>/metrics.jsonl, with a progress bar and per-task probes on validation."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..scenes import accuracy_by_task, generate_split
from ..scenes.attributes import BACKGROUND_NAME
from .data import COLOUR_CLASSES, IGNORE, SHAPE_CLASSES, Batch, collate, training_batch
from .evaluate import generate_answers
from .model import build_model, build_processor, save_pretrained
from .recipe import RECIPES, Recipe, Stage
from .tokenizer import build_tokenizer

CHECKPOINT = "checkpoint.pt"
MODEL_DIR = "model"
LOG_EVERY = 10


class PatchHeads(nn.Module):
    """Linear read-outs of the tower's feature layer, per patch: colour, shape, box bins, centre."""

    def __init__(self, hidden: int, box_bins: int):
        super().__init__()
        self.box_bins = box_bins
        self.colour = nn.Linear(hidden, len(COLOUR_CLASSES))
        self.shape = nn.Linear(hidden, len(SHAPE_CLASSES))
        self.box = nn.Linear(hidden, 4 * box_bins)
        self.centre = nn.Linear(hidden, 1)

    def losses(self, features: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        box_logits = self.box(features).reshape(*features.shape[:2], 4, self.box_bins)
        return {
            "colour": nn.functional.cross_entropy(self.colour(features).flatten(0, 1), batch.patch_colour.flatten()),
            "shape": nn.functional.cross_entropy(self.shape(features).flatten(0, 1), batch.patch_shape.flatten()),
            "box": nn.functional.cross_entropy(box_logits.flatten(0, 2), batch.patch_box.flatten(), ignore_index=IGNORE),
            "centre": nn.functional.binary_cross_entropy_with_logits(self.centre(features).squeeze(-1), batch.patch_centre),
        }

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Per-patch accuracy on object patches (colour, shape, all four box bins right)."""
        on_object = batch.patch_colour > 0
        box = self.box(features).reshape(*features.shape[:2], 4, self.box_bins).argmax(-1)
        return {
            "patch_colour": (self.colour(features).argmax(-1) == batch.patch_colour)[on_object].float().mean().item(),
            "patch_shape": (self.shape(features).argmax(-1) == batch.patch_shape)[on_object].float().mean().item(),
            "patch_box": (box == batch.patch_box).all(-1)[on_object].float().mean().item(),
        }


class RelevancePointer(nn.Module):
    """An auxiliary read-out, never part of the saved model: a bilinear score between the language
    model's hidden state at the last prompt token and at each image token (after `layer` decoder
    layers), trained so that its softmax over the image tokens puts its mass on the ground-truth
    relevant patches. It teaches the language model to represent what to look for and where, without
    touching the attention weights the pruning methods read."""

    def __init__(self, hidden: int, layer: int, dim: int = 64):
        super().__init__()
        self.layer = layer
        self.query = nn.Linear(hidden, dim)
        self.key = nn.Linear(hidden, dim)

    def loss(self, hidden_states: tuple[torch.Tensor, ...], batch: Batch, image_token_id: int) -> torch.Tensor:
        hidden = hidden_states[self.layer]
        rows = torch.arange(hidden.shape[0])
        last_prompt = (batch.labels != IGNORE).int().argmax(1) - 1  # predicts the first answer token
        query = self.query(hidden[rows, last_prompt])
        image = hidden[batch.input_ids == image_token_id].reshape(hidden.shape[0], -1, hidden.shape[-1])
        scores = torch.einsum("bd,bnd->bn", query, self.key(image)) / self.query.out_features**0.5
        log_p = scores.float().log_softmax(-1).masked_fill(~batch.relevance, float("-inf"))
        has_target = batch.relevance.any(-1)
        return -log_p.logsumexp(-1)[has_target].mean()


IMAGE_WORDS = ("colour", "shape", "box")


def image_word_loss(logits: torch.Tensor, batch: Batch, image_token_id: int, tokenizer, words: tuple[str, ...]) -> torch.Tensor:
    """An auxiliary loss on the language model's output at every image token: predict the words of
    the patch's object, sharing the probability equally among them: its colour and shape names and
    (with "box") the four bins of its box, the words a box answer is made of. Background patches name
    the background ("black") for colour and shape, and nothing for "box" (patches with no word are
left out). The answers' words thus become readable from the image tokens' last
    hidden states, so attending to the right token is enough to answer (the copy path)."""
    names = {"colour": COLOUR_CLASSES, "shape": SHAPE_CLASSES}
    targets = []  # (B, N) token ids per word, -1 where a patch has no such word
    for word in words:
        if word == "box":
            bins = [tokenizer.convert_tokens_to_ids(str(b)) for b in range(int(batch.patch_box.max()) + 1)]
            lookup = torch.tensor(bins + [-1])  # IGNORE (-100) indexes the final -1
            targets += [lookup[batch.patch_box[..., k].clamp(min=-1)] for k in range(4)]
        else:
            ids = [tokenizer.convert_tokens_to_ids(w) for w in (BACKGROUND_NAME, *names[word][1:])]
            classes = batch.patch_colour if word == "colour" else batch.patch_shape
            targets.append(torch.tensor(ids)[classes])
    targets = torch.stack(targets, -1).reshape(-1, len(targets))
    log_p = logits[batch.input_ids == image_token_id].float().log_softmax(-1)
    present = targets >= 0
    named = present.any(1)
    picked = log_p.gather(1, targets.clamp(min=0)) * present
    return -(picked.sum(1)[named] / present.sum(1)[named]).mean()


def tower_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch features LLaVA feeds its projector: the feature layer's output without [CLS]."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[model.config.vision_feature_layer][:, 1:]


def trainable_parameters(model, heads: PatchHeads, pointer: RelevancePointer | None, stage: Stage) -> list[nn.Parameter]:
    """Stage "tower": tower and heads; stage "language": projector, language model (and pointer)."""
    if stage.trains == "tower":
        modules = [model.model.vision_tower, heads]
    else:
        modules = [model.model.multi_modal_projector, model.model.language_model, model.lm_head]
        modules += [pointer] if pointer is not None else []
    return [p for m in modules for p in m.parameters()]


def _logger(out_dir: Path) -> logging.Logger:
    logger = logging.getLogger(f"analysis_lib.training.{out_dir.resolve()}")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.FileHandler(out_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


@torch.no_grad()
def image_gap(model, batch: Batch) -> float:
    """Answer loss with each image swapped for another batch member's minus the loss with the right
    images: 0 when the language model ignores the image, the earliest sign that it reads it."""
    inputs = batch.model_inputs()
    true = model(**inputs).loss.item()
    shuffled = model(**{**inputs, "pixel_values": inputs["pixel_values"].roll(1, 0)}).loss.item()
    return shuffled - true


def probe(model, heads: PatchHeads, processor, recipe: Recipe, stage: Stage, validation) -> dict[str, float]:
    """Stage "tower": per-patch accuracy of the heads on validation images. Stage "language":
    per-task answer accuracy on the validation split, the same on its low-clutter samples
    ("low/<task>"), and image_gap."""
    batch = collate(processor, validation, [[(s.question, s.answer)] for s in validation], recipe.scene)
    if stage.trains == "tower":
        with torch.no_grad():
            return heads.accuracy(tower_features(model, batch.pixel_values), batch)
    was_training = model.training
    model.eval()
    answers = generate_answers(model, processor, validation)
    gap = image_gap(model, batch)
    model.train(was_training)
    low = [i for i, s in enumerate(validation) if s.clutter == "low"]
    low_scores = accuracy_by_task([validation[i] for i in low], [answers[i] for i in low], recipe.scene.box_bins)
    return {**accuracy_by_task(validation, answers, recipe.scene.box_bins),
            **{f"low/{task}": v for task, v in low_scores.items()}, "image_gap": gap}


def train(
    recipe_name: str,
    out_dir: str | Path,
    time_limit_s: float | None = None,
    progress: bool = True,
    init_tower_from: str | Path | None = None,
) -> dict:
    """Train `RECIPES[recipe_name]` into out_dir, resuming from out_dir/checkpoint.pt if present.
    A fresh run can take its vision tower and patch heads from another run's checkpoint
    (init_tower_from) and skip its own leading tower stages, to compare language-stage recipes on
    the same tower. Stops at the end of the recipe or after time_limit_s seconds (checkpointing first). The latest
    model is saved with save_pretrained in out_dir/model at every probe and at the end. Returns
    {"step", "loss_history", "train_seconds", "probes"}."""
    recipe = RECIPES[recipe_name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = _logger(out_dir)
    tokenizer = build_tokenizer(recipe.scene)
    processor = build_processor(recipe.scene, tokenizer)
    model = build_model(recipe.model, recipe.scene, tokenizer, seed=recipe.seed)
    heads = PatchHeads(recipe.model.vision_hidden, recipe.scene.box_bins)
    pointer = RelevancePointer(recipe.model.text_hidden, recipe.pointer_layer) if recipe.pointer_weight else None
    validation = generate_split("validation", recipe.eval_per_task, config=recipe.scene, seed=recipe.seed)

    state = {"step": 0, "stage_index": None, "optimizer": None, "loss_history": [], "train_seconds": 0.0, "probes": []}
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, weights_only=False)
        if saved["recipe"] != recipe_name:
            raise ValueError(f"{checkpoint_path} was written by recipe {saved['recipe']!r}, not {recipe_name!r}")
        model.load_state_dict(saved["model"])
        heads.load_state_dict(saved["heads"])
        if pointer is not None:
            pointer.load_state_dict(saved["pointer"])
        state.update({k: saved[k] for k in state})
        log.info("resumed at step %d", state["step"])
    else:
        log.info("recipe %s: %s", recipe_name, recipe)
        if init_tower_from is not None:
            source = torch.load(init_tower_from, weights_only=False)
            tower = {k: v for k, v in source["model"].items() if k.startswith("model.vision_tower.")}
            unexpected = model.load_state_dict(tower, strict=False).unexpected_keys
            if unexpected or not tower:
                raise ValueError(f"{init_tower_from} holds no vision tower matching recipe {recipe_name!r}")
            heads.load_state_dict(source["heads"])
            for stage in recipe.stages:
                if stage.trains != "tower":
                    break
                state["step"] += stage.steps
            log.info("vision tower and patch heads from %s (its step %d); tower stages skipped", init_tower_from, source["step"])

    optimizer = None
    image_token_id = model.config.image_token_index
    started = time.monotonic()
    seconds_at_start = state["train_seconds"]
    bar = tqdm(total=recipe.total_steps, initial=state["step"], disable=not progress, desc=recipe_name)
    model.train()
    while state["step"] < recipe.total_steps:
        step = state["step"]
        stage_index, stage, stage_step = recipe.stage_at(step)
        if optimizer is None or state["stage_index"] != stage_index:
            model.requires_grad_(False)
            heads.requires_grad_(False)
            params = trainable_parameters(model, heads, pointer, stage)
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)
            if state["stage_index"] == stage_index and state["optimizer"] is not None:
                optimizer.load_state_dict(state["optimizer"])
            state["stage_index"] = stage_index
            log.info("stage %s (%s) from step %d", stage.name, stage.trains, step)
        for group in optimizer.param_groups:
            group["lr"] = stage.lr * min(1.0, (stage_step + 1) / recipe.warmup_steps)

        tick = time.monotonic()
        scene = recipe.scene_for(stage)
        batch = training_batch(processor, step, recipe.batch_size, scene, stage.follow_ups, recipe.seed)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            if stage.trains == "tower":
                parts = heads.losses(tower_features(model, batch.pixel_values), batch)
                loss = sum(parts.values())
            else:
                output = model(**batch.model_inputs(), output_hidden_states=pointer is not None)
                loss = output.loss
                if pointer is not None:
                    loss = loss + recipe.pointer_weight * pointer.loss(output.hidden_states, batch, image_token_id)
                if recipe.image_word_weight:
                    loss = loss + recipe.image_word_weight * image_word_loss(output.logits, batch, image_token_id, tokenizer, recipe.image_words)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], recipe.grad_clip)
        optimizer.step()

        state["step"] = step = step + 1
        state["train_seconds"] = seconds_at_start + time.monotonic() - started
        state["loss_history"].append((step, stage.name, loss.item()))
        bar.update(1)
        bar.set_postfix(stage=stage.name, loss=f"{loss.item():.3f}")
        if step % LOG_EVERY == 0:
            log.info("step %d stage %s loss %.4f lr %.2e %.2f s/step", step, stage.name, loss.item(),
                     optimizer.param_groups[0]["lr"], time.monotonic() - tick)

        stage_done = stage_step + 1 == stage.steps
        if step % recipe.eval_every == 0 or stage_done:
            scores = probe(model, heads, processor, recipe, stage, validation)
            state["probes"].append({"step": step, "stage": stage.name, "train_seconds": state["train_seconds"], **scores})
            log.info("probe step %d stage %s: %s", step, stage.name, json.dumps(scores))
            with (out_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(state["probes"][-1]) + "\n")
            save_pretrained(out_dir / MODEL_DIR, model, processor, recipe.scene)
        out_of_time = time_limit_s is not None and time.monotonic() - started > time_limit_s
        if step % recipe.checkpoint_every == 0 or stage_done or out_of_time:
            state["optimizer"] = optimizer.state_dict()
            extra = {} if pointer is None else {"pointer": pointer.state_dict()}
            _save_checkpoint(checkpoint_path, {**state, "recipe": recipe_name, "model": model.state_dict(),
                                               "heads": heads.state_dict(), **extra})
        if out_of_time:
            log.info("time limit reached at step %d", step)
            break
    bar.close()
    if state["step"] == recipe.total_steps:
        save_pretrained(out_dir / MODEL_DIR, model, processor, recipe.scene)
    return {k: state[k] for k in ("step", "loss_history", "train_seconds", "probes")}
