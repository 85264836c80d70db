"""Scoring and selection criteria on small hand-built inputs whose right answers are worked out by hand."""
import math

import pytest
import torch

from analysis_lib.attention import VisionRows
from analysis_lib.layout import SampleGrid, Segment, VisualLayout
from analysis_lib.pruning.scorers import (DensityPeakScorer, FixedScorer, FoPruSignificance, RandomScorer,
                                          ScoreInputs, VisionAttentionScorer, density_peaks)
from analysis_lib.pruning.selectors import (Grid, ImportantDiverse, Quartile, Region, Rows, SampleSelection, TopK,
                                            Union, remove_duplicates)

NAN = float("nan")


# ---------------------------------------------------------------- builders

def square_grid(g: int, offset: int = 5) -> SampleGrid:
    """One g×g image segment (LLaVA-1.5 style): token i = patch i at row i // g, column i % g."""
    i = torch.arange(g * g)
    row, col = i // g, i % g
    zeros = torch.zeros_like(i)
    return SampleGrid(positions=i + offset, patch=i.clone(), image=zeros, segment=zeros.clone(), row=row, col=col,
                      y=(row + 0.5) / g, x=(col + 0.5) / g, segments=[Segment("image", g, g)])


def next_grid(base: int = 4, rows: int = 4, cols: int = 6, offset: int = 5) -> SampleGrid:
    """LLaVA-NeXT style: a base×base "base" segment, then a "highres" segment of ``rows`` rows of ``cols``
    patches each followed by one newline token (patch -1, col = cols).

    With the defaults: base tokens 0..15, highres row r = tokens 16 + 7r .. 22 + 7r, newlines 22, 29, 36, 43.
    """
    patch, segment, row, col, y, x = [], [], [], [], [], []
    for i in range(base * base):
        r, c = divmod(i, base)
        patch.append(i), segment.append(0), row.append(r), col.append(c)
        y.append((r + 0.5) / base), x.append((c + 0.5) / base)
    for r in range(rows):
        for c in range(cols + 1):
            patch.append(base * base + r * cols + c if c < cols else -1)
            segment.append(1), row.append(r), col.append(c)
            y.append((r + 0.5) / rows), x.append((c + 0.5) / cols if c < cols else 1.0)
    n = len(patch)
    return SampleGrid(positions=torch.arange(n) + offset, patch=torch.tensor(patch),
                      image=torch.zeros(n, dtype=torch.long), segment=torch.tensor(segment), row=torch.tensor(row),
                      col=torch.tensor(col), y=torch.tensor(y), x=torch.tensor(x),
                      segments=[Segment("base", base, base), Segment("highres", rows, cols + 1)])


def sample(grid: SampleGrid, scores=None, candidates=None, features=None) -> SampleSelection:
    """A SampleSelection over ``grid``; scores default to 0, candidates to all tokens."""
    n = grid.num_tokens
    scores = torch.zeros(n) if scores is None else torch.as_tensor(scores, dtype=torch.float32)
    if candidates is None:
        candidates = torch.ones(n, dtype=torch.bool)
    elif not isinstance(candidates, torch.Tensor) or candidates.dtype != torch.bool:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.as_tensor(list(candidates), dtype=torch.long)] = True
        candidates = mask
    return SampleSelection(scores=scores, candidates=candidates, grid=grid, features=features)


def planted(n: int, values: dict[int, float]) -> torch.Tensor:
    """Scores of 0 everywhere but at the planted indices."""
    scores = torch.zeros(n)
    for i, v in values.items():
        scores[i] = v
    return scores


def rows_of(*pairs: tuple[int, int], g: int = 6) -> list[int]:
    """Token indices of a square g-grid for (row, col) pairs, in image order."""
    return sorted(r * g + c for r, c in pairs)


def onehot(classes: list[int], width: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), width).float()


def unit(angles_deg: list[float]) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg])


def kept(t: torch.Tensor) -> list[int]:
    return t.tolist()


# ---------------------------------------------------------------- TopK

def test_topk_planted_scores_exact_set():
    """The k highest planted scores are kept, returned in ascending index order."""
    s = sample(square_grid(6), planted(36, {33: 5.0, 3: 2.0, 20: 4.0, 10: 1.0}))
    assert kept(TopK().select(s, 3)) == [3, 20, 33]
    assert kept(TopK().select(s, 1)) == [33]


