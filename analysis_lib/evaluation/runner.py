"""Batched, resumable evaluation of model × method × dataset grids, one Parquet row per sample.

    rows = run_grid(["data/embedded-model"], ["none", "fastv:K=2,R=0.75", "feather:K1=0.25,K2=0.5"],
                    ["synthetic"], out="runs/eval", batch_size=8)

Each (model, method setting, dataset) is cut into batches; every finished batch is written at once
to its own Parquet part (a temporary file renamed into place), so a killed run loses at most the batch
in flight and a re-run skips what exists. ``results.parquet`` (and ``.csv``) gathers the parts in a
fixed order. A row holds the prediction and its score, the kept visual indices per stage (and, for
merging stages, the [target, source, weight] triples of the merge), the
theoretical FLOPs reduction of that sample's real kept counts, batch timings, every setting (the
scoring mode, box frame and rule among them), the library version and git commit. Greedy decoding and
seeded methods make the rows reproducible (all but the timing columns).

The grid runs batch by batch, every setting of a batch in turn: the processor's inputs are made once per
batch, and the images are encoded once for all settings that leave the vision tower alone (the unpruned
model and every schedule that reads neither the tower's attention nor its features; ``reuse_images``);
a schedule that merges inside the tower (ToMe) encodes its own, which no later setting reuses.
The rows are the same as with a fresh encoding per setting (a test compares them); the timing columns
of a reused encoding do not include the vision tower. Measured: ``python -m analysis_lib.benchmarks.evaluation``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..adapters import ModelAdapter
from ..flops import LMDims, TowerDims, schedule_flops, tower_reduction
from ..loading import DTYPES, check_device_map, load_vlm
from ..pruning import METHODS, PruneRecord, PruningEngine, get_method
from ..pruning.nominal import tower_tokens
from ..pruning.schedule import Schedule
from ..pruning.tower_merging import check_tower
from ..validation import check_choice, check_device, check_int, check_number, check_output_folder
from .datasets import EvalSample, load_dataset
from .launch import Launch, check_shared, joined, stop_if_failed
from .parts import code_digest, digest, gather, registered, sample_digest, stable_form, write_atomic
from .prompts import PromptStyle, check_templates, style_for
from .relevance import image_frame, relevant_kept
from .scoring import Scoring, benchmark_family, frame_of

NO_PRUNING = "none"
TIMING_COLUMNS = ("batch_prefill_ms", "batch_decode_ms_per_token", "batch_total_ms")
#: which process computed a row: like the timings, not part of a part's key nor of what must be reproduced
LAUNCH_COLUMNS = ("rank", "world_size")
VARYING_COLUMNS = TIMING_COLUMNS + LAUNCH_COLUMNS


@dataclass(frozen=True)
class MethodSetting:
    """A method name from the registry ("none" = unpruned) with parameter overrides."""

    method: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        """Parameters in the method's signature order: settings equal up to order have one label (rows are
        stored and looked up by it)."""
        if self.method in METHODS:  # not "none", nor a subclass's own schedule
            order = list(METHODS[self.method].parameters)
            ranked = sorted(self.params, key=lambda k: order.index(k) if k in order else len(order))
            object.__setattr__(self, "params", {k: self.params[k] for k in ranked})

    @classmethod
    def parse(cls, text: str) -> MethodSetting:
        """``"fastv:K=3,R=0.75"`` -> MethodSetting("fastv", {"K": 3, "R": 0.75}), typed like the defaults."""
        from ..cli import parse_params
        name, _, rest = text.partition(":")
        name = name.strip()
        if name == NO_PRUNING:
            if rest:
                raise ValueError(f"method {text!r}: '{NO_PRUNING}' takes no parameters")
            return cls(NO_PRUNING)
        method = get_method(name)
        pairs = [p.strip() for p in rest.split(",") if p.strip()]
        return cls(name, parse_params(pairs, method.parameters))

    def schedule(self) -> Schedule | None:
        return None if self.method == NO_PRUNING else get_method(self.method).schedule(**self.params)

    @property
    def label(self) -> str:
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.params.items())])

    @property
    def key(self) -> str:
        return f"{self.method}-{digest(self.params)[:8]}"


@dataclass
class EvalModel:
    """A loaded model with what evaluation needs around it."""

    name: str
    model: torch.nn.Module
    processor: object
    adapter: ModelAdapter
    style: PromptStyle


def load_eval_model(name_or_path: str, device: str = "cpu", dtype: str = "float32",
                    attn_implementation: str = "sdpa", prompts: dict[str, str] | None = None,
                    device_map: str | dict | None = None, offload_folder: str | Path | None = None) -> EvalModel:
    """``load_vlm`` plus the prompt style of the family (the embedded style for this repo's checkpoints)."""
    model, processor, adapter = load_vlm(name_or_path, device, dtype, attn_implementation, device_map=device_map,
                                         offload_folder=offload_folder)
    style = style_for(model.config.model_type, name_or_path if Path(name_or_path).is_dir() else None)
    return EvalModel(str(name_or_path), model, processor, adapter, style.with_templates(prompts or {}))


def git_commit() -> str:
    """The repository's commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@contextmanager
def _forward_timer(model: torch.nn.Module):
    """Wall-clock seconds of every top-level forward call (the first of ``generate`` is the prefill);
    CUDA is synchronised at both ends so the times cover the kernels."""
    calls: list[float] = []
    state = {}
    cuda = next(model.parameters()).is_cuda

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def before(*_):
        state["t"] = now()

    def after(*_):
        calls.append(now() - state["t"])
    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _dims(model) -> LMDims:
    text = model.config.get_text_config()
    return LMDims(text.hidden_size, text.intermediate_size, text.num_hidden_layers)


def score_fields(sample: EvalSample, box_format: str, style: PromptStyle) -> dict:
    """What a scoring rule reads of a sample (boxes read in ``box_format``; ``resized``: the image's size as the
    style's model saw it, for boxes in its pixels)."""
    width, height = sample.image.size
    return {"answers": sample.answers, "box": sample.box, "options": sample.options, "width": width, "height": height,
            "box_format": box_format, "bins": style.bins, "resized": style.model_image_size(width, height),
            "sample_id": sample.sample_id, "question": sample.question, "group": sample.group,
            "pair_id": sample.pair_id}


def _sample_rows(em: EvalModel, samples: Sequence[EvalSample], texts: list[str], predictions: list[str],
                 record: PruneRecord | None, inputs, timings: list[float], new_tokens: int,
                 scoring: Scoring, tower_saving: float) -> list[dict]:
    dims = _dims(em.model)
    layout = record.layout if record else em.adapter.inputs_layout(inputs)
    prefill = 1000 * timings[0] if timings else float("nan")
    decode = 1000 * sum(timings[1:]) / max(len(timings) - 1, 1) if len(timings) > 1 else float("nan")
    rows = []
    for b, (sample, text, prediction) in enumerate(zip(samples, texts, predictions)):
        grid = layout.samples[b]
        n_visual = grid.num_tokens
        n_text = int(inputs["attention_mask"][b].sum()) - n_visual
        kept = [stage.kept[b].tolist() for stage in record.stages] if record else []
        stages = [(stage.layer, len(k)) for stage, k in zip(record.stages, kept)] if record else []
        final = torch.tensor(kept[-1] if kept else list(range(n_visual)), dtype=torch.long)
        box_format = scoring.box_format(em.style.box_format)
        family = benchmark_family(sample.dataset, sample.task, box_format)
        rows.append({
            "sample_id": sample.sample_id, "task": sample.task, "group": sample.group, "pair_id": sample.pair_id,
            "question": sample.question, "prompt": text, "prediction": prediction,
            "answers": json.dumps(sample.answers), "scoring": scoring.mode, "box_frame": frame_of(box_format),
            "rule": family,
            "score": scoring.rule(family).score(prediction, score_fields(sample, box_format, em.style)),
            "n_visual": n_visual, "n_text": n_text, "kept": json.dumps(kept),
            "kept_counts": json.dumps([len(k) for k in kept]),
            "merged": json.dumps([stage.merges[b].triples() if stage.merges else [] for stage in record.stages]
                                 if record else []),
            "relevant_kept": relevant_kept(sample, grid, final, image_frame(
                em.adapter.family, em.processor.image_processor, *sample.image.size)),
            "flops_reduction": schedule_flops(dims, n_visual, n_text, stages).reduction,
            "flops_reduction_swiglu": schedule_flops(dims, n_visual, n_text, stages, ffn_matrices=3).reduction,
            "tower_flops_reduction": tower_saving,
            "batch_prefill_ms": prefill, "batch_decode_ms_per_token": decode,
            "batch_total_ms": 1000 * sum(timings), "generated_tokens": new_tokens,
        })
    return rows


def prompt_texts(em: EvalModel, samples: Sequence[EvalSample]) -> list[str]:
    return [em.style.text(s.task, s.question, s.options, s.context, benchmark_family(s.dataset, s.task))
            for s in samples]


def prompt_inputs(em: EvalModel, samples: Sequence[EvalSample]):
    """The processor's left-padded batch for ``samples`` (prompts of the model's style), on the model's
    device, pixel values in its dtype."""
    tokenizer = em.processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = em.processor(images=[s.image for s in samples], text=prompt_texts(em, samples), padding=True,
                              return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    inputs = inputs.to(em.model.device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(em.model.dtype)
    return inputs


@torch.no_grad()
def evaluate_batch(em: EvalModel, setting: MethodSetting, samples: Sequence[EvalSample], mode: str = "remove",
                   positions: str | None = None, max_new_tokens: int | None = None,
                   scoring: Scoring = Scoring(), inputs=None) -> list[dict]:
    """Greedy answers for one batch under one method setting, as row dicts (without run settings), scored
    as ``scoring`` says. ``inputs``: the batch's ``prompt_inputs`` when already made (the grid makes them
    once per batch for every setting)."""
    tokenizer = em.processor.tokenizer
    texts = prompt_texts(em, samples)
    new_tokens = max_new_tokens or max(em.style.max_new_tokens[s.task] for s in samples)
    inputs = prompt_inputs(em, samples) if inputs is None else inputs
    schedule = setting.schedule()
    with ExitStack() as stack:
        engine = stack.enter_context(PruningEngine(em.model, schedule, mode=mode, positions=positions,
                                                   adapter=em.adapter)) if schedule else None
        timings = stack.enter_context(_forward_timer(em.model))
        output = em.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    generated = output[:, inputs["input_ids"].shape[1]:]
    predictions = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    record = engine.records[0] if engine else None
    return _sample_rows(em, samples, texts, predictions, record, inputs, list(timings), new_tokens, scoring,
                        tower_flops_reduction(em, schedule))


def tower_flops_reduction(em: EvalModel, schedule: Schedule | None) -> float:
    """The vision tower's FLOPs reduction under ``schedule``: 0 unless it merges inside the tower (ToMe), whose
    per-layer token counts are fixed by its budget (``flops.tower_flops``; reported apart from eq. 1)."""
    if schedule is None or not schedule.changes_vision_tower:
        return 0.0
    dims = TowerDims.from_config(em.model.config)
    return tower_reduction(dims, tower_tokens(schedule, em.adapter.patches_per_crop, dims.layers,
                                              dims.feature_layer))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[-80:]


def model_fingerprint(em: EvalModel) -> str:
    """Changes when the weights, config, prompts, device or dtype change: finished parts of another
    checkpoint saved at the same path, or computed on another device, are never reused."""
    files = []
    folder = Path(em.name)
    if folder.is_dir():
        files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file()]
    device, dtype = _device_dtype(em)
    return digest(em.name, em.model.config.to_json_string(), files, em.style.templates, em.style.chat, device, dtype,
                  em.adapter.attn_implementation)


def _device_dtype(em: EvalModel) -> tuple[str, str]:
    """The device types ("cuda", not "cuda:1": every rank of a launch shares the parts; "cuda+cpu+disk"
    for a model dispatched by a device_map) and the dtype."""
    parameter = next(em.model.parameters())
    placed = getattr(em.model, "hf_device_map", None) or {"": parameter.device.type}
    types = dict.fromkeys("cuda" if isinstance(d, int) else torch.device(d).type if d != "disk" else d
                          for d in placed.values())
    return "+".join(types), str(parameter.dtype).removeprefix("torch.")


def setting_fingerprint(setting: MethodSetting, mode: str, positions: str | None, seed: int,
                        scoring: Scoring) -> str:
    """Changes with the full schedule (every stage, scorer and selector field), the run settings, the
    scoring and the code that computes rows."""
    return digest(setting.method, setting.params, stable_form(setting.schedule()), mode, positions, seed,
                  scoring.mode, scoring.box_frame, code_digest())


def check_fits(em: EvalModel, settings: Sequence[MethodSetting], data: dict[str, list[EvalSample]]) -> None:
    """Every schedule's layers fit the model and its budgets fit the visual tokens of each dataset's first
    sample (the processor alone tells, once per dataset; nothing runs through the model)."""
    first = {name: em.adapter.inputs_layout(prompt_inputs(em, samples[:1])).counts()[0]
             for name, samples in data.items()}
    for s in settings:
        schedule = s.schedule()
        if schedule is None:
            continue
        stages = schedule.resolve(em.adapter.num_layers)
        for _, stage in stages:
            if stage.merges_on == "vision_tower":
                try:
                    check_tower(em.adapter, stage.merging.keep)
                except ValueError as err:
                    raise ValueError(f"method {s.label!r}: {err}") from None
        for dataset_name, n_visual in first.items():
            n_in = n_visual
            for _, stage in stages:
                if stage.keep is None or stage.scope != "global":
                    break
                try:
                    n_in = stage.budget(n_in, n_visual)
                except ValueError as err:
                    raise ValueError(f"method {s.label!r} on dataset {dataset_name!r}: {err}") from None


def run_grid(models: Sequence[str | EvalModel], methods: Sequence[str | MethodSetting],
             datasets: Sequence[str | tuple[str, list[EvalSample]]],
             out: str | Path, batch_size: int = 8, limit: int | None = None, split: str | None = None,
             device: str = "cpu", dtype: str = "float32", mode: str = "remove", positions: str | None = None,
             seed: int = 0, prompts: dict[str, str] | None = None, progress: bool = True,
             scoring: str = "official", box_frame: str | None = None, dist_timeout: float = 600.0,
             device_map: str | dict | None = None, store: str | Path | None = None,
             reuse_images: bool = True) -> pd.DataFrame:
    """Evaluate every model × method setting × dataset; returns (and writes to ``out``) all rows.

    ``datasets``: specs for ``load_dataset`` ("synthetic", "pope", a .jsonl or a folder) or (name, samples)
    pairs already loaded. ``scoring``: "official" (each benchmark's official script), "lmms-eval" or
    "lenient"; ``box_frame``: "padded" or "image" (None: the model family's). Every argument is checked
    before any model is loaded, and every schedule against the model before any batch runs; finished
    batches are kept on disk (``parts.py``) and reused only while everything that determines their rows
    is unchanged. Several runs into one ``out`` share the batches instead of computing them twice.

    Under torchrun or accelerate launch each rank computes every WORLD_SIZE-th batch first, then helps
    with the rest; rank 0 writes the table once every part exists (``launch.py``). ``dist_timeout``:
    seconds to wait for the rendezvous and for every rank to see ``out``. Rows equal a single process's
    except ``VARYING_COLUMNS`` (timings, and the ``rank`` and ``world_size`` that computed them).
    ``device_map`` ("auto", ...; ``load_vlm``) splits each model over this node's devices instead of ``device``
    (weights that fit nowhere go to ``out/offload``). ``store``: the folder of finished batches (default
    ``out/parts``); grids that share one compute a batch they have in common once (the notebooks share
    ``runs/store``). ``reuse_images=False`` encodes the images again for every setting (the module
    docstring; only for measuring).
    """
    check_int("batch_size", batch_size, minimum=1)
    scorer = Scoring(scoring, box_frame)
    check_choice("mode", mode, ("remove", "mask"))
    if positions is not None:
        check_choice("positions", positions, ("keep", "reindex"))
    launch = Launch.from_env()
    device = check_device(launch.device(device))
    if check_device_map(device_map) is not None and launch.local_world_size > 1:
        raise ValueError(f"device_map={device_map!r} splits one model over all of a node's GPUs: launch one process "
                         f"per node (torchrun --nproc_per_node 1), not LOCAL_WORLD_SIZE={launch.local_world_size}")
    check_choice("dtype", dtype, DTYPES)
    if check_number("dist_timeout", dist_timeout) <= 0:
        raise ValueError(f"dist_timeout={dist_timeout!r}: must be a number of seconds > 0")
    out = check_output_folder(out)
    store = out / "parts" if store is None else check_output_folder(store, "store")
    if not isinstance(reuse_images, bool):
        raise ValueError(f"reuse_images={reuse_images!r}: must be True or False")
    settings = [m if isinstance(m, MethodSetting) else MethodSetting.parse(m) for m in methods]
    for s in settings:
        s.schedule()  # bad parameters fail here, before loading anything
    if prompts:
        check_templates(prompts)
    data = dict(d if isinstance(d, tuple) else (d, load_dataset(d, split=split, limit=limit, seed=seed))
                for d in datasets)
    launch.check_batches(len(models) * len(settings) * sum(-(-len(x) // batch_size) for x in data.values()))
    with joined(launch, device, dist_timeout):
        check_shared(launch, out, dist_timeout)
        with registered(out, launch.world_size) if launch.rank == 0 else nullcontext([]) as others:
            for other in others:
                print(f"note: another run into out={str(out)!r} is live (host {other['host']}, pid {other['pid']}, "
                      f"{other.get('world_size', 1)} process(es)); the runs share its batches, none is computed "
                      "twice, and each writes the same results table", file=sys.stderr)
            load = partial(load_eval_model, device=device, dtype=dtype, prompts=prompts, device_map=device_map,
                           offload_folder=out / "offload")
            return _run(launch, [m if isinstance(m, EvalModel) else load(m) for m in models], settings, data, out,
                        store, batch_size, mode, positions, seed, progress, scorer, reuse_images)


def _run(launch: Launch, models: list[EvalModel], settings: list[MethodSetting], data: dict[str, list[EvalSample]],
         out: Path, store: Path, batch_size: int, mode: str, positions: str | None, seed: int, progress: bool,
         scorer: Scoring, reuse_images: bool) -> pd.DataFrame:
    """``run_grid`` once its arguments are checked: this rank's share of the batches first, then the
    rest, batch by batch (every setting of a batch in turn, sharing its inputs); the table written by
    rank 0."""
    jobs: dict[Path, tuple] = {}
    groups: dict[tuple, list[Path]] = {}
    keys = {name: [sample_digest(x) for x in samples] for name, samples in data.items()}  # image hashes: once
    fingerprints = [setting_fingerprint(s, mode, positions, seed, scorer) for s in settings]
    for em in models:
        check_fits(em, settings, data)
        model_dir = store / f"{_slug(em.name)}-{model_fingerprint(em)}"
        device_used, dtype_used = _device_dtype(em)
        common = {"model": em.name, "prompt_style": em.style.name, "mode": mode, "batch_size": batch_size,
                  "seed": seed, "device": device_used, "dtype": dtype_used, "library_version": __version__,
                  "git_commit": git_commit(), "rank": launch.rank, "world_size": launch.world_size}
        for dataset_name, samples in data.items():
            for s, fingerprint in zip(settings, fingerprints):
                folder = model_dir / _slug(dataset_name) / f"{s.key}-{fingerprint}"
                for index, start in enumerate(range(0, len(samples), batch_size)):
                    batch = samples[start:start + batch_size]
                    part = (folder / f"batch-{index:05d}-{digest(keys[dataset_name][start:start + batch_size])}"
                                     ".parquet")
                    jobs[part] = (em, s, batch, index, {**common, "dataset": dataset_name})
                    groups.setdefault((id(em), dataset_name, index), []).append(part)
    bar = tqdm(total=len(jobs), initial=sum(p.exists() for p in jobs), desc="evaluation batches",
               disable=not progress or launch.rank != 0)

    made: dict[tuple, object] = {}  # the processor's inputs of the batch in hand

    def compute(part: Path) -> pd.DataFrame:
        em, s, batch, index, context = jobs[part]
        bar.set_postfix_str(f"{Path(em.name).name} | {context['dataset']} | {s.label}")
        key = (id(em), context["dataset"], index)
        if key not in made:
            made.clear()
            made[key] = prompt_inputs(em, batch)
        schedule = s.schedule()
        reuse[id(em)].active = reuse_images and not (schedule and schedule.reads_vision_tower)
        reuse[id(em)].remember = not (schedule and schedule.changes_vision_tower)
        torch.manual_seed(seed)
        rows = evaluate_batch(em, s, batch, mode, positions, scoring=scorer, inputs=made[key])
        used = positions or (schedule.positions if schedule else "keep")
        bar.update()
        return pd.DataFrame([{**context, "method": s.method, "params": json.dumps(s.params, sort_keys=True),
                              "setting": s.label, "positions": used, "batch_index": index, **row} for row in rows])

    order = launch.order(groups.values())
    with ExitStack() as stack:
        reuse = {}
        for em in models:
            reuse[id(em)] = em.adapter.reuse_image_features()
            stack.callback(reuse[id(em)].close)
        finished = dict(zip(order, gather(order, compute, stop=partial(stop_if_failed, launch))))
    bar.close()
    results = pd.concat([finished[part] for part in jobs], ignore_index=True)
    if launch.rank == 0:
        write_atomic(results, out / "results.parquet")
        write_atomic(results, out / "results.csv")
    return results


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model × dataset × setting × task × scoring mode, box frame and rule: the rule's
    aggregate metrics, mean FLOPs reduction and the number of samples."""
    rows = []
    keys = ["model", "dataset", "setting", "task", "scoring", "box_frame", "rule"]
    for key, frame in results.groupby(keys, sort=False):
        frame = frame.assign(answers=frame.answers.map(json.loads))
        metric = Scoring(key[4]).rule(key[6])
        rows.append({**dict(zip(keys, key)), "samples": len(frame), **metric.aggregate(frame),
                     "flops_reduction": frame.flops_reduction.mean()})
    return pd.DataFrame(rows)
