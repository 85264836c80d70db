"""Command line: ``python -m analysis_lib {flops,methods,eval,reproduce,rehearsal}``."""
from __future__ import annotations

import argparse
import math
import os
import sys

from .flops import FFN_MATRICES, PRESETS, preset_or_config, schedule_flops, tower_flops, tower_reduction
from .pruning.methods import METHODS, get_method
from .pruning.nominal import nominal_kept, tower_tokens
from .validation import check_int


BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_params(pairs: list[str], defaults: dict[str, object]) -> dict[str, object]:
    """``["K=3", "R=0.75"]`` -> {"K": 3, "R": 0.75}, typed like the defaults (an int default accepts a float
    fraction of depth)."""
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"method parameter {pair!r}: write NAME=VALUE, e.g. R=0.75")
        key, value = (part.strip() for part in pair.split("=", 1))
        if key in params:
            raise ValueError(f"method parameter {key} is given twice ({key}={params[key]!r} and {key}={value!r}); "
                             "give it once")
        default = defaults.get(key)
        if isinstance(default, bool):
            if value.lower() not in BOOLEANS:
                raise ValueError(f"method parameter {key}={value!r}: allowed values: {', '.join(BOOLEANS)}")
            params[key] = BOOLEANS[value.lower()]
        elif isinstance(default, (int, float)):
            params[key] = _number(key, value, integer=isinstance(default, int))
        else:
            params[key] = value
    return params


def _number(key: str, text: str, integer: bool) -> int | float:
    """An int where the text is one and the default is an int, else a finite float."""
    if integer and text.lstrip("-").isdigit():
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"method parameter {key}={text!r}: must be a number") from None
    if not math.isfinite(value):
        raise ValueError(f"method parameter {key}={text!r}: must be a finite number")
    return value


def parse_image_size(text: str) -> tuple[int, int]:
    """"HxW" (pixels) -> (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"image_size={text!r} must be HEIGHTxWIDTH in pixels, e.g. 448x448")
    return int(parts[0]), int(parts[1])


def flops_command(args: argparse.Namespace) -> None:
    check_int("--text-tokens", args.text_tokens, minimum=0)
    if args.system_tokens is not None:
        check_int("--system-tokens", args.system_tokens, minimum=0)
    preset = preset_or_config(args.model, n_system=args.system_tokens)
    if args.image_size is not None:
        preset = preset.at_image_size(*parse_image_size(args.image_size))
    method = get_method(args.method)
    schedule = method.schedule(**parse_params(args.params, method.parameters))
    if schedule.changes_vision_tower and preset.tower is None:
        with_tower = [name for name, p in PRESETS.items() if p.tower is not None]
        raise ValueError(f"method {schedule.name!r} merges inside a CLIP vision tower; presets with one: "
                         f"{', '.join(with_tower)} (or a LLaVA config.json)")
    stages = nominal_kept(schedule, preset.dims.layers, preset.grid)
    n_text = preset.n_system + args.text_tokens
    report = schedule_flops(preset.dims, preset.n_visual, n_text, stages, ffn_matrices=args.ffn_matrices)
    grid = f", {preset.grid[0]}x{preset.grid[1]} cells" if preset.cell_pixels else ""
    print(f"model: {args.model}{grid} (d={preset.dims.hidden}, m={preset.dims.intermediate}, T={preset.dims.layers}, "
          f"{preset.n_visual} visual + {n_text} text tokens)")
    print(f"method: {args.method} {' '.join(args.params)}".rstrip())
    for layer, kept in stages:
        where = "before the LLM" if layer == 0 else f"after layer {layer}"
        print(f"  {where}: keep {kept} of {preset.n_visual} visual tokens")
    print(f"FFN term: {args.ffn_matrices}·n·d·m")
    print(f"FLOPs: {report.total_flops / 1e12:.3f} T of {report.baseline_flops / 1e12:.3f} T "
          f"-> reduction {100 * report.reduction:.1f}%")
    if schedule.changes_vision_tower:
        print_tower_flops(preset, schedule)


def print_tower_flops(preset, schedule) -> None:
    """The vision tower's FLOPs under a schedule that merges in it (ToMe), against the unmerged tower."""
    tower = preset.tower
    tokens = tower_tokens(schedule, preset.n_visual, tower.layers, tower.feature_layer)
    reduction = tower_reduction(tower, tokens)
    merged = tower_flops(tower, tokens)
    print(f"vision tower (d={tower.hidden}, m={tower.intermediate}, {tower.layers} layers): tokens per layer "
          f"{' '.join(str(n) for n, _ in tokens)} -> {tokens[-1][1]}")
    print(f"vision tower FLOPs: {merged / 1e12:.3f} T of {merged / (1 - reduction) / 1e12:.3f} T -> reduction "
          f"{100 * reduction:.1f}% (reported apart from the language model's)")


def methods_command(_args: argparse.Namespace) -> None:
    print("R = fraction of visual tokens removed; K = layer (of 32) or fraction of depth; scope = 'global' "
          "(one budget per sample) or 'crop' (the same fraction in every encoder crop, e.g. LLaVA-NeXT tiles).\n")
    for name, method in METHODS.items():
        params = ", ".join(f"{k}={v}" for k, v in method.parameters.items())
        print(f"{name}({params})\n    {method.summary}")


def eval_command(args: argparse.Namespace) -> None:
    from .evaluation.runner import run_grid, summarize
    prompts = dict(parse_params(args.prompt, {})) if args.prompt else None
    results = run_grid(args.model, args.methods, args.dataset, args.out, batch_size=args.batch_size, limit=args.limit,
                       split=args.split, device=args.device, dtype=args.dtype, mode=args.mode,
                       positions=args.positions, seed=args.seed, prompts=prompts, scoring=args.scoring,
                       box_frame=args.box_frame, dist_timeout=args.dist_timeout, device_map=args.device_map)
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 of a torchrun launch prints the summary
    summary = summarize(results)
    print(summary.to_string(index=False))
    print(f"rows: {args.out}/results.parquet (and .csv); re-running the same command resumes")