def test_topk_ties_go_to_earlier_token():
    """Equal scores: the earlier token wins."""
    s = sample(square_grid(6), planted(36, {30: 1.0, 7: 1.0, 2: 1.0}))
    assert kept(TopK().select(s, 2)) == [2, 7]
    assert kept(TopK().select(sample(square_grid(6)), 3)) == [0, 1, 2]


def test_topk_nan_ranked_after_every_scored_candidate():
    """A NaN score loses even to a hugely negative score; NaN ties fall back to the earlier token."""
    scores = torch.full((36,), NAN)
    scores[30], scores[20] = -1e30, -5.0
    s = sample(square_grid(6), scores)
    assert kept(TopK().select(s, 1)) == [20]
    assert kept(TopK().select(s, 2)) == [20, 30]
    assert kept(TopK().select(s, 4)) == [0, 1, 20, 30]


def test_topk_only_candidates():
    """Non-candidates are never returned, however high their score; k beyond the candidates keeps them all."""
    s = sample(square_grid(6), planted(36, {0: 9.0, 5: 8.0, 7: 1.0}), candidates=[5, 7, 8, 9])
    assert kept(TopK().select(s, 2)) == [5, 7]
    assert kept(TopK().select(s, 10)) == [5, 7, 8, 9]


# ---------------------------------------------------------------- Grid

def test_grid_stride2_and_3_on_6x6():
    """Stride 2 keeps rows/cols {0, 2, 4} (9 tokens); stride 3 keeps rows/cols {0, 3} (4 tokens)."""
    s = sample(square_grid(6))
    assert kept(Grid(2).select(s)) == [0, 2, 4, 12, 14, 16, 24, 26, 28]
    assert kept(Grid(3).select(s)) == [0, 3, 18, 21]
    assert Grid(3).name == "grid3" and not Grid(3).needs_budget


def test_grid_feather_counts_on_27x27():
    """FEATHER's numbers: 196 tokens for stride 2 and 81 for stride 3 of a 27×27 grid."""
    s = sample(square_grid(27))
    assert Grid(2).select(s).numel() == 196
    assert Grid(3).select(s).numel() == 81


def test_grid_offset():
    """offset=1 with stride 2 keeps rows/cols {1, 3, 5}."""
    assert kept(Grid(2, offset=1).select(sample(square_grid(6)))) == [7, 9, 11, 19, 21, 23, 31, 33, 35]


def test_grid_only_candidates():
    """Grid points that are no longer candidates are dropped."""
    s = sample(square_grid(6), candidates=[i for i in range(36) if i not in (14, 28)])
    assert kept(Grid(2).select(s)) == [0, 2, 4, 12, 16, 24, 26]


def test_grid_never_keeps_newlines_and_works_per_segment():
    """On the two-segment grid, stride 2 takes rows/cols {0, 2} of the base and rows {0, 2} × cols {0, 2, 4} of
    the high-res segment; the newline tokens (col 6, a multiple of 2) are never kept."""
    s = sample(next_grid())
    assert kept(Grid(2).select(s)) == [0, 2, 8, 10, 16, 18, 20, 30, 32, 34]


@pytest.mark.parametrize("kwargs, name", [({"stride": 0}, "stride"), ({"stride": -1}, "stride"),
                                          ({"stride": 2, "offset": 2}, "offset"),
                                          ({"stride": 3, "offset": -1}, "offset")])
def test_grid_bad_parameters(kwargs, name):
    """Stride < 1, or offset outside 0..stride-1, is rejected naming the parameter."""
    with pytest.raises(ValueError, match=name):
        Grid(**kwargs)


# ---------------------------------------------------------------- Union

def test_union_topk_and_grid3():
    """TopK(3) = {1, 21, 35}; Grid(3) = {0, 3, 18, 21}; the union has 6 tokens (21 shared)."""
    s = sample(square_grid(6), planted(36, {1: 3.0, 21: 2.0, 35: 1.0}))
    union = Union(TopK(), Grid(3))
    assert union.needs_budget and not union.needs_features and union.name == "topk+grid3"
    assert kept(union.select(s, 3)) == [0, 1, 3, 18, 21, 35]


def test_union_rejects_two_budgeted_parts():
    with pytest.raises(ValueError, match="budget"):
        Union(TopK(), TopK())


# ---------------------------------------------------------------- Rows

