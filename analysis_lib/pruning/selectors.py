"""Select: turn per-token scores into the kept set (always returned in image order)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class Selector(Protocol):
    """Picks k of the candidate visual tokens of one sample from their scores."""

    name: str

    def select(self, scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class TopK:
    """Keep the k best-scored candidates; ties go to the earlier token."""

    name: str = "topk"

    def select(self, scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
        """``scores``/``candidates``: [N] for one sample; returns the sorted kept indices [k]."""
        ranked = torch.where(candidates, scores.float().nan_to_num(nan=float("-inf")), float("-inf"))
        ranked = torch.where(candidates & torch.isneginf(ranked), torch.finfo(torch.float32).min, ranked)
        order = torch.argsort(ranked, descending=True, stable=True)
        return torch.sort(order[:k]).values