def reproduce_command(args: argparse.Namespace) -> None:
    from .notebooks.batch import NotebookFailed, run_batch
    try:
        run_batch(args.profile, only=args.only, root=args.root, skip_up_to_date=args.skip_up_to_date,
                  threads=args.threads, update_committed=args.update_committed, jobs=args.jobs,
                  dist_timeout=args.dist_timeout)
    except NotebookFailed as err:
        raise ValueError(str(err)) from None


def rehearsal_command(args: argparse.Namespace) -> None:
    from .rehearsal import build
    written = build(args.out)
    print(f"stand-in model: {written['model']}\nbenchmark copies (hub cache): {written['hub']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("flops", help="theoretical FLOPs reduction of a method on a model")
    p.add_argument("--model", required=True, help=f"a preset ({', '.join(PRESETS)}) or a local config.json/folder")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("params", nargs="*", help="method parameters NAME=VALUE (see `methods`)")
    p.add_argument("--ffn-matrices", type=int, default=2, choices=FFN_MATRICES,
                   help="2: FastV/FEATHER eq. 1; 3: PyramidDrop/SparseVLM (SwiGLU)")
    p.add_argument("--system-tokens", type=int, default=None, help="override the preset's system-token count")
    p.add_argument("--text-tokens", type=int, default=0, help="question tokens counted in n (default 0)")
    p.add_argument("--image-size", default=None, metavar="HxW",
                   help="image height x width in pixels (dynamic-resolution presets: qwen2.5-vl-7b, qwen3-vl-8b)")
    p.set_defaults(fn=flops_command)
    p = sub.add_parser("methods", help="list the pruning methods with their parameters and defaults")
    p.set_defaults(fn=methods_command)
    p = sub.add_parser("eval", help="evaluate models × methods × datasets; one Parquet row per sample, resumable")
    p.add_argument("--model", nargs="+", required=True, help="checkpoint folders or hub ids")
    p.add_argument("--methods", nargs="+", default=["none"],
                   help="'none' or NAME[:K=V,K=V], e.g. fastv:K=3,R=0.75 (see `methods`)")
    p.add_argument("--dataset", nargs="+", required=True,
                   help="'synthetic', a benchmark name (pope, refcoco, ...), a .jsonl file or a dataset folder")
    p.add_argument("--out", required=True, help="output folder (parts/, results.parquet, results.csv)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="first N samples of each dataset")
    p.add_argument("--split", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--mode", default="remove", choices=("remove", "mask"))
    p.add_argument("--positions", default=None, choices=("keep", "reindex"), help="override the methods' policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", nargs="*", default=None, help="TASK=TEMPLATE (or BENCHMARK=TEMPLATE) overrides "
                   "with {question}")
    p.add_argument("--scoring", default="official", help="official (each benchmark's official script, default), "
                   "lmms-eval (lmms-eval 0.7.3's functions; pip install -e \".[lmms]\") or lenient")
    p.add_argument("--box-frame", default=None, help="padded or image: what decimal boxes are fractions of "
                   "(default: the model family's; LLaVA-1.5 padded)")
    p.add_argument("--device-map", default=None, help="auto (or balanced, sequential): split each model over this "
                   "node's GPUs, offloading what does not fit to CPU memory (needs accelerate); replaces --device")
    p.add_argument("--dist-timeout", type=float, default=600.0, help="under torchrun: seconds to wait for the "
                   "rendezvous and for every node to see --out (default 600)")
    p.set_defaults(fn=eval_command)
    p = sub.add_parser("reproduce", help="run every notebook with papermill (default: the embedded model on CPU)")
    p.add_argument("--profile", default="default", help="notebooks/profiles/<name>.yaml or a YAML path "
                   "(default, ci, llava-1.5-7b)")
    p.add_argument("--only", nargs="*", default=None, help="run only these notebooks")
    p.add_argument("--skip-up-to-date", action="store_true", help="skip notebooks whose inputs did not change")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per notebook kernel (0 = torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks run at once, each in its own kernel (on a CPU: "
                   "one per core, with --threads 1); the efficiency notebook always runs alone")
    p.add_argument("--root", default=None, help="figures/ and data/results/ are written under it (default: the "
                   "repository for the default profile, runs/reproduce/<profile>/ for the others)")
    p.add_argument("--update-committed", action="store_true",
                   help="let a non-default profile write the repository's committed figures/ and data/results/")
    p.add_argument("--dist-timeout", type=float, default=600.0, help="under torchrun: seconds to wait for the "
                   "rendezvous and for every node to see --root (default 600)")
    p.set_defaults(fn=reproduce_command)
    p = sub.add_parser("rehearsal", help="build the rehearsal's stand-in model and benchmark copies (README, "
                       "'The rehearsal'); then: reproduce --profile rehearsal")
    p.add_argument("action", choices=("build",))
    p.add_argument("--out", default="runs/rehearsal", help="folder for model/ and hub/ (default runs/rehearsal, "
                   "where the rehearsal profile reads them)")
    p.set_defaults(fn=rehearsal_command)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        if args.debug:
            raise
        if os.environ.get("LOCAL_RANK", "0") == "0" or str(err).startswith("rank "):
            print(f"error: {err}", file=sys.stderr)  # under torchrun once per node, unless only this rank failed
        return 2
    return 0
