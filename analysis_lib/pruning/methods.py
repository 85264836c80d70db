"""Named methods: a registry from names to schedule factories with the papers' defaults.

Every parameter of a factory is a method parameter (``python -m analysis_lib methods`` lists them).
Layers are absolute for a 32-layer model or fractions of depth; ``Schedule.resolve`` checks them.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ..attention import TextAttentionSpec
from ..validation import check_choice, check_range
from .schedule import Schedule, Stage
from .scorers import RandomScorer, TextAttentionScorer, VisionAttentionScorer


def _ratio(R: float) -> float:
    return check_range("R", R, 0.0, 1.0, high_open=True)


def fastv(K: int | float = 2, R: float = 0.5) -> Schedule:
    """FastV (φ_original): after layer K drop the fraction R of visual tokens with the least attention
    from the last token (RoPE as applied), averaged over heads."""
    return Schedule((Stage(K, TextAttentionScorer(), 1.0 - _ratio(R)),), name="fastv")


def prellm_cls(R: float = 0.5) -> Schedule:
    """Drop the fraction R of visual tokens before the LLM by the vision tower's [CLS] attention at the
    feature layer (the importance half of VisPruner, without its diverse tokens)."""
    return Schedule((Stage(0, VisionAttentionScorer("cls"), 1.0 - _ratio(R)),), name="prellm_cls")


def random_prune(K: int | float = 0, R: float = 0.5, seed: int = 0) -> Schedule:
    """Drop the fraction R of visual tokens at random (seeded) after layer K (0 = before the LLM)."""
    return Schedule((Stage(K, RandomScorer(seed), 1.0 - _ratio(R)),), name="random")


def fastv_norope(K: int | float = 2, R: float = 0.5) -> Schedule:
    """FEATHER's φ-R: FastV's criterion with RoPE removed from the scores (not from the model)."""
    return Schedule((Stage(K, TextAttentionScorer(TextAttentionSpec(rope="removed")), 1.0 - _ratio(R)),),
                    name="fastv_norope")


@dataclass(frozen=True)
class Method:
    name: str
    factory: Callable[..., Schedule]

    @property
    def parameters(self) -> dict[str, object]:
        return {p.name: p.default for p in inspect.signature(self.factory).parameters.values()}

    @property
    def summary(self) -> str:
        return inspect.getdoc(self.factory).replace("\n", " ")

    def schedule(self, **params) -> Schedule:
        for key in params:
            check_choice(f"{self.name} parameter", key, self.parameters)
        return self.factory(**params)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("fastv", fastv),
    Method("fastv_norope", fastv_norope),
    Method("prellm_cls", prellm_cls),
    Method("random", random_prune),
)}


def get_method(name: str) -> Method:
    check_choice("method", name, METHODS)
    return METHODS[name]
