"""SparseVLM: its parts on hand-checkable cases, a stage against a loop re-computation written from the paper's
equations, the engine invariants on tiny LLaVA and LLaVA-NeXT models, FLOPs, and the refusals."""
import math

import pytest
import torch

from analysis_lib.pruning.sparsevlm import SparseStage, rank_deletions, rater_scores, recycle, select_raters


# ---- the parts, by hand ---------------------------------------------------------------------------------------

def test_raters_are_the_text_tokens_above_the_mean_relevance():
    """V·Tᵀ rows [ln 3, 0, 0]: softmax over the text [3/5, 1/5, 1/5], mean 1/3: only the first text token rates."""
    visual = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    text = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [0.0, 5.0]])
    assert select_raters(visual, text).tolist() == [True, False, False]


def test_without_a_token_above_the_mean_every_text_token_rates():
    assert select_raters(torch.ones(3, 2), torch.ones(1, 2)).tolist() == [True]


def test_scores_are_the_raters_mean_attention():
    attention = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.1, 0.1], [0.3, 0.3, 0.0]])
    scores = rater_scores(attention, torch.tensor([True, False, True]))
    torch.testing.assert_close(scores, torch.tensor([0.2, 0.25, 0.15], dtype=torch.float64))


def test_rank_deletions():
    """Rank 2 of 4 visual columns: λ·(4 - 2) tokens deleted."""
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert rank_deletions(p, 1.0) == 2 and rank_deletions(p, 0.5) == 1


def test_recycling_by_hand():
    """7 deleted tokens: int(7·0.3) + 1 = 3 recycled, the best-scored (1, 3, 5); int(3/2) + 1 = 2 clusters.
    States 0, 0.1, 5 (one channel): with k = 2 neighbours tokens 1 and 3 are equally dense (exp(-0.005)),
    token 1 counts as denser (earlier); δ = 5 (its largest distance), 0.1, 4.9; ρ·δ ranks 1, 3, then 5, so the
    centres are 1 and 3, and 5 joins its nearest centre 3, which becomes the mean of 3 and 5."""
    deleted = torch.arange(7)
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.0])
    states = torch.tensor([[9.0], [0.0], [9.0], [0.1], [9.0], [5.0], [9.0]])
    recycled = recycle(deleted, scores, states, ratio=0.3, cluster_size=2)
    assert recycled.centres.tolist() == [1, 3]
    assert recycled.merge.triples() == [[3, 3, -0.5], [3, 5, 0.5]]
    rows, values = recycled.merge.apply(states, torch.arange(7))
    assert rows.tolist() == [3] and values.item() == pytest.approx(2.55)


def test_no_recycling_when_off_or_nothing_deleted():
    states = torch.randn(4, 2)
    assert recycle(torch.arange(4), torch.rand(4), states, 0.0, 10).centres.numel() == 0
    assert recycle(torch.arange(0), torch.rand(4), states, 0.3, 10).merge.target.numel() == 0


def test_stage_by_hand():
    """Rater = text token 0 (as above); its attention ranks the 5 candidates 4, 0, 2, 1 (token 3 is absent);
    k = 2 keeps 0 and 4; of the 2 deleted, int(0.6) + 1 = 1 (token 2, the better) is recycled as 1 cluster,
    kept on top with nothing to absorb."""
    candidates = torch.tensor([True, True, True, False, True])
    attention = torch.tensor([[0.3, 0.1, 0.2, 0.9, 0.4], [0.0, 0.9, 0.9, 0.0, 0.0], [0.0, 0.9, 0.9, 0.0, 0.0]])
    embeddings = torch.tensor([[1.0, 0.0]] * 5)
    text = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [0.0, 5.0]])
    kept, recycled = SparseStage().plan(candidates, 2, attention, embeddings, text, torch.randn(5, 3))
    assert kept.tolist() == [0, 4] and recycled.centres.tolist() == [2] and recycled.merge.target.numel() == 0


# ---- a stage against a loop re-computation from the paper's equations --------------------------------------------

