"""Named methods: a registry from names to schedule factories with the papers' defaults.

Every parameter of a factory is a method parameter (``python -m analysis_lib methods`` lists them),
plus ``scope`` ("global" | "crop", see ``Stage``) for every method. ``R`` is always the fraction of
visual tokens removed, as FastV and FEATHER define it. Layers ``K`` are absolute for the papers'
32-layer models, or fractions of depth (``K=0.25`` is layer 8 of 32 and layer 2 of 8), which is how
the same method runs on a shallow model.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..attention import TextAttentionSpec
from ..validation import check_choice, check_range
from .schedule import SCOPES, Schedule, Stage
from .merging import ContextualMerge, DominantContextual, NeighbourMerge, Outliers, TopAndSpread
from .scorers import (DensityPeakScorer, FoPruSignificance, RandomScorer, TextAttentionScorer,
                      VisionAttentionScorer)
from .sparsevlm import OFFICIAL_COUNTS, REFERENCE_TOKENS, RaterAttention, Recycling, stage_counts
from .tower_merging import Representatives, ToMe
from .selectors import (DIVERSE_ORDERS, Grid, ImportantDiverse, MaxMinDiversity, PivotDuplicates, Quartile, Region,
                        Rows, TopK, Union)

# FastV's φ_original: the last token's attention as the model computes it (RoPE applied, full softmax).
ORIGINAL = TextAttentionScorer(TextAttentionSpec())
# FEATHER's φ-R: the last token's query against the image keys without RoPE, softmax over the image keys.
NO_ROPE = TextAttentionScorer(TextAttentionSpec(rope="removed", softmax="visual"))


def _ratio(R: float, name: str = "R") -> float:
    """The kept fraction 1 - R of a reduction ratio R in [0, 1)."""
    return 1.0 - check_range(name, R, 0.0, 1.0, high_open=True)


def fastv(K: int | float = 2, R: float = 0.5) -> Schedule:
    """FastV (φ_original): after layer K drop the fraction R of visual tokens with the least attention from
    the last token (RoPE as applied, softmax over the whole row), averaged over heads. Original positions."""
    return Schedule((Stage(K, ORIGINAL, _ratio(R)),), name="fastv")


def fastv_norope(K: int | float = 3, R: float = 0.75) -> Schedule:
    """FEATHER's φ-R: FastV's criterion with RoPE removed from the scores (not from the model) and the
    softmax taken over the image keys only. Defaults: FEATHER Table 1 (K=3, R=0.75)."""
    return Schedule((Stage(K, NO_ROPE, _ratio(R)),), name="fastv_norope")


def uniform(K: int | float = 3, stride: int = 2) -> Schedule:
    """FEATHER's φ_uniform: after layer K keep the stride grid of every segment (stride 2 keeps 196 of
    729 on 27×27), whatever the attention."""
    return Schedule((Stage(K, selector=Grid(stride)),), name="uniform")


def knn(K: int | float = 3, R: float = 0.731, k: int = 5, delta: str = "squared") -> Schedule:
    """FEATHER's φ_KNN: after layer K keep the tokens with the highest DPC-KNN density × distance on the
    vision features (k nearest neighbours); the distance to the nearest denser token squared, as FEATHER's
    eq. 2 writes it (``delta="squared"``), or plain, as TCFormer's DPC-KNN (``"plain"``). R=0.731 keeps
    196 of 729, matching φ_uniform's stride 2 as the paper does."""
    return Schedule((Stage(K, DensityPeakScorer(k, delta), _ratio(R)),), name="knn")


def fastv_norope_uniform(K: int | float = 3, R: float = 0.75, stride: int = 3) -> Schedule:
    """FEATHER's ensemble φ-R + φ_uniform: φ-R's top 1-R of the tokens, plus the stride grid (stride 3)
    added on top (their union: ≈243 of 729 at R=0.75, ≈275 at R=0.7)."""
    return Schedule((Stage(K, NO_ROPE, _ratio(R), selector=Union(TopK(), Grid(stride))),),
                    name="fastv_norope_uniform")


