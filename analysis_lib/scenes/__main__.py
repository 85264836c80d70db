"""python -m analysis_lib.scenes --out DIR --split test [--per-task N] [--seed S] [--image-size 96 --patch-size 8]"""

from __future__ import annotations

import argparse

from .attributes import SPLITS, TASKS
from .config import SceneConfig
from .storage import write_samples
from .suite import generate_split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis_lib.scenes", description="Write a split of the scene suite as JSONL + PNG.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--per-task", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=SceneConfig.image_size)
    parser.add_argument("--patch-size", type=int, default=SceneConfig.patch_size)
    args = parser.parse_args(argv)
    config = SceneConfig(image_size=args.image_size, patch_size=args.patch_size)
    samples = generate_split(args.split, args.per_task, tuple(args.tasks), config, args.seed)
    print(write_samples(samples, args.out, args.split))


if __name__ == "__main__":
    main()
