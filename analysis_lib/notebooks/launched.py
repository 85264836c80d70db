"""The notebook batch under ``torchrun`` / ``accelerate launch``: every rank executes the same notebooks,
so each evaluation grid inside them is split over the ranks (``evaluation/launch.py``) and returns the
same rows on every rank. Rank 0 writes the figures, tables, stamps and executed copies; every other rank
writes its figures and tables into a scratch root deleted at the end, whose ``runs`` is rank 0's (the
finished batches are shared), and its executed copies under ``<run_dir>/rank-<r>/``.

The batch process of each rank holds the process group (gloo: it only coordinates; the kernels have the
devices) for the whole batch, checks that every node sees the root, and agrees on the notebooks to run
(rank 0's stamps). A rank whose notebook fails writes its message into the batch's control folder under
``<root>/runs/``; the others stop at their next wait for a batch or notebook with that message.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch.distributed as dist

from ..evaluation.launch import BATCH_ENV, Launch, check_shared, failure, joined, stop_if_failed
from ..evaluation.parts import HOST


class NotebookFailed(RuntimeError):
    """A notebook of the batch raised; the message names it and the failing cell's error."""


@dataclass(frozen=True)
class Place:
    """Where this rank's notebooks write: ``root`` (their ``root`` parameter) and ``run_dir`` (executed copies)."""

    launch: Launch
    root: Path
    run_dir: Path

    @property
    def lead(self) -> bool:
        """Rank 0 (or the only process): it prints progress and writes stamps."""
        return self.launch.rank == 0

    def say(self, text: str) -> None:
        """Print on rank 0 only: the batch's progress once, not once per rank."""
        if self.lead:
            print(text, flush=True)

    def agree(self, values: list) -> list:
        """Rank 0's ``values`` on every rank, so that every rank runs the same notebooks."""
        if not self.launch.distributed:
            return values
        box = [values]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check(self) -> None:
        """Stop before the next notebook once another rank has failed."""
        try:
            stop_if_failed(self.launch)
        except RuntimeError as err:
            raise NotebookFailed(str(err)) from None

    def failed(self, err: NotebookFailed) -> NotebookFailed:
        """The error this rank reports: another rank's failure that stopped it, or its own, recorded for
        the other ranks."""
        if self.launch.batch is None:
            return err
        other = failure(self.launch.batch)
        if other is not None:
            return NotebookFailed(f"rank {self.launch.rank} stopped: {other}")
        message = f"rank {self.launch.rank} on {HOST}: {err}"
        tmp = self.launch.batch / f".failed-rank-{self.launch.rank}.tmp"
        tmp.write_text(message, encoding="utf-8")
        os.replace(tmp, self.launch.batch / f"failed-rank-{self.launch.rank:05d}.txt")
        return NotebookFailed(message)


@contextmanager
def placed(root: Path, run_dir: Path, timeout: float) -> Iterator[Place]:
    """This process's ``Place``: the repository's folders in one process; under a launch, the process
    group, the root checked as shared, ``BATCH_ENV`` for the kernels and this rank's scratch root."""
    launch = Launch.from_env()
    if not launch.distributed:
        yield Place(launch, root, run_dir)
        return
    (root / "runs").mkdir(parents=True, exist_ok=True)
    token = [secrets.token_hex(6)]
    try:
        with joined(launch, "cpu", timeout):
            check_shared(launch, root, timeout, name="root")
            dist.broadcast_object_list(token, src=0)
            control = root / "runs" / f".batch-{token[0]}"
            control.mkdir(exist_ok=True)
            with _rank_root(launch, root) as rank_root:
                os.environ[BATCH_ENV] = str(control)
                try:
                    yield Place(replace(launch, batch=control), rank_root,
                                run_dir / f"rank-{launch.rank}" if launch.rank else run_dir)
                finally:
                    os.environ.pop(BATCH_ENV, None)
    except NotebookFailed:
        raise
    except RuntimeError:  # the final barrier: a rank that failed has left the group
        message = failure(root / "runs" / f".batch-{token[0]}")
        if message is None:
            raise
        raise NotebookFailed(f"rank {launch.rank} stopped: {message}") from None
    if launch.rank == 0:
        shutil.rmtree(root / "runs" / f".batch-{token[0]}", ignore_errors=True)


@contextmanager
def _rank_root(launch: Launch, root: Path) -> Iterator[Path]:
    """``root`` for rank 0; for the others a scratch folder (removed on exit) whose ``runs`` is ``root``'s."""
    if launch.rank == 0:
        yield root
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"reproduce-rank{launch.rank}-"))
    try:
        (scratch / "runs").symlink_to((root / "runs").resolve(), target_is_directory=True)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