def _feather(name: str, K1: int | float, K2: int | float, R: float, stride: int) -> Schedule:
    keep = _ratio(R)
    return Schedule((Stage(K1, NO_ROPE, keep, selector=Union(TopK(), Grid(stride))),
                     Stage(K2, NO_ROPE, keep**2, keep_of="input")), name=name)


def feather(K1: int | float = 8, K2: int | float = 16, R: float = 0.7, stride: int = 3) -> Schedule:
    """FEATHER as released (its published evaluation script): after layer K1 keep φ-R's top 1-R ∪ the stride-3 grid (≈275
    of 729 at R=0.7); after layer K2 keep (1-R)² = 9% of those survivors by φ-R, grid tokens not
    protected (≈24 of 729 = 3.3%, the paper's figure; FLOPs reduction 64% by eq. 1)."""
    return _feather("feather", K1, K2, R, stride)


def feather_paper(K1: int | float = 8, K2: int | float = 16, R: float = 0.75, stride: int = 3) -> Schedule:
    """FEATHER as the paper's text words it (§4.2): the same two stages with R = 0.75, so the second
    keeps (1-R)² = 6.25% of the survivors (≈15 of 729)."""
    return _feather("feather_paper", K1, K2, R, stride)


def pyramiddrop(K1: int | float = 8, K2: int | float = 16, K3: int | float = 24, lam: float = 0.5) -> Schedule:
    """PyramidDrop: after layers K1, K2, K3 keep the fraction λ of the tokens entering each stage (0.5,
    0.25, 0.125 of all at λ=0.5), ranked by the last instruction token's attention (RoPE applied);
    positions re-indexed."""
    keep = check_range("lam", lam, 0.0, 1.0, low_open=True)
    return Schedule(tuple(Stage(k, ORIGINAL, keep) for k in (K1, K2, K3)), name="pyramiddrop",
                    positions="reindex")


FOPRU_STRATEGIES = ("rank", "row")


def _fopru_stage(R: float, strategy: str, reorder: bool, rule: str) -> Stage:
    check_choice("strategy", strategy, FOPRU_STRATEGIES)
    if not isinstance(reorder, bool):
        raise ValueError(f"reorder={reorder!r}: must be True or False")
    selector = TopK() if strategy == "rank" else Rows("score")
    return Stage(0, FoPruSignificance(rule), _ratio(R), selector=selector, order="image" if reorder else "score")


def fopru(R: float = 0.75, strategy: str = "rank", reorder: bool = True, rule: str = "variance") -> Schedule:
    """FoPru: before the LLM keep 1-R of the visual tokens by significance from the vision encoder's
    penultimate-layer attention (eqs. 2-4, ``rule`` "variance"; "low-variance" is its "w/o Variance"
    ablation); ``strategy`` "rank" (global top tokens) or "row" (whole rows by summed significance);
    ``reorder=False`` feeds tokens in significance order ("w/o Reordering"). Positions re-indexed, as
    tokens are concatenated before the LLM. The projector acts per token, so removing its outputs equals
    removing its inputs (only the projector's own cost, outside eq. 1, is not saved)."""
    return Schedule((_fopru_stage(R, strategy, reorder, rule),), name="fopru", positions="reindex")


def fopru_fastv(R: float = 0.5, K: int | float = 2, R_llm: float = 0.5, strategy: str = "rank") -> Schedule:
    """FoPru+FastV (FoPru Table 2): FoPru keeps 1-R before the LLM, then FastV drops R_llm of those after
    layer K (25% retained with the defaults). Positions re-indexed for both stages."""
    return Schedule((_fopru_stage(R, strategy, True, "variance"), Stage(K, ORIGINAL, _ratio(R_llm, "R_llm"))),
                    name="fopru_fastv", positions="reindex")


