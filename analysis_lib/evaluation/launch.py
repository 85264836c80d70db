"""The processes of one evaluation launch: a single process, or the ranks of ``torchrun`` /
``accelerate launch`` (both set RANK, WORLD_SIZE and LOCAL_RANK).

The ranks share the grid's batches through the claims of ``parts.py``; torch.distributed (gloo on CPU,
NCCL on GPUs) is used only to start together, to check that every node sees the same ``--out`` and to
wait for the results table, so a rank that finishes early helps the others instead of idling.

Inside a launched notebook batch (``python -m analysis_lib reproduce`` under torchrun) the batch process
of each rank holds the process group and names its control folder in ``BATCH_ENV`` for the notebooks'
kernels: their runs share batches through the claims alone, and stop waiting once a rank has failed.
"""
from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .parts import HOST

#: set by a launched notebook batch for its kernels: the batch's control folder (``failure`` files)
BATCH_ENV = "ANALYSIS_LIB_BATCH"


@dataclass(frozen=True)
class Launch:
    """This process's place in the launch (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    batch: Path | None = None  # a launched notebook batch holds the process group (``BATCH_ENV``)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Launch:
        """Read RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE as torchrun and accelerate launch set them."""
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1)):
            text = env.get(name, str(default))
            if not text.isdigit():
                raise ValueError(f"environment variable {name}={text!r}: must be an integer >= 0 (set by torchrun)")
            values[name] = int(text)
        if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
            raise ValueError(f"environment variables RANK={values['RANK']} and WORLD_SIZE={values['WORLD_SIZE']}: "
                             "need 0 <= RANK < WORLD_SIZE")
        batch = env.get(BATCH_ENV)
        return cls(*values.values(), Path(batch) if batch and values["WORLD_SIZE"] > 1 else None)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """Each rank of a GPU launch on its own GPU: "cuda" means cuda:LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if self.distributed and device == "cuda" else device

    def order(self, groups: Sequence[Sequence]) -> list:
        """Every part of every group, this rank's groups first (every world_size-th group from its rank on),
        then the others', which it reads, waits for or helps with. A group (one batch of samples under every
        setting) stays on one rank, so its encoding is shared."""
        groups = [list(g) for g in groups]
        mine = groups[self.rank::self.world_size]
        theirs = [g for i, g in enumerate(groups) if i % self.world_size != self.rank]
        return [part for group in mine + theirs for part in group]

    def check_batches(self, batches: int) -> None:
        """More ranks than batches would leave ranks idle: refused, except in a notebook batch, whose
        small grids are one step of a longer run."""
        if batches < self.world_size and self.batch is None:
            raise ValueError(f"WORLD_SIZE={self.world_size} processes but the grid has only {batches} batch(es): "
                             f"launch at most {batches} (torchrun --nproc_per_node × --nnodes) or lower --batch-size")


@contextmanager
def joined(launch: Launch, device: str, timeout: float) -> Iterator[None]:
    """The process group around a distributed run: joined on entry, left on exit (after a barrier, so
    no rank returns before rank 0 has written the results table, when the run succeeded). Inside a
    launched notebook batch the batch process holds the group: nothing to join."""
    if not launch.distributed or launch.batch is not None:
        yield
        return
    _start(launch, device, timeout)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _start(launch: Launch, device: str, timeout: float) -> None:
    """Join the process group (NCCL for CUDA, else gloo) within ``timeout`` seconds; one clear error if
    the rendezvous cannot be reached or not every rank arrives."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
        dist.barrier()
    except (RuntimeError, ValueError, TimeoutError) as err:  # torch's DistError subclasses RuntimeError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"rank {launch.rank} on {HOST}: the rendezvous at {where} did not complete within "
                         f"dist_timeout={timeout:g} s ({first}); start every node with the same torchrun command "
                         "and --rdzv-endpoint, and check that the port is open") from None


def check_shared(launch: Launch, out: Path, timeout: float, name: str = "out") -> None:
    """Every rank must see a file rank 0 writes under ``out`` (the parameter ``name``): a folder local to
    each node would lose the other nodes' batches. One error on every rank names the ranks that did not
    see it. Inside a launched notebook batch the batch process checked its root already."""
    if not launch.distributed or launch.batch is not None:
        return
    token = [secrets.token_hex(8) if launch.rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    marker = out / f".launch-{token[0]}"
    if launch.rank == 0:
        marker.write_text(HOST)
    wait = timeout / 2  # the all_gather below must not time out while a rank still looks
    deadline = time.monotonic() + wait
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen: list = [None] * launch.world_size
    dist.all_gather_object(seen, (marker.exists(), HOST))
    if launch.rank == 0:
        marker.unlink()
    blind = [f"{rank} ({host})" for rank, (ok, host) in enumerate(seen) if not ok]
    if blind:
        raise ValueError(f"{name}={str(out)!r} is not shared by all nodes: rank(s) {', '.join(blind)} did not see "
                         f"the file rank 0 wrote there within {wait:g} s (half dist_timeout); give --{name} a folder "
                         "every node mounts (e.g. NFS) at the same path")


def failure(control: Path) -> str | None:
    """The message of a rank that failed in a launched notebook batch (the lowest; its file under ``control``)."""
    found = sorted(control.glob("failed-rank-*.txt"))
    return found[0].read_text(encoding="utf-8") if found else None


def stop_if_failed(launch: Launch) -> None:
    """Raise once another rank of this launched notebook batch has failed: its batches will never come."""
    message = failure(launch.batch) if launch.batch is not None else None
    if message is not None:
        raise RuntimeError(f"rank {launch.rank} stopped: {message}")