def test_rows_score_picks_rows_with_highest_sum():
    """Rows 1 (sum 6) and 4 (sum 9) beat row 0 whose single token scores 5: k = 12 of 36 → 2 of 6 rows."""
    scores = torch.zeros(36)
    scores[6:12] = 1.0
    scores[24:30] = 1.5
    scores[0] = 5.0
    assert kept(Rows("score").select(sample(square_grid(6), scores), 12)) == list(range(6, 12)) + list(range(24, 30))


def test_rows_top_and_bottom():
    """Positional ablations: the first / last rows."""
    s = sample(square_grid(6), torch.arange(36.0))
    assert kept(Rows("top").select(s, 12)) == list(range(12))
    assert kept(Rows("bottom").select(s, 12)) == list(range(24, 36))


def test_rows_fraction_from_candidates():
    """Candidates = rows 0-2 (18 tokens), k = 6 → fraction 1/3 of 3 candidate rows = 1 row: the last one is row 2."""
    s = sample(square_grid(6), candidates=range(18))
    assert kept(Rows("bottom").select(s, 6)) == list(range(12, 18))
    assert kept(Rows("top").select(s, 6)) == list(range(6))


def test_rows_per_segment_with_newlines():
    """Two segments of 4 rows each, 44 candidates: k = 11 → 1 row per segment, k = 22 → 2; newlines go with
    their row."""
    s = sample(next_grid())
    assert kept(Rows("top").select(s, 11)) == [0, 1, 2, 3] + list(range(16, 23))
    assert kept(Rows("top").select(s, 22)) == list(range(8)) + list(range(16, 30))
    assert kept(Rows("bottom").select(s, 11)) == [12, 13, 14, 15] + list(range(37, 44))


def test_rows_score_per_segment():
    """Base row 2 and high-res row 3 are hot (newline scores NaN count as 0): one row from each segment."""
    scores = torch.zeros(44)
    scores[8:12] = 1.0
    scores[37:43] = 1.0
    scores[[22, 29, 36, 43]] = NAN
    assert kept(Rows("score").select(sample(next_grid(), scores), 11)) == [8, 9, 10, 11] + list(range(37, 44))


def test_rows_budget_below_one_row_keeps_none():
    """k = 10 of 44: 10·4 // 44 = 0 rows in each segment, so nothing is kept rather than 4 + 7 = 11 > 10 tokens."""
    s = sample(next_grid())
    assert kept(Rows("bottom").select(s, 10)) == []
    assert kept(Rows("top").select(s, 10)) == []


def test_rows_truncate_and_never_exceed_budget():
    """FoPru's rounding on 27×27 at R = 0.75: k = floor(0.25·729) = 182 → 182·27 // 729 = 6 rows (n×r% sliced,
    truncated) = 162 tokens, not round(6.74) = 7 rows = 189 > 182. Rows 0-5 score highest."""
    s = sample(square_grid(27), -torch.arange(729.0))
    assert kept(Rows("score").select(s, 182)) == list(range(162))
    assert kept(Rows("bottom").select(s, 182)) == list(range(729 - 162, 729))


def test_rows_bad_part():
    with pytest.raises(ValueError, match="part"):
        Rows("middle")


# ---------------------------------------------------------------- Quartile

@pytest.mark.parametrize("q, expected", [(1, [0, 1, 2, 3]), (2, [4, 5, 6, 7]), (3, [8, 9, 10, 11]),
                                         (4, [12, 13, 14, 15])])
def test_quartile_of_16(q, expected):
    """Each quarter of 16 candidates, in sequence order."""
    assert kept(Quartile(q).select(sample(square_grid(4)))) == expected


def test_quartile_splits_the_candidates():
    """With candidates 1, 3, ..., 15 the quarters are pairs of those."""
    s = sample(square_grid(4), candidates=range(1, 16, 2))
    assert kept(Quartile(2).select(s)) == [5, 7]
    assert kept(Quartile(4).select(s)) == [13, 15]


@pytest.mark.parametrize("q", [0, 5])
def test_quartile_bad_q(q):
    with pytest.raises(ValueError, match="q="):
        Quartile(q)


# ---------------------------------------------------------------- Region

