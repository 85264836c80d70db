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
from .auxiliary import PatchHeads, RelevancePointer, image_word_loss, tower_features
from .data import Batch, collate, training_batch
from .evaluate import generate_answers
from .model import build_model, build_processor, save_pretrained
from .recipe import RECIPES, Recipe, Stage
from .tokenizer import build_tokenizer

CHECKPOINT = "checkpoint.pt"
MODEL_DIR = "model"
LOG_EVERY = 10


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


def _restore(saved: dict, model, heads: PatchHeads, pointer: RelevancePointer | None, state: dict) -> None:
    """Load a checkpoint's weights into the modules and its training state into `state`."""
    model.load_state_dict(saved["model"])
    heads.load_state_dict(saved["heads"])
    if pointer is not None and "pointer" in saved:  # else the pointer starts fresh (a branch that adds it)
        pointer.load_state_dict(saved["pointer"])
    state.update({k: saved[k] for k in state})


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
    branch_from: str | Path | None = None,
    until_step: int | None = None,
) -> dict:
    """Train `RECIPES[recipe_name]` into out_dir, resuming from out_dir/checkpoint.pt if present.
    A fresh run can take its vision tower and patch heads from another run's checkpoint
    (init_tower_from) and skip its own leading tower stages, to compare language-stage recipes on
    the same tower. Or it can carry on from another run's checkpoint (branch_from) written by a recipe
    that trains the same steps up to that checkpoint, to try other later stages without retraining
    the earlier ones. Stops at the end of the recipe, after step until_step, or after time_limit_s
    seconds (checkpointing first). The latest
    model is saved with save_pretrained in out_dir/model at every probe and at the end. Returns
    {"step", "loss_history", "train_seconds", "probes"}."""
    recipe = RECIPES[recipe_name]
    if init_tower_from is not None and branch_from is not None:
        raise ValueError("give init_tower_from or branch_from, not both")
    end = recipe.total_steps if until_step is None else until_step
    if not 1 <= end <= recipe.total_steps:
        raise ValueError(f"until_step must be between 1 and recipe {recipe_name!r}'s {recipe.total_steps} steps, got {until_step!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = _logger(out_dir)
    tokenizer = build_tokenizer(recipe.scene)
    processor = build_processor(recipe.scene, tokenizer)
    model = build_model(recipe.model, recipe.scene, tokenizer, seed=recipe.seed)
    heads = PatchHeads(recipe.model.vision_hidden, recipe.scene.box_bins)
    pointer = RelevancePointer(recipe.model.text_hidden, recipe.pointer_layer) if recipe.uses_pointer else None
    validation = generate_split("validation", recipe.eval_per_task, config=recipe.scene, seed=recipe.seed)

    state = {"step": 0, "stage_index": None, "optimizer": None, "loss_history": [], "train_seconds": 0.0, "probes": []}
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, weights_only=False)
        if saved["recipe"] != recipe_name:
            raise ValueError(f"{checkpoint_path} was written by recipe {saved['recipe']!r}, not {recipe_name!r}")
        if "recipe_spec" in saved and not recipe.can_branch(saved["recipe_spec"], saved["step"]):
            raise ValueError(f"recipe {recipe_name!r} no longer trains the first {saved['step']} steps that wrote "
                             f"{checkpoint_path}: carry the run on under a new recipe name with branch_from")
        _restore(saved, model, heads, pointer, state)
        log.info("resumed at step %d", state["step"])
    else:
        log.info("recipe %s: %s", recipe_name, recipe)
        if branch_from is not None:
            saved = torch.load(branch_from, weights_only=False)
            source = saved.get("recipe_spec") or RECIPES[saved["recipe"]]
            if not recipe.can_branch(source, saved["step"]):
                raise ValueError(f"branch_from: {branch_from} (recipe {saved['recipe']!r}, step {saved['step']}) did not "
                                 f"train the same first {saved['step']} steps as recipe {recipe_name!r}")
            _restore(saved, model, heads, pointer, state)
            if not recipe.can_branch(source, state["step"] + 1):
                state["stage_index"] = state["optimizer"] = None  # another stage starts here: fresh optimiser
            log.info("branched from %s at step %d", branch_from, state["step"])
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
    bar = tqdm(total=end, initial=state["step"], disable=not progress, desc=recipe_name)
    model.train()
    while state["step"] < end:
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
            group["lr"] = stage.lr_at(stage_step, recipe.warmup_steps)

        tick = time.monotonic()
        scene = recipe.scene_for(stage)
        batch = training_batch(processor, step, recipe.batch_size, scene, stage.follow_ups, recipe.seed, stage.tasks,
                               stage.main_tasks)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            if stage.trains == "tower":
                parts = heads.losses(tower_features(model, batch.pixel_values), batch)
                loss = sum(parts.values())
            else:
                pointer_weight = recipe.pointer_weight_of(stage)
                output = model(**batch.model_inputs(), output_hidden_states=bool(pointer_weight))
                loss = output.loss
                if pointer_weight:
                    loss = loss + pointer_weight * pointer.loss(output.hidden_states, batch, image_token_id, stage.pointer_tokens)
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
        if step % recipe.checkpoint_every == 0 or stage_done or out_of_time or step == end:
            state["optimizer"] = optimizer.state_dict()
            extra = {} if pointer is None else {"pointer": pointer.state_dict()}
            _save_checkpoint(checkpoint_path, {**state, "recipe": recipe_name, "recipe_spec": recipe, "model": model.state_dict(),
                                               "heads": heads.state_dict(), **extra})
        if out_of_time:
            log.info("time limit reached at step %d", step)
            break
    bar.close()
    if state["step"] == end:
        save_pretrained(out_dir / MODEL_DIR, model, processor, recipe.scene)
    return {k: state[k] for k in ("step", "loss_history", "train_seconds", "probes")}