def vispruner(keep: int | float = 64, r: float = 0.5, per_round: int = 8,
              diverse_order: str = "attention") -> Schedule:
    """VisPruner: before the LLM keep ``keep`` tokens (a count, or a fraction of the visual tokens):
    int(keep·r) important ones by [CLS] attention at the feature layer (mean received attention for
    towers without [CLS]), the rest diverse ones by similarity-based duplicate removal (``per_round`` per
    round) over the remaining tokens in descending attention order, as the official code runs it
    (``diverse_order="attention"``), or in image order (``"image"``). Positions re-indexed."""
    check_range("r", r, 0.0, 1.0)
    check_choice("diverse_order", diverse_order, DIVERSE_ORDERS)
    return Schedule((Stage(0, VisionAttentionScorer("auto"), keep,
                           selector=ImportantDiverse(r, per_round, diverse_order)),),
                    name="vispruner", positions="reindex")


def divprune(R: float = 0.902) -> Schedule:
    """DivPrune: before the LLM keep 1-R of the visual tokens by greedy max–min diversity (cosine distance)
    of the projector's outputs, as the official code (vbdi/divprune) reads the input embeddings; every
    visual token is a candidate (LLaVA-NeXT's newlines too). R=0.902 keeps 9.8%, the official
    SUBSET_RATIO (56 of 576; the code rounds, here floor). Positions re-indexed, as the code concatenates."""
    return Schedule((Stage(0, keep=_ratio(R), selector=MaxMinDiversity()),), name="divprune", positions="reindex")


def dart(K: int | float = 2, R: float = 0.777, image_pivots: int = 4, text_pivots: int = 4) -> Schedule:
    """DART: after layer K keep 1-R of the visual tokens: the image_pivots visual and text_pivots
    instruction tokens with the largest L1 key norm at layer K-1 are pivots; the visual pivots are kept and
    the rest of the budget goes, shared out over the pivots, to the tokens least cosine-similar to them
    (hidden states through the final norm). Defaults of the official code: K=2, 4+4 pivots, 128 of 576
    tokens (R=0.777 keeps 128; its reduction_ratio 0.778 would floor to 127), the visual pivots counted in
    the budget (the code keeps them on top: 132). Original positions, as the code keeps them."""
    if K == 0:
        raise ValueError("K=0: dart reads layer K-1's keys; allowed: K >= 1 or a fraction of depth in (0, 1)")
    return Schedule((Stage(K, keep=_ratio(R), selector=PivotDuplicates(image_pivots, text_pivots)),), name="dart")


def _sparsevlm_keeps(keep: int | float) -> list[int | float]:
    """Each stage's keep for a SparseVLM budget: token counts for a count, fractions of all visual tokens for
    a fraction (the 576-token counts scaled to the model's tokens)."""
    if isinstance(keep, int):
        if keep < 1:
            raise ValueError(f"keep={keep!r}: a budget must be a token count >= 1 or a fraction in (0, 1)")
        return [max(1, math.floor(c + 0.5)) for c in stage_counts(keep)]
    check_range("keep", keep, 0.0, 1.0, low_open=True, high_open=True)
    fractions = [c / REFERENCE_TOKENS for c in stage_counts(keep * REFERENCE_TOKENS)]
    if fractions[0] > 1.0:
        top = max(OFFICIAL_COUNTS)  # larger budgets scale its list, whose first count is the largest share
        largest = top / OFFICIAL_COUNTS[top][0]
        raise ValueError(f"keep={keep!r}: its first stage would keep {fractions[0]:.0%} of the visual tokens; "
                         f"allowed fractions: (0, {largest:.2f}]")
    return fractions


def _check_increasing(layers: tuple[int | float, ...]) -> None:
    """Layers given in one unit (all counts or all fractions) must increase; mixed units are checked once
    resolved against the model (``Schedule.resolve``)."""
    same_unit = len({isinstance(k, float) for k in layers}) == 1
    if same_unit and any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"K1, K2, K3 = {layers}: the pruning layers must be strictly increasing")


