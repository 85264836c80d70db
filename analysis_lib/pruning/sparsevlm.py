"""SparseVLM (Zhang et al., ICML 2025, arXiv 2410.04417): text raters score the visual tokens inside the LLM,
the lowest-scored are deleted, and the best of the deleted are recycled into a few cluster tokens.

The parts: ``select_raters`` (§3.2) and ``rater_scores``, which ``RaterAttention`` (the stage's scorer)
computes from the language model's input embeddings and the decoder's queries and keys; ``recycle`` (§3.4,
DPC-KNN clusters and their merge triples), which ``Recycling`` (the stage's selector and merger) applies to
what its top-k deletes. Readings from the official code (Gumpest/SparseVLMs, LLaVA path, default
``USE_VERSION=1_0``: ``LlamaDynamicvitModel.forward`` in ``llava/model/language_model/modelling_sparse_llama.py``,
``attn_postprocess_topk`` in ``score.py``, ``cluster_and_merge`` in ``utils.py``) are in the docstrings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import TextAttentionSpec
from ..validation import check_int, check_range
from .merging import MergeInputs, MergeMap
from .scorers import ScoreInputs, density_peaks
from .selectors import SampleSelection
from .signals import Reads

#: visual tokens of LLaVA-1.5 (24 × 24), the model the official counts are set for
REFERENCE_TOKENS = 576
#: tokens kept at the three stages for each budget (official ``score.py``, ``sparse_token_list_*`` of
#: USE_VERSION 1_0). A budget is the mean visual-token count over the 32 layers ("Equal Tokens" in the
#: official log; its comment "2*576 4*300 10*200 16*110" for 192), not the count after the last stage.
OFFICIAL_COUNTS = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}


def stage_counts(budget: float) -> tuple[float, ...]:
    """Tokens kept at each stage for a budget on the 576-token reference: the official list for 192 / 128 /
    96 / 64; another budget scales the list of the nearest official budget (ties to the larger) by
    budget / that budget (our rule: the official lists are not proportional to their budgets, so no rule
    reproduces them all)."""
    nearest = min(OFFICIAL_COUNTS, key=lambda b: (abs(b - budget), -b))
    return tuple(c * budget / nearest for c in OFFICIAL_COUNTS[nearest])


def select_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Text raters [T] bool from the language model's input embeddings (visual [N, D], text [T, D]).

    R = softmax over the text of V·Tᵀ, averaged over the visual tokens; raters are the text tokens with R
    above its mean (official forward: ``m_v_t = v_t @ t_t.T``, ``softmax(2).mean(1)``, ``> mean``), chosen
    once per prompt on the embeddings before layer 0 and used at every stage. "Text" is every token after
    the image (the question and the assistant prompt), as the official code slices the states from its text start.
    When no token is above the mean (one text token, or all equal) every text token rates: the official
    code would then score with an empty set (NaN); this reading is ours.
    """
    relevance = torch.softmax(visual.double() @ text.double().T, dim=1).mean(dim=0)
    raters = relevance > relevance.mean()
    return raters if raters.any() else torch.ones_like(raters)


