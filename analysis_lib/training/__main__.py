"""python -m analysis_lib.training train --recipe default --out runs/train-default [--hours H] [--until-step N] [--init-tower-from CKPT | --branch-from CKPT]
python -m analysis_lib.training evaluate --model runs/train-default/model [--split test] [--per-task N]"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..validation import check_int
from .evaluate import evaluate_checkpoint
from .recipe import RECIPES
from .train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis_lib.training")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train a recipe, resuming from OUT/checkpoint.pt if present")
    run.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    run.add_argument("--out", required=True)
    run.add_argument("--hours", type=float, default=None, help="stop (after checkpointing) after this long")
    run.add_argument("--until-step", type=int, default=None, help="stop (after checkpointing) after this step")
    run.add_argument("--init-tower-from", default=None, help="a fresh run takes its tower from this checkpoint.pt")
    run.add_argument("--branch-from", default=None,
                     help="a fresh run carries on from this checkpoint.pt of a recipe with the same steps so far")
    score = commands.add_parser("evaluate", help="score a saved model on a split, per task")
    score.add_argument("--model", required=True)
    score.add_argument("--split", default="test")
    score.add_argument("--per-task", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        check_int("threads", args.threads, minimum=1)
        torch.set_num_threads(args.threads)
        _run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    if args.command == "train":
        limit_s = None if args.hours is None else args.hours * 3600
        result = train(args.recipe, args.out, limit_s, init_tower_from=args.init_tower_from,
                       branch_from=args.branch_from, until_step=args.until_step)
        print(json.dumps({"step": result["step"], "train_seconds": result["train_seconds"],
                          "last_probe": result["probes"][-1] if result["probes"] else None}))
    else:
        print(json.dumps(evaluate_checkpoint(args.model, args.split, args.per_task), indent=1))


if __name__ == "__main__":
    sys.exit(main())
