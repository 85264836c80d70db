"""Forward-call arguments, read and rewritten in one place for every supported transformers release.

Hooks see a module's ``(args, kwargs)`` before the module's own argument handling runs, so they see
whatever spelling the caller used. The spellings differ across the supported range:

- the KV cache is ``past_key_values`` up to 5.23 and ``cache`` from 5.24 on (the old name stays a
  deprecated alias until 5.40), in forward calls and in model outputs;
- ``generate`` encodes images before the first forward from 5.24 on (``mm_encoder_outputs``), so the
  forward call may carry no ``pixel_values``/``image_sizes``: the image sizes are read where the images
  are encoded (``get_image_features``, called positionally by some models and by keyword by others).

Nothing else in analysis_lib names a forward argument: tracking, the pruning engine, attention capture
and the analyses use these readers through the adapter, under the project's own names (``tokens``,
``mask``, ``positions``, ``embeddings``, ``hidden``, ``geometry``).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: every spelling of the KV-cache argument and output field, newest first
CACHE_NAMES = ("cache", "past_key_values")


def _first_present(kwargs: dict, names: tuple[str, ...]):
    for name in names:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` makes them: count of real tokens so far."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


@dataclass
class ModelCall:
    """A top-level forward call of the VLM (``model(**inputs)`` or one step of ``generate``)."""

    args: tuple
    kwargs: dict
    #: the argument that carries the image geometry (image sizes, or Qwen's ``image_grid_thw``)
    geometry_name: str = "image_sizes"

    @property
    def tokens(self) -> torch.Tensor | None:
        return self.kwargs.get("input_ids", self.args[0] if self.args else None)

    @property
    def token_types(self) -> torch.Tensor | None:
        """Qwen's ``mm_token_type_ids`` (1 at image tokens), None where the call has none."""
        return self.kwargs.get("mm_token_type_ids")

    @property
    def cache(self):
        return _first_present(self.kwargs, CACHE_NAMES)

    @property
    def cached_length(self) -> int:
        """Tokens already in the KV cache before this call (0 without a cache)."""
        cache = self.cache
        return 0 if cache is None else int(cache.get_seq_length())

    @property
    def mask(self) -> torch.Tensor | None:
        return self.kwargs.get("attention_mask")

    @property
    def positions(self) -> torch.Tensor | None:
        """The position ids as passed, in the model's own format."""
        return self.kwargs.get("position_ids")

    @positions.setter
    def positions(self, value: torch.Tensor) -> None:
        self.kwargs["position_ids"] = value

    @property
    def geometry(self) -> torch.Tensor | None:
        return self.kwargs.get(self.geometry_name)


@dataclass
class LanguageModelCall:
    """A call of the language model (the decoder stack) by the VLM: embeddings, 2D mask, positions."""

    args: tuple
    kwargs: dict

    @property
    def embeddings(self) -> torch.Tensor:
        return self.kwargs["inputs_embeds"]

    def rewrite(self, embeddings: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor) -> None:
        """Run the language model on ``embeddings`` with this 2D mask and these (model-format) position ids."""
        self.kwargs.update(inputs_embeds=embeddings, attention_mask=mask, position_ids=position_ids)

    def replace_embeddings(self, embeddings: torch.Tensor) -> None:
        """Run the language model on ``embeddings`` (same length), mask and positions unchanged."""
        self.kwargs["inputs_embeds"] = embeddings

    def take_visual_injections(self) -> list[torch.Tensor]:
        """Remove and return Qwen3-VL's DeepStack features (per early decoder layer, [visual tokens, D], added to
        that layer's output at the image tokens, in sequence order), so the caller adds them at its own slots."""
        self.kwargs.pop("visual_pos_masks", None)
        return list(self.kwargs.pop("deepstack_visual_embeds", None) or [])

    def prefix_kwargs(self) -> dict:
        """Arguments that run the same prompt again through the language model, without a cache."""
        return {"inputs_embeds": self.embeddings, "attention_mask": self.kwargs.get("attention_mask"),
                "position_ids": self.kwargs.get("position_ids"), "use_cache": False}


@dataclass
class DecoderLayerCall:
    """A call of one decoder layer: hidden states (positional or keyword), mask, positions and RoPE."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def rewrite(self, hidden: torch.Tensor, mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[tuple, dict]:
        """The (args, kwargs) that run this layer on ``hidden`` with the given mask, positions and (cos, sin)."""
        kwargs = dict(self.kwargs, attention_mask=mask, position_ids=position_ids, position_embeddings=rope)
        if self.args:
            return (hidden, *self.args[1:]), kwargs
        kwargs["hidden_states"] = hidden
        return self.args, kwargs


@dataclass
class VisionLayerCall:
    """A call of one encoder layer of a CLIP tower: hidden states and additive attention mask (CLIPEncoder
    passes both positionally; keywords are read too)."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def rewrite(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[tuple, dict]:
        """The (args, kwargs) that run this layer on ``hidden`` with this additive mask (None: no mask)."""
        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("hidden_states", "attention_mask")}
        return (hidden, mask, *self.args[2:]), kwargs


@dataclass
class AttentionCall:
    """A call of an attention block: the (cos, sin) it applies and, in Qwen's vision tower, the boundaries
    of the attention windows (``cu_seqlens``)."""

    args: tuple
    kwargs: dict

    @property
    def rope(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin), None for a tower without RoPE."""
        return self.kwargs.get("position_embeddings")

    @property
    def segments(self) -> torch.Tensor | None:
        """Cumulative boundaries of the independently attending segments of a packed sequence."""
        return self.kwargs.get("cu_seqlens")


def map_layer_output(output, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A decoder layer's output (hidden states, or a tuple starting with them) with ``fn`` applied to them."""
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return fn(output)


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

    Returns the function that restores the method (``_replace_method``).
    """
    original = getattr(owner, method)
    signature = inspect.signature(original)

    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        on_value(bound.arguments.get(argument))
        return original(*args, **kwargs)

    return _replace_method(owner, method, wrapper)


def _replace_method(owner, method: str, wrapper: Callable) -> Callable[[], None]:
    """Install ``wrapper`` as ``owner.method``; the returned function puts back what was there (another
    wrapper installed earlier, or the class's own method), so wrappers nest and come off in any LIFO order."""
    previous = owner.__dict__.get(method)
    wrapper.__wrapped__ = getattr(owner, method)
    setattr(owner, method, wrapper)

    def restore() -> None:
        if previous is None:
            delattr(owner, method)
        else:
            setattr(owner, method, previous)

    return restore


def _same(a: object, b: object) -> bool:
    """Equal arguments: tensors by dtype, shape, device and value; containers element by element."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return a is b


class LastResult:
    """While ``active``, ``owner.method`` called again with equal arguments returns its previous result
    instead of recomputing it; inactive, it computes (and remembers, while ``remember``) as usual. The
    evaluation grid uses it on ``get_image_features``: one batch's images are encoded once for every setting
    that leaves the vision tower alone; a setting that changes the tower's output (ToMe) is neither served
    nor remembered. ``close()`` restores the method."""

    def __init__(self, owner, method: str):
        self.active = True
        self.remember = True
        self._last: tuple[tuple, dict, object] | None = None
        original = getattr(owner, method)

        def wrapper(*args, **kwargs):
            if self.active and self._last is not None and _same((args, kwargs), self._last[:2]):
                return self._last[2]
            result = original(*args, **kwargs)
            if self.remember:
                self._last = (args, kwargs, result)
            return result

        self.close = _replace_method(owner, method, wrapper)
