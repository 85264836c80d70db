"""Select: turn one sample's per-token scores into its kept set (returned sorted, in image order).

Selectors see the sample's scores, which tokens are still candidates, the token grid (segment, row,
column, normalised y/x) and, when they ask for them, the feature-layer patch features. A selector
either takes the stage's budget k (``needs_budget``) or fixes its own count (a stride grid, a
quartile, a region).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from ..layout import SampleGrid
from ..validation import check_choice, check_int, check_range
from .signals import Reads
from .states import SampleStates


@dataclass
class SampleSelection:
    """What a selector reads for one sample (N = the sample's visual tokens)."""

    scores: torch.Tensor  # [N] float, NaN = no score
    candidates: torch.Tensor  # [N] bool
    grid: SampleGrid
    features: torch.Tensor | None = None  # [N, C], NaN rows for tokens without a patch
    states: SampleStates | None = None  # the LLM's states where the stage prunes (``needs_states``)
    clusters: object = None  # ToMe's TowerClusters (``tower_merging.py``) for a stage merged in the vision tower


class Selector(Protocol):
    """Picks the kept subset of one sample's candidates."""

    name: str
    needs_budget: bool
    needs_features: bool
    needs_states: bool

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor: ...


def _ranked(sample: SampleSelection) -> torch.Tensor:
    """Candidate indices best-first; NaN scores after every scored candidate; ties to the earlier token."""
    scores = sample.scores.float()
    key = torch.where(torch.isnan(scores), torch.finfo(torch.float32).min, scores)
    key = torch.where(sample.candidates, key, float("-inf"))
    order = torch.argsort(key, descending=True, stable=True)
    return order[: int(sample.candidates.sum())]


@dataclass(frozen=True)
class TopK(Reads):
    """Keep the k best-scored candidates; ties go to the earlier token."""

    name: str = "topk"
    needs_budget: bool = True

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        return torch.sort(_ranked(sample)[:k]).values


@dataclass(frozen=True)
class Grid(Reads):
    """φ_uniform: the patch tokens whose row and column are multiples of ``stride`` (plus ``offset``) in
    their segment's grid. Stride 2 keeps 14×14 = 196 of a 27×27 grid; stride 3 keeps 9×9 = 81."""

    stride: int = 2
    offset: int = 0
    needs_budget: bool = False

    def __post_init__(self):
        check_int("stride", self.stride, 1)
        if not isinstance(self.offset, int) or not 0 <= self.offset < self.stride:
            raise ValueError(f"offset={self.offset!r}: must be an integer in 0..{self.stride - 1}")

    @property
    def name(self) -> str:
        return f"grid{self.stride}"

    def select(self, sample: SampleSelection, k: int | None = None) -> torch.Tensor:
        g = sample.grid
        on_grid = (g.row % self.stride == self.offset) & (g.col % self.stride == self.offset) & g.is_patch
        return (on_grid.to(sample.candidates.device) & sample.candidates).nonzero().flatten()


@dataclass(frozen=True)
class Union(Reads):
    """The union of two selectors' kept sets (FEATHER's φ-R + φ_uniform: TopK ∪ Grid(3)); the budget
    goes to whichever part takes one."""

    first: Selector
    second: Selector

    def __post_init__(self):
        if self.first.needs_budget and self.second.needs_budget:
            raise ValueError("Union: at most one part may take the stage's budget")

    @property
    def name(self) -> str:
        return f"{self.first.name}+{self.second.name}"

    @property
    def needs_budget(self) -> bool:
        return self.first.needs_budget or self.second.needs_budget

    @property
    def needs_features(self) -> bool:
        return self.first.needs_features or self.second.needs_features

    @property
    def needs_states(self) -> bool:
        return self.first.needs_states or self.second.needs_states

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        return torch.unique(torch.cat([self.first.select(sample, k), self.second.select(sample, k)]))


ROW_PARTS = ("score", "top", "bottom")


@dataclass(frozen=True)
class Rows(Reads):
    """Whole rows of each segment's grid. The budget k sets the fraction of rows, k / candidates, kept
    per segment, rounded down (FoPru selects n×r% rows and slices, which truncates: 6 of 27 rows = 162
    tokens for a budget of 182; rounding to nearest would keep 7 = 189, over budget), so a stage of
    whole rows never exceeds its budget and keeps no row when one row is more than it; by summed score
    (FoPru's row strategy, ``part="score"``), or the top / bottom rows of the image (positional
    ablations). Newline tokens go with their row."""

    part: str = "score"
    needs_budget: bool = True

    def __post_init__(self):
        check_choice("part", self.part, ROW_PARTS)

    @property
    def name(self) -> str:
        return f"rows-{self.part}"

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        g, cand = sample.grid, sample.candidates
        n_candidates = max(int(cand.sum()), 1)
        scores = torch.nan_to_num(sample.scores.float(), nan=0.0)
        keep = torch.zeros_like(cand)
        for segment in g.segment[cand].unique().tolist():
            in_segment = cand & (g.segment == segment)
            rows = g.row[in_segment].unique()  # ascending: top first
            n_keep = k * len(rows) // n_candidates
            if self.part == "score":
                totals = torch.stack([scores[in_segment & (g.row == r)].sum() for r in rows])
                chosen = rows[torch.argsort(totals, descending=True, stable=True)[:n_keep]]
            else:
                chosen = rows[:n_keep] if self.part == "top" else rows[len(rows) - n_keep:]
            keep |= in_segment & torch.isin(g.row, chosen)
        return keep.nonzero().flatten()


@dataclass(frozen=True)
class Quartile(Reads):
    """Only the q-th quarter (1 = first) of the candidates in sequence order (VisPruner Fig. 2c)."""

    q: int = 1
    needs_budget: bool = False

    def __post_init__(self):
        check_choice("q", self.q, (1, 2, 3, 4))

    @property
    def name(self) -> str:
        return f"quartile{self.q}"

    def select(self, sample: SampleSelection, k: int | None = None) -> torch.Tensor:
        order = sample.candidates.nonzero().flatten()
        n = order.numel()
        return order[(self.q - 1) * n // 4: self.q * n // 4]


# Region name -> (y range, x range) in normalised image coordinates (0 = top / left), half-open.
REGIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "top": ((0.0, 0.5), (0.0, 1.0)), "bottom": ((0.5, 1.0), (0.0, 1.0)),
    "left": ((0.0, 1.0), (0.0, 0.5)), "right": ((0.0, 1.0), (0.5, 1.0)),
    "top-left": ((0.0, 0.5), (0.0, 0.5)), "top-right": ((0.0, 0.5), (0.5, 1.0)),
    "bottom-left": ((0.5, 1.0), (0.0, 0.5)), "bottom-right": ((0.5, 1.0), (0.5, 1.0)),
    "centre": ((0.25, 0.75), (0.25, 0.75)),
}


@dataclass(frozen=True)
class Region(Reads):
    """Only the candidates whose centre lies in one region of the image (see REGIONS)."""

    region: str = "top"
    needs_budget: bool = False

    def __post_init__(self):
        check_choice("region", self.region, REGIONS)

    @property
    def name(self) -> str:
        return f"region-{self.region}"

    def select(self, sample: SampleSelection, k: int | None = None) -> torch.Tensor:
        (y0, y1), (x0, x1) = REGIONS[self.region]
        g = sample.grid
        inside = (g.y >= y0) & ((g.y < y1) | (y1 == 1.0)) & (g.x >= x0) & ((g.x < x1) | (x1 == 1.0))
        return (inside.to(sample.candidates.device) & sample.candidates).nonzero().flatten()


def remove_duplicates(normalized: torch.Tensor, n: int, per_round: int) -> torch.Tensor:
    """VisPruner's Algorithm 1: positions (into ``normalized`` [M, C], L2-normalised rows) of the n
    tokens left after removing duplicates in rounds. Each round splits the remaining tokens into
    alternating halves A (even places) and B (odd places), drops the ``per_round`` tokens of A most
    similar (max cosine) to B, and continues with the kept A tokens, most similar first, then B."""
    remaining = torch.arange(normalized.shape[0])
    if n <= 0:
        return remaining[:0]
    r = min(per_round, remaining.numel() - n)
    while r > 0:
        a, b = remaining[0::2], remaining[1::2]
        if b.numel() == 0:
            break
        similarity = (normalized[a] @ normalized[b].T).max(dim=1).values
        survivors = torch.argsort(similarity, descending=True, stable=True)[min(r, a.numel()):]
        remaining = torch.cat([a[survivors], b])
        r = min(r, remaining.numel() - n)
    return remaining


DIVERSE_ORDERS = ("attention", "image")


@dataclass(frozen=True)
class ImportantDiverse(Reads):
    """VisPruner: the int(k·important) best-scored candidates ("important", scored by [CLS] attention),
    then the rest of the budget as "diverse" tokens: duplicates are removed from the other candidates
    by cosine similarity of their L2-normalised feature-layer features (``remove_duplicates``, up to
    ``per_round`` per round). Tokens without features (newlines) are used last, in image order, only
    if the budget needs them.

    ``order`` is the order the other candidates enter duplicate removal, which sets the alternating
    halves: "attention" (default) best-scored first, as the official code does (``encode_images`` in
    ``llava/model/llava_arch.py`` of Theia-4869/VisPruner runs it over the residual indices of the
    descending attention sort); "image" in raster order (the paper's Algorithm 1 does not say)."""

    important: float = 0.5
    per_round: int = 8
    order: str = "attention"
    name: str = "important+diverse"
    needs_budget: bool = True
    needs_features = True

    def __post_init__(self):
        check_range("important", self.important, 0.0, 1.0)
        check_int("per_round", self.per_round, 1)
        check_choice("order", self.order, DIVERSE_ORDERS)

    def _pool(self, sample: SampleSelection, usable: torch.Tensor) -> torch.Tensor:
        """The ``usable`` tokens in the order duplicate removal reads them (see ``order``)."""
        if self.order == "image":
            return usable.nonzero().flatten()
        return _ranked(replace(sample, candidates=usable))

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        n_important = int(k * self.important)
        important = _ranked(sample)[:n_important]
        rest = sample.candidates.clone()
        rest[important] = False
        features = sample.features.float()
        with_features = rest & ~torch.isnan(features).any(dim=1)
        pool = self._pool(sample, with_features)
        normalized = torch.nn.functional.normalize(features[pool], dim=1)
        diverse = pool[remove_duplicates(normalized, k - n_important, self.per_round)]
        shortfall = k - n_important - diverse.numel()
        fill = (rest & ~with_features).nonzero().flatten()[:max(shortfall, 0)]
        return torch.sort(torch.cat([important, diverse, fill])).values


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [len(a), len(b)] of the rows of ``a`` and ``b`` (in double precision)."""
    a, b = torch.nn.functional.normalize(a.double(), dim=1), torch.nn.functional.normalize(b.double(), dim=1)
    return a @ b.T


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy max–min diversity: positions (into ``features`` [M, C], in pick order) of k rows.

    Distance = 1 - cosine similarity. The first pick is the row farthest from its nearest other row;
    each next pick is the row whose distance to its nearest picked row is largest. Picked rows are never
    picked again; ties go to the earlier row.
    """
    m = features.shape[0]
    k = min(k, m)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    distance = 1.0 - _cosine(features, features)
    to_others = distance.clone().fill_diagonal_(float("inf"))
    first = int(torch.argmax(to_others.min(dim=0).values)) if m > 1 else 0
    picks, gap = [first], distance[first].clone()
    gap[first] = float("-inf")
    for _ in range(k - 1):
        j = int(torch.argmax(gap))
        picks.append(j)
        gap = torch.minimum(gap, distance[j])
        gap[j] = float("-inf")
    return torch.tensor(picks, dtype=torch.long)


@dataclass(frozen=True)
class MaxMinDiversity(Reads):
    """DivPrune: the k candidates picked by greedy max–min cosine diversity (``max_min_diverse``) of the
    LLM's hidden states where the stage prunes; per sample, over the visual tokens only.

    Readings, from the official code (``DivPrune`` in ``LLaVA/llava/model/llava_arch.py`` of vbdi/divprune):
    the features are the LLM's input embeddings at the visual tokens (the projector's outputs; at layer 0
    that is what ``states.visual`` holds), every visual token a candidate (its LLaVA-1.6 path takes the
    whole packed image sequence, newline tokens included); the first pick uses the second-smallest entry
    of each distance column, i.e. the distance to the nearest other token; ``torch.argmax`` there and
    here gives ties to the earlier token; a picked token is excluded (the code relies on its zero
    distance to itself). The code keeps round(ratio·n) tokens, the stage's budget floors.
    """

    name: str = "max-min-diversity"
    needs_budget: bool = True
    needs_states = True

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        pool = sample.candidates.nonzero().flatten()
        return torch.sort(pool[max_min_diverse(sample.states.visual[pool], k)]).values


def _top_l1(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` rows of ``keys`` with the largest L1 norm, ascending (ties: earlier row)."""
    order = torch.argsort(keys.abs().sum(dim=1), descending=True, stable=True)[:count]
    return torch.sort(order).values


def pivot_duplicates(pivots: torch.Tensor, features: torch.Tensor, k: int) -> torch.Tensor:
    """DART's duplicate removal: positions (into ``features`` [M, C]) of k rows, taken pivot by pivot
    (``pivots`` [P, C] in order): each pivot takes, among the rows not taken yet, the ones least
    cosine-similar to it; the k rows are shared out evenly, the first k mod P pivots taking one more.
    Ties go to the earlier row."""
    taken = torch.zeros(features.shape[0], dtype=torch.bool)
    similarity = _cosine(pivots, features)
    for i in range(pivots.shape[0]):
        quota = k // pivots.shape[0] + (1 if i < k % pivots.shape[0] else 0)
        key = similarity[i].masked_fill(taken, float("inf"))
        taken[torch.argsort(key, stable=True)[:quota]] = True
    return taken.nonzero().flatten()


@dataclass(frozen=True)
class PivotDuplicates(Reads):
    """DART: after layer K, keep k candidates by duplication with pivot tokens; per sample.

    Readings, from the official code (``DART.get_retained_image_token`` in
    ``llava/model/language_model/modeling_llama_self.py`` of ZichenWen1/DART; its Qwen2.5-VL port is the
    same): pivots are the ``image_pivots`` candidates and the ``text_pivots`` tokens after the image (the
    instruction and the assistant prompt) whose keys at layer K-1 (RoPE applied, all heads; the code's
    GQA head copies change no ranking) have the largest L1 norm; fewer text pivots when the text is
    shorter. Similarity is cosine on the hidden states entering layer K through the language model's
    final norm (``self.norm(layer_outputs[0])``). Only still-present visual tokens are candidates; image
    pivots are kept. Two departures, to keep exactly k: the code gives every pivot floor(budget / pivots)
    tokens and keeps the image pivots on top (132 for a budget of 128); here the image pivots count in k
    and the other k - image pivots are shared out, the first (k - image pivots) mod pivots taking one
    more. The code visits the pivots in Python set order (hash order of their positions); here in
    sequence order (image pivots, then text). Ties go to the earlier token (the code's topk leaves them
    unspecified).
    """

    image_pivots: int = 4
    text_pivots: int = 4
    name: str = "pivot-duplicates"
    needs_budget: bool = True
    needs_states = True

    def __post_init__(self):
        check_int("image_pivots", self.image_pivots, 0)
        check_int("text_pivots", self.text_pivots, 0)
        if self.image_pivots + self.text_pivots == 0:
            raise ValueError("image_pivots=0, text_pivots=0: at least one pivot is needed")

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        states, pool = sample.states, sample.candidates.nonzero().flatten()
        image = _top_l1(states.visual_keys[pool], min(self.image_pivots, k))
        text = _top_l1(states.text_keys, min(self.text_pivots, states.text_keys.shape[0]))
        pivots = torch.cat([states.visual_normed[pool][image], states.text_normed[text]])
        rest = torch.ones(pool.numel(), dtype=torch.bool)
        rest[image] = False
        others, k_rest = pool[rest], k - image.numel()
        if k_rest > 0 and pivots.shape[0] == 0:
            raise ValueError("text_pivots: this prompt has no text after the image and image_pivots=0; "
                             "give image_pivots >= 1")
        chosen = others[pivot_duplicates(pivots, states.visual_normed[others], k_rest)] if k_rest > 0 else others[:0]
        return torch.sort(torch.cat([pool[image], chosen])).values
