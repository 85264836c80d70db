"""Small checks that turn bad input into errors naming the parameter and the allowed values."""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; otherwise raise a ValueError that lists them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(repr, allowed))}")
    return value


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """Return ``value`` if it lies in the interval; otherwise raise a ValueError showing the interval."""
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is outside the allowed range {interval}")
    return value


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """Return ``value`` if it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name}={value!r}: must be an integer{bound}")
    return value


def check_number(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite real number (not a bool, a string or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a finite number")
    return value


def check_device(device: str) -> str:
    """Return ``device`` if torch knows it and this machine has it (checked before any model loads)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; allowed: 'cpu', 'cuda', 'cuda:N', 'mps'") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise ValueError(f"device={device!r}: this machine has {count} CUDA device(s); use 'cpu'"
                             + (f" or 'cuda:0'..'cuda:{count - 1}'" if count else ""))
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available on this machine; use 'cpu'")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: allowed device types are 'cpu', 'cuda', 'mps'")
    return device


def check_output_folder(path: str | Path, name: str = "out") -> Path:
    """Create ``path`` if needed and check that files can be written in it, before any long work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{name}={str(path)!r}: cannot write there ({err.strerror or err})") from None
    return path