def sparsevlm(keep: int | float = 64, K1: int | float = 3, K2: int | float = 7, K3: int | float = 16,
              recycle: float = 0.3, cluster_size: int = 10) -> Schedule:
    """SparseVLM (v1.0, ICML 2025): after layers K1, K2, K3 keep the visual tokens the text raters (text
    tokens whose embedding relevance to the image is above the mean) attend to most at the layer before,
    then recycle the best int(recycle·d) + 1 of the d deleted into int(m / cluster_size) + 1 DPC-KNN
    clusters of the hidden states, each kept as its centre token carrying the cluster mean (``sparsevlm.py``).
    ``keep``: the budget as the paper and VisPruner's Table 1 count it, the mean visual tokens over the
    layers; 192 / 128 / 96 / 64 keep the official per-stage counts (64: 66, 30, 17 of 576, plus the
    recycled centres), other counts scale the nearest list; a fraction scales them to the model's visual
    tokens (64/576 of them for 64). Layers: the official code prunes the output of layers 2, 6 and 15 of 32
    with their own attention, which here is K = 3, 7, 16 (layers 0..K-1 see every token; fractions of
    depth on other models, 3/32, 7/32, 16/32). Positions re-indexed, as the official v1.0 code (``position_ids[:, :len(kept)]``). The official
    code runs one sample at a time on LLaVA-1.5; here every sample of a batch gets its own raters, counts and
    clusters, and LLaVA-NeXT's newline tokens count as visual tokens. Not offered:
    the first release's rank rule (keep min(int(rank(P)·scale + bias), n - 1), P the raters' attention
    rows; ``attn_postprocess_rank``, commit 91fb6d9), which the released code replaced by these counts."""
    layers = (K1, K2, K3)
    _check_increasing(layers)
    part = Recycling(recycle, cluster_size)
    stages = tuple(Stage(k, RaterAttention(), keep=n, keep_of="original", selector=part, merging=part)
                   for k, n in zip(layers, _sparsevlm_keeps(keep)))
    return Schedule(stages, name="sparsevlm", positions="reindex")


#: where a pre-LLM merge acts: the projector's input (as VisionZip's and PruMerge's code) or its output
MERGE_ON = {"input": "projector_input", "output": "states"}


def _merge_on(merge_on: str) -> str:
    return MERGE_ON[check_choice("merge_on", merge_on, MERGE_ON)]


def visionzip(keep: int | float = 64, dominant: float = 54 / 64, merge_on: str = "input") -> Schedule:
    """VisionZip: before the LLM keep ``keep`` tokens (a count, or a fraction of the visual tokens):
    int(keep·dominant) dominant ones by [CLS] attention at the feature layer (the official code reads
    ``attentions[-2]``; mean received attention without [CLS]), the rest contextual targets spread evenly
    over the remaining tokens, each removed token merged into its most similar target by the head-mean
    keys of the feature layer, on the projector's input (official ``clip_encoder.py``; ``merge_on="output"``
    merges the projector's outputs instead, which is how it runs on Qwen's 2×2 merger). Default split
    54+10 of 64 (the official README); other budgets keep the ratio (108+20 of 128, 162+30 of 192).
    Readings: the official code counts [CLS] as one of the dominant tokens and feeds it to the LLM (53
    patches + [CLS]); LLaVA here has no [CLS] slot, so all dominant tokens are patches. It feeds dominant
    then contextual tokens; here kept tokens keep image order. Positions re-indexed."""
    selector = DominantContextual(check_range("dominant", dominant, 0.0, 1.0))
    return Schedule((Stage(0, VisionAttentionScorer("auto"), keep, selector=selector,
                           merging=ContextualMerge(dominant, acts_on=_merge_on(merge_on))),),
                    name="visionzip", positions="reindex")


PRUMERGE_ATTENTION = ("joint", "heads")