def rater_scores(attention: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
    """Visual-token scores [N]: the raters' rows of the head-mean attention [T, N] of layer K-1, averaged
    (official ``attn_postprocess_topk``: ``mean(1)`` over heads, rater rows, visual columns, ``mean(1)``)."""
    return attention[raters].double().mean(dim=0)


@dataclass
class Recycled:
    """The recycled tokens of one stage: the cluster centres kept on top of the budget, and the merge of
    each cluster into its centre (the centre becomes the cluster mean)."""

    centres: torch.Tensor  # [c] original indices
    merge: MergeMap


def recycle(deleted: torch.Tensor, scores: torch.Tensor, states: torch.Tensor, ratio: float,
            cluster_size: int) -> Recycled:
    """Recycle the ``deleted`` tokens (original indices) of a stage.

    Official ``s_flag`` branch and ``cluster_and_merge``: the top int(d·ratio) + 1 of the d deleted tokens
    by score (at most d) are pooled; c = int(m / cluster_size) + 1 clusters of the m pooled tokens by DPC-KNN
    on their hidden states entering layer K (the official ``layer_outputs[0]`` of layer K-1), with k = c
    nearest neighbours for the density; centres = the c best density × distance scores; every pooled token
    joins its nearest centre; a cluster becomes the mean of its tokens. Differences, by this project's
    rule that every token reaching the LLM is an original visual token with a grid position: the centre
    (an original token) is kept and absorbs its cluster through a merge (weight 1/size on each member,
    1/size - 1 on itself), instead of a new token inserted after the kept ones; and density ties go to
    the earlier token, where the official code adds 1e-6 uniform noise. ``density_peaks(delta="plain")``
    gives the densest token its row's largest distance, the official code the matrix's: both make it the
    top-scored centre, so the centres are the same.
    """
    pool = recycled_pool(deleted, scores, ratio)
    if pool.numel() == 0:
        return Recycled(pool, cluster_merge(pool, pool, states))  # nothing recycled: an empty merge
    c = int(pool.numel() / cluster_size) + 1
    ranked = torch.argsort(density_peaks(states[pool].double(), c, "plain").double(), descending=True, stable=True)
    centres = pool[torch.sort(ranked[:c]).values]  # distance ties go to the earlier centre
    return Recycled(centres, cluster_merge(pool, centres, states))


def recycled_pool(deleted: torch.Tensor, scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """The top int(d·ratio) + 1 (at most d) of the d ``deleted`` tokens by score, in image order (density
    ties then go to the earlier token); none when ``ratio`` is 0."""
    if deleted.numel() == 0 or ratio == 0:
        return deleted[:0]
    m = min(int(deleted.numel() * ratio + 1e-9) + 1, deleted.numel())
    order = torch.argsort(scores[deleted].double(), descending=True, stable=True)
    return torch.sort(deleted[order[:m]]).values


def cluster_merge(pool: torch.Tensor, centres: torch.Tensor, states: torch.Tensor) -> MergeMap:
    """Every ``pool`` token joins its nearest centre (hidden-state distance; ``centres`` ⊆ ``pool``, sorted);
    the merge makes each centre the mean of its cluster (1/size on each member, 1/size - 1 on itself)."""
    if centres.numel() == 0:
        return MergeMap(pool[:0], pool[:0], torch.zeros(0))
    rows = states[pool].double()
    centre_rows = torch.searchsorted(pool, centres)
    nearest = torch.cdist(rows, rows[centre_rows]).argmin(dim=1)
    nearest[centre_rows] = torch.arange(centres.numel())
    targets, sources, weights = [], [], []
    for j, centre in enumerate(centres.tolist()):
        members = pool[nearest == j]
        if members.numel() > 1:
            size = members.numel()
            targets += [centre] * size
            sources += members.tolist()
            weights += [1.0 / size - (1.0 if t == centre else 0.0) for t in members.tolist()]
    return MergeMap(torch.tensor(targets, dtype=torch.long), torch.tensor(sources, dtype=torch.long),
                    torch.tensor(weights, dtype=torch.float32))


#: every text token after the image, each row on its own (their mean is never taken as one query)
TEXT_ROWS = TextAttentionSpec(query="instruction")


@dataclass(frozen=True)
class RaterAttention(Reads):
    """SparseVLM's visual-token scores: ``rater_scores`` of the head-mean attention of decoder layer K-1 (RoPE
    as applied, softmax over the whole causal row, as the official eager attention it reads), raters from
    ``select_raters`` on the input embeddings of all the sample's visual tokens and its text after the image
    (the official code chooses them once, before layer 0, so every stage has the same raters). NaN for
    tokens no longer present."""

    name: str = "text_raters"
    needs_text_attention = True
    needs_embeddings = True

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        rows, valid = inputs.decoder.text_visual_each(TEXT_ROWS)
        rows, valid = rows.cpu(), valid.cpu()
        out = torch.full(inputs.candidates.shape, float("nan"))
        for b, (visual, text) in enumerate(inputs.embeddings):
            n = inputs.num_visual[b]
            present = inputs.candidates[b, :n].nonzero().flatten()
            attention = rows[b][valid[b]][:, :n]
            out[b, present] = rater_scores(attention[:, present], select_raters(visual, text)).float()
        return out


def _top(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the k best-scored candidates in image order, the others best-first); ties go to the earlier token."""
    present = candidates.nonzero().flatten()
    order = torch.argsort(scores[present].double().nan_to_num(nan=float("-inf")), descending=True, stable=True)
    return torch.sort(present[order[:k]]).values, present[order[k:]]


@dataclass(frozen=True)
class Recycling(Reads):
    """SparseVLM's deletion and recycling, the stage's selector and its merger: keep the top k candidates by
    score (the official ``topk`` keeps min(k, n - 1); here k, refused when above n), then ``recycle`` the
    deleted ones (``ratio`` 0 = off) on the hidden states entering layer K; the cluster centres are kept on
    top of k, and the merge makes each the mean of its cluster."""

    ratio: float = 0.3
    cluster_size: int = 10
    name: str = "topk+recycling"
    needs_budget: bool = True
    needs_states = True
    acts_on: str = "states"
    needs_keys: bool = False
    keys_layer: str = "feature"

    def __post_init__(self):
        check_range("recycle", self.ratio, 0.0, 1.0)
        check_int("cluster_size", self.cluster_size, 1)

    def select(self, sample: SampleSelection, k: int | None) -> torch.Tensor:
        kept, deleted = _top(sample.scores, sample.candidates, k)
        centres = recycle(deleted, sample.scores, sample.states.visual, self.ratio, self.cluster_size).centres
        return torch.sort(torch.cat([kept, centres])).values

    def merge(self, sample: MergeInputs) -> MergeMap:
        """The clusters of the centres ``select`` kept (the kept tokens beyond the top k), without choosing
        them again."""
        top, deleted = _top(sample.scores, sample.candidates, sample.budget)
        centres = sample.kept[~torch.isin(sample.kept, top)]
        return cluster_merge(recycled_pool(deleted, sample.scores, self.ratio), centres, sample.states.visual)
