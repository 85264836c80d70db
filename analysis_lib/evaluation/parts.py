"""Finished evaluation batches on disk: what keys them, how they are written, shared and recovered.

A part is one batch of rows under a name that holds everything that determines them (``part_key``):
the samples' content (question, answers, options, box, image bytes), the model (weights, config,
prompts), device, dtype, the full pruning schedule, the run settings and a digest of the code that
computes rows. Change any of these and the part is computed again; nothing stale is ever reused.

Several runs may share one output folder (two shells, or the ranks of a distributed launch): a run
*claims* a part (an exclusive claim file) before computing it, others wait for the part instead of
computing it twice, and a claim left by a process that died is taken over. A part is written to a
temporary name unique to the process and renamed, so no reader ever sees half a part; a part that
cannot be read (a truncated file) is set aside with a warning and computed again.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

PACKAGE = Path(__file__).resolve().parents[1]
#: the library code whose changes change rows (analyses and notebooks only read rows)
ROW_CODE = ("adapters", "pruning", "evaluation", "scenes", "attention.py", "tracking.py", "hooks.py", "layout.py",
            "flops.py", "loading.py", "capture.py")


def digest(*parts: object) -> str:
    """Short stable hash of JSON-able parts (anything else by ``str``)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _source_without_docs(path: Path) -> str:
    """The module's syntax tree without docstrings: comments and docs do not change rows."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.lru_cache(maxsize=None)
def code_digest(package: Path = PACKAGE) -> str:
    """Digest of the row-computing code (``ROW_CODE``), docstrings and comments ignored."""
    files = []
    for name in ROW_CODE:
        target = package / name
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return digest([(f.relative_to(package).as_posix(), _source_without_docs(f)) for f in files])


def stable_form(value: object) -> object:
    """A JSON-able form of a schedule (nested frozen dataclasses, tensors, tuples) that names every field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {type(value).__name__: {f.name: stable_form(getattr(value, f.name))
                                       for f in dataclasses.fields(value)}}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [stable_form(v) for v in value]
    if isinstance(value, dict):
        return {str(k): stable_form(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, (int, str, bool, type(None))) else repr(value)


def sample_digest(sample) -> str:
    """Everything of one sample that reaches the prompt or the score, image pixels included."""
    image = sample.image
    pixels = hashlib.sha1(image.tobytes()).hexdigest() if image is not None else None
    fields = {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample) if f.name != "image"}
    size = (image.size, image.mode) if image is not None else None
    return digest(stable_form(fields), pixels, size)


# ---- claims -----------------------------------------------------------------------------------------
HOST = socket.gethostname()


def _owner() -> dict:
    return {"host": HOST, "pid": os.getpid(), "started": time.time()}


def _alive(owner: dict) -> bool:
    """A claim's process is alive; claims from other hosts are trusted (their liveness is unknowable here)."""
    if owner.get("host") != HOST:
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


UNREADABLE_CLAIM_S = 60  # a claim file that cannot be read for this long is taken for abandoned


def _publish_claim(path: Path) -> bool:
    """Create the claim file with its owner already written (a hard link of a finished temporary file is
    atomic and fails if the claim exists), so no other process ever reads a half-written claim."""
    tmp = path.with_name(f"{path.name}.{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(_owner()))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _abandoned(path: Path) -> bool:
    """The claim's process died (same host), is this process (a leftover: one process computes one part at
    a time), or the claim has been unreadable for a long time."""
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_CLAIM_S
        except FileNotFoundError:
            return True
    if owner.get("pid") == os.getpid() and owner.get("host") == HOST:
        return True
    return not _alive(owner)


def claim(part: Path) -> bool:
    """Take the exclusive right to compute ``part``; False while another live process holds it. A claim
    whose process died is removed and taken over."""
    path = part.with_name(part.name + ".claim")
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        if _publish_claim(path):
            return True
        if not _abandoned(path):
            return False
        path.unlink(missing_ok=True)
    return False


def release(part: Path) -> None:
    part.with_name(part.name + ".claim").unlink(missing_ok=True)


@contextmanager
def registered(out: Path, world_size: int = 1) -> Iterator[list[dict]]:
    """Record this run (a process or a torchrun launch, by its rank 0) under ``out/running/`` while it lasts;
    yields the other live runs into ``out``, whose batches it shares rather than computing them twice."""
    folder = out / "running"
    folder.mkdir(parents=True, exist_ok=True)
    others = []
    for path in folder.glob("*.json"):
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            others.append(owner)
        else:
            path.unlink(missing_ok=True)
    mine = folder / f"{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    mine.write_text(json.dumps({**_owner(), "world_size": world_size}))
    try:
        yield others
    finally:
        mine.unlink(missing_ok=True)


# ---- reading and writing ------------------------------------------------------------------------------
def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary name unique to this process, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_part(part: Path) -> pd.DataFrame | None:
    """The part's rows; None if it does not exist, or if it is unreadable, after setting it aside
    (renamed ``*.corrupt-<time>``) with a warning so that it is computed again."""
    if not part.exists():
        return None
    try:
        return pd.read_parquet(part)
    except Exception as err:  # pyarrow raises several types for truncated or foreign files
        aside = part.with_name(f"{part.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(part, aside)
        warnings.warn(f"{part}: unreadable ({type(err).__name__}: {err}); set aside as {aside.name}, recomputing",
                      stacklevel=2)
        return None


def gather(parts: Iterable[Path], compute: Callable[[Path], pd.DataFrame], poll: float = 0.5,
           stop: Callable[[], None] = lambda: None) -> list[pd.DataFrame]:
    """The rows of every part in order: read when finished, computed when claimed by this process, and
    waited for while another live process computes them (taken over if it dies). ``stop`` is called
    before computing a part and while waiting; it raises when the run must end (another rank failed)."""
    parts = list(parts)
    frames: dict[Path, pd.DataFrame] = {}
    pending = parts
    while pending:
        waiting = []
        for part in pending:
            frame = read_part(part)
            if frame is None and claim(part):
                try:
                    frame = read_part(part)  # finished between the read and the claim
                    if frame is None:
                        stop()
                        frame = compute(part)
                        write_atomic(frame, part)
                finally:
                    release(part)
            if frame is None:
                waiting.append(part)
            else:
                frames[part] = frame
        if waiting:
            stop()
            time.sleep(poll)
        pending = waiting
    return [frames[p] for p in parts]