def _prumerge(name: str, keep: int | float, neighbours: int, attention: str, merge_on: str, adaptive: Outliers,
              fixed) -> Schedule:
    check_choice("attention", attention, PRUMERGE_ATTENTION)
    scorer = VisionAttentionScorer("auto", layer="last", joint=attention == "joint")
    budget = {"selector": adaptive} if keep == 0 else {"keep": keep, "selector": fixed}
    merging = NeighbourMerge(neighbours, acts_on=_merge_on(merge_on))
    return Schedule((Stage(0, scorer, merging=merging, **budget),), name=name, positions="reindex")


def prumerge(keep: int | float = 0, neighbours: int = 32, attention: str = "joint", merge_on: str = "input"
             ) -> Schedule:
    """PruMerge: before the LLM keep the tokens whose [CLS] attention at the tower's last layer is an IQR
    outlier (> Q3 + 1.5·IQR; adaptive, 5.5% = 32 of 576 on average in the paper), then each kept token
    absorbs its ``neighbours`` nearest tokens by key cosine, weighted by their [CLS] attention, on the
    projector's input (official ``clip_encoder.py``, ``token_prune_merge_advanced``; ``merge_on="output"``:
    on its outputs). ``keep=0`` is the
    adaptive count; a count or fraction > 0 keeps that many by [CLS] attention instead (the official
    non-adaptive branch). FLOPs: runs record the real counts; the CLI assumes the 5.5% mean. [CLS]
    attention as the official code computes it: one softmax over all heads' q·k together
    (``attention="joint"``), or the head mean of per-head softmaxes (``"heads"``); mean received attention
    on towers without [CLS]. Readings: the extra
    token the official code appends (the attention-weighted sum of the pruned tokens) has no grid place
    here and is left out; kept tokens keep image order (the official code feeds them by attention).
    Positions re-indexed."""
    return _prumerge("prumerge", keep, neighbours, attention, merge_on, Outliers(spatial=False), TopK())


def prumerge_plus(keep: int | float = 0, neighbours: int = 32, attention: str = "joint", merge_on: str = "input"
                  ) -> Schedule:
    """PruMerge+: PruMerge's outliers plus spatially uniform tokens, every max(1, int(int(1/ratio)/3))-th
    token in image order (ratio = outlier share; 25% of tokens on average in the paper), then PruMerge's
    merge (official ``token_prune_merge_advanced_plus``). ``keep`` > 0 fixes the budget: half by [CLS]
    attention, half spread evenly over the others (the official non-adaptive branch's halves). Readings
    as ``prumerge``. Positions re-indexed."""
    return _prumerge("prumerge_plus", keep, neighbours, attention, merge_on, Outliers(spatial=True),
                     TopAndSpread())


def tome(keep: int | float = 64, proportional: bool = True) -> Schedule:
    """ToMe (Bolya et al.) inside the CLIP vision tower, as VisPruner's Table 1 baseline (128/64/32 of 576):
    every tower layer up to the feature layer merges r tokens between its attention and its MLP by
    bipartite soft matching of the head-mean keys (class token protected, size-weighted means,
    ``proportional`` attention adding log(size) to the key logits), r as even as possible over those layers
    so that exactly ``keep`` patches per crop reach the projector (a count, or a fraction of the patches per
    crop; LLaVA-NeXT: every crop keeps as many, newline tokens kept). The LLM gets one token per cluster,
    the representative (its surviving patch) carrying the merged state. LLaVA and LLaVA-NeXT only.
    Positions re-indexed. See ``tower_merging.py`` for the readings."""
    if not isinstance(proportional, bool):
        raise ValueError(f"proportional={proportional!r}: must be True or False")
    return Schedule((Stage(0, selector=Representatives(), merging=ToMe(keep, proportional)),), name="tome",
                    positions="reindex")


def random_prune(K: int | float = 0, R: float = 0.5, seed: int = 0) -> Schedule:
    """Drop the fraction R of visual tokens at random (seeded) after layer K (0 = before the LLM)."""
    return Schedule((Stage(K, RandomScorer(seed), _ratio(R)),), name="random")


BEFORE_LLM_CRITERIA = {"fastv": ORIGINAL, "fastv_norope": NO_ROPE}