def test_region_top_bottom_right_centre():
    """On 6×6 the token centres are at (i + 0.5) / 6: top = rows 0-2, bottom-right = rows/cols 3-5,
    centre = centres in [0.25, 0.75) = rows/cols 1-3."""
    s = sample(square_grid(6))
    assert kept(Region("top").select(s)) == list(range(18))
    assert kept(Region("bottom-right").select(s)) == rows_of(*[(r, c) for r in (3, 4, 5) for c in (3, 4, 5)])
    assert kept(Region("centre").select(s)) == rows_of(*[(r, c) for r in (1, 2, 3) for c in (1, 2, 3)])


def test_region_only_candidates():
    s = sample(square_grid(6), candidates=[0, 5, 20, 35])
    assert kept(Region("top").select(s)) == [0, 5]


def test_region_bad_name_lists_allowed():
    with pytest.raises(ValueError, match="region=.*allowed values.*'centre'"):
        Region("middle")


# ---------------------------------------------------------------- remove_duplicates / ImportantDiverse

def test_remove_duplicates_interleaved_classes_by_hand():
    """12 one-hot tokens of classes i % 4, n = 4, per_round = 2 (sims are 0/1; stable ties keep place order):
    r1: A=[0,2,4,6,8,10] (classes 0,2) vs B (1,3): all 0 → drop 0,2 → [4,6,8,10,1,3,5,7,9,11];
    r2: A=[4,8,1,5,9] vs B=[6,10,3,7,11]: all 0 → drop 4,8 → [1,5,9,6,10,3,7,11];
    r3: A=[1,9,10,7] vs B=[5,6,3,11]: all 1 → drop 1,9 → [10,7,5,6,3,11];
    r4: A=[10,5,3] (sims 1,0,1) vs B=[7,6,11] → drop 10,3 → [5,7,6,11]; r = 0, stop."""
    assert kept(remove_duplicates(onehot([i % 4 for i in range(12)]), 4, 2)) == [5, 7, 6, 11]


def test_remove_duplicates_keeps_most_similar_survivors_first():
    """Unit vectors at 100°, 0°, 160°, 150°, 170°; n = 2, per_round = 1:
    r1: A=[0,2,4] max cos to B=[1,3]: 0→cos50=.64, 2→cos10=.98, 4→cos20=.94 → drop 2, kept A ordered [4, 0]
        → remaining [4,0,1,3];
    r2: A=[4,1] vs B=[0,3]: 4→cos20=.94, 1→cos100=-.17 → drop 4 → [1,0,3];
    r3: A=[1,3] vs B=[0]: 1→-.17, 3→cos50=.64 → drop 3 → [1,0].
    (Keeping A in place order in r1 would end at [1, 4] instead.)"""
    assert kept(remove_duplicates(unit([100, 0, 160, 150, 170]), 2, 1)) == [1, 0]


def test_remove_duplicates_blocked_copies_one_per_class():
    """Classes 0,0,0,1,1,1,2,2,2,3,3,3 → n = 4 keeps one token of each class:
    r1 (r = 8): every A has a twin in B → drop all 6 A → [1,3,5,7,9,11] (classes 0,1,1,2,3,3);
    r2 (r = 2): A=[1,5,9] sims 0,1,1 → drop 5, 9 → [1,3,7,11]."""
    assert kept(remove_duplicates(onehot([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]), 4, 8)) == [1, 3, 7, 11]