def reference_stage(candidates, k, attention, visual_embeddings, text_embeddings, hidden, ratio, cluster_size):
    """SparseVLM §3.2–3.4 in loops: R_j = mean_i softmax_j(v_i·t_j), raters R_j > mean R; score_i = mean over
    raters of attention[j][i]; keep the top k; recycle the top int(0.3·d) + 1 deleted; DPC-KNN with k = c
    neighbours (self included), c = int(m / cluster_size) + 1 centres; members to the nearest centre; mean."""
    present = [i for i, c in enumerate(candidates) if c]
    n_text = len(text_embeddings)
    relevance = [0.0] * n_text
    for i in present:
        logits = [sum(a * b for a, b in zip(visual_embeddings[i], t)) for t in text_embeddings]
        top = max(logits)
        exp = [math.exp(x - top) for x in logits]
        for j in range(n_text):
            relevance[j] += exp[j] / sum(exp) / len(present)
    mean = sum(relevance) / n_text
    raters = [j for j in range(n_text) if relevance[j] > mean] or list(range(n_text))
    score = {i: sum(attention[j][i] for j in raters) / len(raters) for i in present}
    ranked = sorted(present, key=lambda i: (-score[i], i))
    kept, deleted = sorted(ranked[:k]), ranked[k:]
    if not deleted:
        return kept, [], set()
    pool = sorted(deleted[:min(int(len(deleted) * ratio) + 1, len(deleted))])
    c = int(len(pool) / cluster_size) + 1
    width = len(hidden[0])
    dist = {(a, b): math.dist(hidden[a], hidden[b]) / math.sqrt(width) for a in pool for b in pool}
    density = {a: math.exp(-sum(d * d for d in sorted(dist[a, b] for b in pool)[:c]) / c) for a in pool}
    delta = {}
    for a in pool:
        denser = [b for b in pool if density[b] > density[a] or (density[b] == density[a] and b < a)]
        delta[a] = min(dist[a, b] for b in denser) if denser else max(dist[a, b] for b in pool)
    centres = sorted(sorted(pool, key=lambda a: -density[a] * delta[a])[:c])
    triples = set()
    for centre in centres:
        members = [a for a in pool if (a == centre or a not in centres)
                   and min(centres, key=lambda t: (dist[a, t], centres.index(t))) == centre]
        if len(members) > 1:
            triples |= {(centre, a, round(1 / len(members) - (a == centre), 6)) for a in members}
    return kept, centres, triples


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k, ratio, cluster_size", [(5, 0.3, 10), (3, 0.5, 2), (12, 1.0, 3)])
def test_stage_matches_the_paper_equations(seed, k, ratio, cluster_size):
    g = torch.Generator().manual_seed(seed)
    n, t = 40, 7
    candidates = torch.rand(n, generator=g) > 0.2
    attention = torch.softmax(torch.randn(t, n, generator=g) * 2, dim=1)
    visual, text, hidden = (torch.randn(n, 6, generator=g), torch.randn(t, 6, generator=g),
                            torch.randn(n, 5, generator=g))
    kept, recycled = SparseStage(ratio, cluster_size).plan(candidates, k, attention, visual, text, hidden)
    expected = reference_stage(candidates.tolist(), k, attention.tolist(), visual.tolist(), text.tolist(),
                               hidden.tolist(), ratio, cluster_size)
    got = {(a, b, round(w, 6)) for a, b, w in recycled.merge.triples()}
    assert (kept.tolist(), recycled.centres.tolist(), got) == expected
    assert recycled.centres.numel() == int(min(int((int(candidates.sum()) - k) * ratio) + 1,
                                               int(candidates.sum()) - k) / cluster_size) + 1


def test_rank_deletion_caps_the_kept_count():
    """Two raters: P has rank ≤ 2, so at least n - 2 of the n candidates go whatever the budget."""
    g = torch.Generator().manual_seed(0)
    n = 10
    attention = torch.rand(2, n, generator=g)
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    kept, _ = SparseStage(deletion="rank").plan(torch.ones(n, dtype=torch.bool), 8, attention,
                                                torch.ones(n, 2), text, torch.randn(n, 3, generator=g))
    assert kept.numel() == 2
