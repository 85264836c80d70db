"""Hook registration that always leaves the model as it found it."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Collects hook handles; ``remove()`` (or leaving the ``with`` block, also on error) drops them all."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def pre(self, module: nn.Module, fn: Callable, *, prepend: bool = False) -> None:
        """A forward pre-hook that sees and may replace (args, kwargs)."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend))

    def post(self, module: nn.Module, fn: Callable, *, prepend: bool = False) -> None:
        """A forward hook ``fn(module, args, kwargs, output)`` (``prepend``: before the hooks already there)."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=True, prepend=prepend))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def hook_count(model: nn.Module) -> int:
    """Number of forward hooks and pre-hooks registered anywhere in ``model`` (for leak checks)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