def _vispruner_sample(scores):
    """4×4 grid; token i has class block [0,0,0,0,1,1,1,1,2,...] as a one-hot feature."""
    return sample(square_grid(4), scores, features=onehot([i // 4 for i in range(16)]))


def test_important_diverse_by_hand():
    """k = 8, important = 0.5: the top 4 scores {0, 5, 10, 15} (one per class), then 4 diverse tokens from the
    pool [1,2,3,4,6,7,8,9,11,12,13,14] (classes 0,0,0,1,1,1,2,2,2,3,3,3) → pool places [1,3,7,11] = tokens
    2, 4, 9, 14: one per class."""
    s = _vispruner_sample(planted(16, {0: 4.0, 5: 3.0, 10: 2.0, 15: 1.0}))
    result = kept(ImportantDiverse(0.5).select(s, 8))
    assert result == [0, 2, 4, 5, 9, 10, 14, 15]
    diverse = [i for i in result if i not in (0, 5, 10, 15)]
    assert sorted(i // 4 for i in diverse) == [0, 1, 2, 3]


def test_important_diverse_important_count_is_floored():
    """k = 7, important = 0.5 → int(3.5) = 3 important {0, 5, 10}; pool now also holds 15 (13 tokens).
    Attention order reads 15 (score 1) first, then the zero scores in image order: [15,1,2,3,4,6,7,8,9,11,12,13,14];
    r1 drops all 7 A places (each has a twin in B) → [1,3,6,8,11,13]; r2: A=[1,6,11] sims 1,0,1 → drop 1, 11
    → diverse 6, 3, 8, 13. Image order: r1 → [2,4,7,9,12,14]; r2: A=[2,7,12] sims 0,1,1 → drop 7, 12 → diverse
    2, 4, 9, 14. Either way one per class."""
    s = _vispruner_sample(planted(16, {0: 4.0, 5: 3.0, 10: 2.0, 15: 1.0}))
    assert kept(ImportantDiverse(0.5).select(s, 7)) == [0, 3, 5, 6, 8, 10, 13]
    assert kept(ImportantDiverse(0.5, order="image").select(s, 7)) == [0, 2, 4, 5, 9, 10, 14]


def test_important_diverse_newlines_only_fill_a_shortfall():
    """Candidates = base row 0 + the four newlines; k = 6: important = top 3 {0, 1, 2}; the only featured
    token left is 3; the 2-token shortfall is filled with the first newlines in image order (22, 29)."""
    grid = next_grid()
    features = onehot([p % 8 if p >= 0 else 0 for p in grid.patch.tolist()], 8)
    features[grid.patch < 0] = NAN
    scores = planted(44, {0: 3.0, 1: 2.0, 2: 1.0})
    scores[grid.patch < 0] = NAN
    s = sample(grid, scores, candidates=[0, 1, 2, 3, 22, 29, 36, 43], features=features)
    assert kept(ImportantDiverse(0.5).select(s, 6)) == [0, 1, 2, 3, 22, 29]
    full = sample(grid, scores, features=features)
    result = ImportantDiverse(0.5).select(full, 8)
    assert result.numel() == 8 and not set(result.tolist()) & {22, 29, 36, 43}


def test_important_one_equals_topk():
    """important = 1.0: the whole budget goes to the best scores, exactly TopK's kept set."""
    s = _vispruner_sample(planted(16, {3: 5.0, 9: 4.0, 12: 3.0, 1: 2.0}))
    assert kept(ImportantDiverse(1.0).select(s, 4)) == kept(TopK().select(s, 4)) == [1, 3, 9, 12]


def test_important_diverse_attention_order_by_hand():
    """2×2 grid, scores 2, 1, 3, 4 for tokens 0-3; k = 2 → 1 important (token 3), 1 diverse from the other three
    (orthogonal features). Duplicate removal with n = 1: r = min(8, 3 - 1) = 2 drops both A places (0 and 2),
    leaving the token at place 1. Attention order (official code) reads [2, 0, 1] → keeps token 0; image
    order reads [0, 1, 2] → keeps token 1."""
    s = sample(square_grid(2), [2.0, 1.0, 3.0, 4.0], features=onehot([0, 1, 2, 3]))
    assert kept(ImportantDiverse(0.5).select(s, 2)) == [0, 3]
    assert kept(ImportantDiverse(0.5, order="image").select(s, 2)) == [1, 3]


@pytest.mark.parametrize("kwargs, name", [({"important": 1.5}, "important"), ({"important": -0.1}, "important"),
                                          ({"per_round": 0}, "per_round"), ({"order": "raster"}, "order")])
def test_important_diverse_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ImportantDiverse(**kwargs)


# ---------------------------------------------------------------- density peaks

def _line(xs: list[float], channels: int = 4) -> torch.Tensor:
    """Points on the diagonal: Euclidean distance 2|dx| over sqrt(4) = |dx| exactly."""
    return torch.tensor(xs, dtype=torch.float32)[:, None].repeat(1, channels)


def _dpc_line_expected(delta: str = "squared"):
    """x = 0, 1, 3, 10, k = 2 (self + nearest): ρ = e^-0.5, e^-0.5, e^-2, e^-24.5; token 0 is densest (tie with 1
    broken by index) so its distance is its largest, 10; then 1, 2, 7; δ squares them (FEATHER eq. 2) or not."""
    distances = torch.tensor([10.0, 1.0, 2.0, 7.0])
    rho = torch.tensor([math.exp(-0.5), math.exp(-0.5), math.exp(-2), math.exp(-24.5)])
    return rho * (distances**2 if delta == "squared" else distances)


@pytest.mark.parametrize("delta", ["squared", "plain"])
def test_density_peaks_by_hand(delta):
    torch.testing.assert_close(density_peaks(_line([0, 1, 3, 10]), 2, delta), _dpc_line_expected(delta))


def test_density_peaks_squared_delta_changes_the_kept_pair():
    """x = 0, 1, 4, 6, k = 2: ρ = e^-0.5, e^-0.5, e^-2, e^-2; distances to the nearest denser token 6 (token 0,
    densest: its largest), 1, 3 (token 2: token 3 ties and comes later, so its nearest denser is token 1), 2.
    Squared (FEATHER eq. 2): 36e^-0.5, e^-0.5, 9e^-2 = 1.22, 4e^-2 → top 2 = {0, 2}, one per cluster.
    Plain (TCFormer): 6e^-0.5, e^-0.5 = 0.61, 3e^-2 = 0.41, 2e^-2 → top 2 = {0, 1}, both from the first cluster."""
    candidates = torch.ones(1, 4, dtype=torch.bool)
    inputs = ScoreInputs(num_visual=[4], candidates=candidates, features=[_line([0, 1, 4, 6])])
    squared = DensityPeakScorer(k=2).score(inputs)[0]
    plain = DensityPeakScorer(k=2, delta="plain").score(inputs)[0]
    assert kept(TopK().select(sample(square_grid(2), squared), 2)) == [0, 2]
    assert kept(TopK().select(sample(square_grid(2), plain), 2)) == [0, 1]


def test_density_peaks_cluster_centres_score_highest():
    """Two clusters (a tight plus-shape around (0, 0), a looser one around (10, 10)) and an outlier: the two
    centres score highest; the densest token's δ is its largest distance."""
    pts = torch.tensor([[0., 0.], [1., 0.], [-1., 0.], [0., 1.], [0., -1.],
                        [10., 10.], [11.5, 10.], [8.5, 10.], [10., 11.5],
                        [30., -20.]])
    scores = density_peaks(pts, 3)
    assert set(scores.topk(2).indices.tolist()) == {0, 5}
    dist = torch.cdist(pts.double(), pts.double()) / math.sqrt(2)
    rho0 = math.exp(-(0 + 1 + 1) / 2 / 3)  # distances 0, 1, 1 divided by sqrt(2), squared, averaged
    assert scores[0].item() == pytest.approx(rho0 * dist[0].max().item() ** 2, rel=1e-5)


def test_density_peak_scorer_nan_rows_and_non_candidates():
    """NaN feature rows, non-candidates and padding get NaN; the others are scored among themselves only."""
    feats = _line([0, NAN, 1, 100, 3, 10])
    candidates = torch.tensor([[True, True, True, False, True, True, True]])
    out = DensityPeakScorer(k=2).score(ScoreInputs(num_visual=[6], candidates=candidates, features=[feats]))
    e = _dpc_line_expected()
    expected = torch.tensor([[e[0], NAN, e[1], NAN, e[2], e[3], NAN]])
    torch.testing.assert_close(out, expected, equal_nan=True)


@pytest.mark.parametrize("k", [0, -1])
def test_density_peak_scorer_bad_k(k):
    with pytest.raises(ValueError, match="k="):
        DensityPeakScorer(k=k)


def test_density_peak_scorer_bad_delta_lists_allowed():
    with pytest.raises(ValueError, match="delta='cubed'.*'squared', 'plain'"):
        DensityPeakScorer(delta="cubed")


# ---------------------------------------------------------------- FoPru significance / vision attention

def _heads(means: list[list[float]]) -> torch.Tensor:
    """[crops, 2, P] whose head mean is ``means`` (head 0 = mean + d, head 1 = mean - d)."""
    m = torch.tensor(means)
    d = 0.01 * torch.tensor([1.0, -1.0, 1.0, -1.0])
    return torch.stack([m + d, m - d], dim=1)


GIVEN = [[0.1, 0.4, 0.1, 0.4], [0.2, 0.3, 0.2, 0.3]]  # crop 0: high variance; crop 1: low
RECEIVED = [[0.2, 0.3, 0.2, 0.3], [0.7, 0.1, 0.1, 0.1]]  # crop 0: low variance; crop 1: high
CLS = [[0.5, 0.1, 0.2, 0.2], [0.0, 0.6, 0.3, 0.1]]


def _vision(with_cls: bool = True) -> VisionRows:
    return VisionRows(cls=_heads(CLS) if with_cls else None, received=_heads(RECEIVED), given=_heads(GIVEN), map=None)


def _vision_inputs(vision: VisionRows) -> ScoreInputs:
    """next_grid(2, 2, 2): base tokens 0-3 = crop 0 patches 0-3; high-res tokens 4, 5, 7, 8 = crop 1 patches 0-3;
    newlines 6, 9; candidates 12 wide (10, 11 padding)."""
    grid = next_grid(base=2, rows=2, cols=2)
    return ScoreInputs(num_visual=[10], candidates=torch.ones(1, 12, dtype=torch.bool),
                       layout=VisualLayout(samples=[grid], sequence_length=20), vision=vision)


def _tokens(crop0: list[float], crop1: list[float]) -> torch.Tensor:
    a, b = crop0, crop1
    return torch.tensor([[a[0], a[1], a[2], a[3], b[0], b[1], NAN, b[2], b[3], NAN, NAN, NAN]])


@pytest.mark.parametrize("rule, crop0, crop1", [("variance", GIVEN[0], RECEIVED[1]),
                                                ("low-variance", RECEIVED[0], GIVEN[1]),
                                                ("given", GIVEN[0], GIVEN[1]),
                                                ("received", RECEIVED[0], RECEIVED[1])])
def test_fopru_rules_per_crop(rule, crop0, crop1):
    """variance: the higher-variance vector per crop (given in crop 0, received in crop 1); low-variance the
    other; given/received forced. Mapped onto tokens, newlines and padding NaN."""
    out = FoPruSignificance(rule).score(_vision_inputs(_vision()))
    torch.testing.assert_close(out, _tokens(crop0, crop1), equal_nan=True)


def test_fopru_bad_rule():
    with pytest.raises(ValueError, match="rule"):
        FoPruSignificance("max")


def test_vision_attention_auto_picks_cls_then_received():
    """auto = [CLS] row when the tower has one, else the received attention."""
    with_cls = VisionAttentionScorer("auto").score(_vision_inputs(_vision(with_cls=True)))
    torch.testing.assert_close(with_cls, _tokens(CLS[0], CLS[1]), equal_nan=True)
    without = VisionAttentionScorer("auto").score(_vision_inputs(_vision(with_cls=False)))
    torch.testing.assert_close(without, _tokens(RECEIVED[0], RECEIVED[1]), equal_nan=True)


def test_vision_attention_cls_without_cls_token_raises():
    with pytest.raises(ValueError, match=r"kind='cls'.*no \[CLS\]"):
        VisionAttentionScorer("cls").score(_vision_inputs(_vision(with_cls=False)))


def test_vision_attention_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        VisionAttentionScorer("given")


# ---------------------------------------------------------------- random / fixed

def _inputs(counts: list[int]) -> ScoreInputs:
    width = max(counts)
    candidates = torch.arange(width)[None, :] < torch.tensor(counts)[:, None]
    return ScoreInputs(num_visual=counts, candidates=candidates)


def test_random_scorer_same_per_sample_regardless_of_batch():
    """A 9-token sample scores the same alone, first in a batch, or beside longer samples."""
    alone = RandomScorer(seed=3).score(_inputs([9]))
    batch = RandomScorer(seed=3).score(_inputs([9, 36, 4]))
    assert torch.equal(batch[0, :9], alone[0]) and torch.equal(batch[2, :4], alone[0, :4])
    assert torch.equal(RandomScorer(seed=3).score(_inputs([9])), alone)
    assert not torch.equal(RandomScorer(seed=4).score(_inputs([9])), alone)


def test_fixed_scorer_prefers_its_indices():
    """Its indices score 1, the rest 0, so TopK keeps exactly them."""
    scores = FixedScorer(((1, 3), (0,))).score(_inputs([4, 3]))
    assert torch.equal(scores, torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]))
    assert kept(TopK().select(sample(square_grid(2), scores[0]), 2)) == [1, 3]


def test_fixed_scorer_rejects_bad_indices():
    with pytest.raises(ValueError, match=r"kept: indices \[3\]"):
        FixedScorer(((0, 3),)).score(_inputs([3]))
    with pytest.raises(ValueError, match="kept"):
        FixedScorer(((0,), (1,))).score(_inputs([3]))
