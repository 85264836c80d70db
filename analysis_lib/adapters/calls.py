"""Forward-call arguments, read and rewritten in one place for every supported transformers release.

Hooks see a module's ``(args, kwargs)`` before the module's own argument handling runs, so they see
whatever spelling the caller used. The spellings differ across the supported range:

- the KV cache is ``past_key_values`` up to 5.23 and ``cache`` from 5.24 on (the old name stays a
  deprecated alias until 5.40), in forward calls and in model outputs;
- ``generate`` encodes images before the first forward from 5.24 on (``mm_encoder_outputs``), so the
  forward call may carry no ``pixel_values``/``image_sizes``: the image sizes are read where the images
  are encoded (``get_image_features``, called positionally by some models and by keyword by others).

Nothing else in analysis_lib names a forward argument: tracking, the pruning engine, attention capture
and the analyses use these readers through the adapter.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: every spelling of the KV-cache argument and output field, newest first
CACHE_NAMES = ("cache", "past_key_values")


def _argument(name: str) -> property:
    """A read/write view of one keyword argument of a call (None when it was not passed)."""
    return property(lambda call: call.kwargs.get(name), lambda call, value: call.kwargs.__setitem__(name, value),
                    doc=f"the call's ``{name}`` argument")


def _first_present(kwargs: dict, names: tuple[str, ...]):
    for name in names:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


@dataclass
class ModelCall:
    """A top-level forward call of the VLM (``model(**inputs)`` or one step of ``generate``)."""

    args: tuple
    kwargs: dict

    @property
    def input_ids(self) -> torch.Tensor | None:
        return self.kwargs.get("input_ids", self.args[0] if self.args else None)

    @property
    def cache(self):
        return _first_present(self.kwargs, CACHE_NAMES)

    @property
    def cached_length(self) -> int:
        """Tokens already in the KV cache before this call (0 without a cache)."""
        cache = self.cache
        return 0 if cache is None else int(cache.get_seq_length())

    attention_mask = _argument("attention_mask")
    position_ids = _argument("position_ids")
    image_sizes = _argument("image_sizes")


@dataclass
class LanguageModelCall:
    """A call of the language model (the decoder stack) by the VLM: embeddings, 2D mask, positions."""

    args: tuple
    kwargs: dict

    inputs_embeds = _argument("inputs_embeds")
    attention_mask = _argument("attention_mask")
    position_ids = _argument("position_ids")

    def prefix_kwargs(self) -> dict:
        """Arguments that run the same prompt again through the language model, without a cache."""
        return {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "use_cache": False}


@dataclass
class DecoderLayerCall:
    """A call of one decoder layer: hidden states (positional or keyword), mask, positions and RoPE."""

    args: tuple
    kwargs: dict

    @property
    def hidden_states(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def rewrite(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[tuple, dict]:
        """The (args, kwargs) that run this layer on ``hidden_states`` with the given mask and positions."""
        kwargs = dict(self.kwargs, attention_mask=attention_mask, position_ids=position_ids,
                      position_embeddings=position_embeddings)
        if self.args:
            return (hidden_states, *self.args[1:]), kwargs
        kwargs["hidden_states"] = hidden_states
        return self.args, kwargs


def attention_rope(kwargs: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (cos, sin) an attention block is called with (None for a tower without RoPE)."""
    return kwargs.get("position_embeddings")


def output_cache(output):
    """The KV cache a forward returned (a ``ModelOutput`` holds only its non-None fields)."""
    for name in CACHE_NAMES:
        if name in output:
            return output[name]
    return None


def cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every decoder layer of a transformers cache, [B, heads, cached, dim] each."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def watch_argument(owner, method: str, argument: str, on_value: Callable[[object], None]) -> Callable[[], None]:
    """Call ``on_value(value)`` with ``argument`` of every call of ``owner.method`` (positional or keyword).

    Returns the function that restores the method. The wrapper is an instance attribute, so removing it
    brings back the class's own method.
    """
    original = getattr(owner, method)
    signature = inspect.signature(original)

    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        on_value(bound.arguments.get(argument))
        return original(*args, **kwargs)

    wrapper.__wrapped__ = original
    setattr(owner, method, wrapper)

    def restore() -> None:
        delattr(owner, method)

    return restore