def before_llm(criterion: str = "fastv", K: int | float = 3, R: float = 0.75) -> Schedule:
    """Ablation (FEATHER Fig. 4): the kept set an in-LLM criterion chooses after layer K, removed before
    the LLM instead, so no information flows from the pruned tokens. Positions kept."""
    check_choice("criterion", criterion, BEFORE_LLM_CRITERIA)
    return Schedule((Stage(0, BEFORE_LLM_CRITERIA[criterion], _ratio(R), score_layer=K),),
                    name="before_llm")


def text_only() -> Schedule:
    """Ablation (FEATHER Fig. 4): every visual token removed before the LLM; positions re-indexed as if the
    image were absent."""
    return Schedule((Stage(0, keep=0),), name="text_only", positions="reindex")


def quartile(q: int = 1, K: int | float = 2) -> Schedule:
    """Ablation (VisPruner Fig. 2c): after layer K keep only the q-th quarter (1..4) of the visual-token
    sequence."""
    return Schedule((Stage(K, selector=Quartile(q)),), name="quartile")


def region(region: str = "top", K: int | float = 0) -> Schedule:
    """Ablation: after layer K keep only the visual tokens of one region of the image (top, bottom, left,
    right, a quadrant such as top-left, or centre)."""
    return Schedule((Stage(K, selector=Region(region)),), name="region")


def rows(part: str = "bottom", R: float = 0.5, K: int | float = 0) -> Schedule:
    """Ablation: after layer K keep only the top or bottom 1-R of the rows of each grid."""
    check_choice("part", part, ("top", "bottom"))
    return Schedule((Stage(K, keep=_ratio(R), selector=Rows(part)),), name="rows")


COMMON_PARAMETERS: dict[str, object] = {"scope": "global"}


def check_parameter_type(name: str, value: object, default: object) -> None:
    """A value must have its default's kind: a bool for a bool, a finite number for a number (an int
    default also takes a float, a fraction of depth), a string for a string."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: must be True or False")
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r}: must be a finite number (default {default!r})")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{name}={value!r}: must be a string (default {default!r})")


@dataclass(frozen=True)
class Method:
    name: str
    factory: Callable[..., Schedule]

    @property
    def parameters(self) -> dict[str, object]:
        """The factory's parameters with their defaults, then the common ones (``scope``)."""
        own = {p.name: p.default for p in inspect.signature(self.factory).parameters.values()}
        return {**own, **COMMON_PARAMETERS}

    @property
    def summary(self) -> str:
        return inspect.getdoc(self.factory).replace("\n", " ")

    def schedule(self, **params) -> Schedule:
        defaults = self.parameters
        for key, value in params.items():
            check_choice(f"{self.name} parameter", key, defaults)
            check_parameter_type(f"{self.name} parameter {key}", value, defaults[key])
        scope = check_choice("scope", params.pop("scope", "global"), SCOPES)
        schedule = self.factory(**params)
        return replace(schedule, stages=tuple(replace(s, scope=scope) for s in schedule.stages))


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("fastv", fastv),
    Method("fastv_norope", fastv_norope),
    Method("uniform", uniform),
    Method("knn", knn),
    Method("fastv_norope_uniform", fastv_norope_uniform),
    Method("feather", feather),
    Method("feather_paper", feather_paper),
    Method("pyramiddrop", pyramiddrop),
    Method("fopru", fopru),
    Method("fopru_fastv", fopru_fastv),
    Method("vispruner", vispruner),
    Method("divprune", divprune),
    Method("dart", dart),
    Method("sparsevlm", sparsevlm),
    Method("visionzip", visionzip),
    Method("prumerge", prumerge),
    Method("prumerge_plus", prumerge_plus),
    Method("tome", tome),
    Method("random", random_prune),
    Method("before_llm", before_llm),
    Method("text_only", text_only),
    Method("quartile", quartile),
    Method("region", region),
    Method("rows", rows),
)}


def get_method(name: str) -> Method:
    check_choice("method", name, METHODS)
    return METHODS[name]
