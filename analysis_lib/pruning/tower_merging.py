"""ToMe (Bolya et al., ICLR 2023, "Token Merging: Your ViT but Faster") run for real inside LLaVA's CLIP tower.

Each merging layer of the tower runs ToMe's block with unmodified transformers classes, by hooks only:

    x = x + attn(ln1(x))            (proportional attention: + log(size) on the key logits)
    x = merge(x)                    (bipartite soft matching, size-weighted mean; n -> n - r tokens)
    x = x + mlp(ln2(x))             (the MLP runs on n - r tokens)

A pre-hook on ``layer_norm2`` swaps its input for the merged rows, a hook on ``mlp`` expands its output back
to n rows (each token takes its cluster's row) so the layer's residual add works, and a hook on the layer
merges its output: as the merge is a size-weighted mean, merge(x + expand(f)) = merge(x) + f, ToMe's block.
The metric is the layer's keys averaged over heads (ToMe's ``k.mean(1)``); the class token is protected.
The sequence really shrinks layer by layer, and the next layers get an additive mask of log(size) over
the keys (CLIPEncoderLayer takes ``attention_mask`` positionally from CLIPEncoder; sdpa and eager add it
to the logits). The recorded hidden states are the shrunk ones (the layer hook runs before transformers'
output recorder), except at the feature layer the projector reads: there the output is expanded back to
the full grid ([CLS] at 0, each patch row its cluster's merged state), as LLaVA fills a fixed number of
image placeholders and LLaVA-NeXT packs crops spatially; later layers (unused by LLaVA) run on the merged
rows again, without merging. The engine then keeps one token per cluster (``ToMe``'s record).

Readings the sources leave open (ToMe's ``tome/merge.py``, ``tome/patch/timm.py``; VisPruner ran ToMe as a
baseline in its Table 1 but its released code, Theia-4869/VisPruner, has no ToMe code, nor have
VisionZip's or FasterVLM's):
- merging layers: every tower layer up to and including the feature layer (LLaVA: layers 0..22 of 24);
- r per layer: ToMe's constant r, as even as possible, ceil(left / layers left), raised where the later
  layers could not remove the rest under ToMe's cap r <= (t - 1) // 2 (the class token protected), so
  exactly ``keep`` patches reach the projector per crop (``merge_schedule``);
- ties: edges sorted stably (ToMe's ``argsort`` is not stable), the first best B token on equal scores;
- the LLM's tokens: one per cluster, its representative being the patch ToMe's merges kept (a B token that
  absorbed others, or an unmerged one), fed in image order (ToMe's own row order is A-then-B, which no LLaVA
  code path would feed), [CLS] dropped by LLaVA's "default" feature selection as usual;
- the record: each merged token with weight 1/cluster size (its share of the cluster's patches; the
  states were averaged layer by layer, so this is the share, not a fixed linear map);
- LLaVA-NeXT: the tower merges each crop alike (``keep`` patches each); newline tokens have no patch and are
  kept; unpadding may cut a cluster's representative away (then its first visible token represents it) or
  a whole cluster (then the crop sends fewer than ``keep`` tokens).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..adapters import ModelAdapter
from ..hooks import HookSet
from .merging import MergeMap
from .signals import Reads

#: model families whose vision tower these hooks merge in (a CLIP tower with [CLS], no windows)
TOWER_FAMILIES = ("llava", "llava_next")
TOWER_ATTENTION = ("sdpa", "eager")


def bipartite_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching of ``metric`` [C, t, h] (token 0, the class token, protected).

    A = even places, B = odd places; each A token's best edge is its most cosine-similar B token; the r
    A tokens with the best edges merge into their B tokens. Returns ``row_of`` [C, t] (each token's row
    after the merge) and ``survivors`` [C, t - r] (the place of the token each row keeps), rows ordered as
    ToMe's ``cat([unmerged A (in place order, class token first), B])``."""
    crops, t, _ = metric.shape
    r = min(r, (t - 1) // 2)
    places = torch.arange(t, device=metric.device).expand(crops, t)
    if r <= 0:
        return places.clone(), places.clone()
    unit = metric.float() / metric.float().norm(dim=-1, keepdim=True)
    a, b = unit[:, ::2], unit[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    scores[:, 0] = -math.inf
    best, best_b = scores.max(dim=-1)
    edges = torch.sort(best, dim=-1, descending=True, stable=True).indices
    merged, unmerged = edges[:, :r], torch.sort(edges[:, r:], dim=-1).values
    n_unm, n_b = unmerged.shape[1], b.shape[1]
    row_of = torch.empty(crops, t, dtype=torch.long, device=metric.device)
    a_places, b_places = places[:, ::2], places[:, 1::2]
    row_of.scatter_(1, a_places.gather(1, unmerged), torch.arange(n_unm, device=metric.device).expand(crops, -1))
    row_of[:, 1::2] = n_unm + torch.arange(n_b, device=metric.device)
    row_of.scatter_(1, a_places.gather(1, merged), n_unm + best_b.gather(1, merged))
    survivors = torch.cat([a_places.gather(1, unmerged), b_places], dim=1)
    return row_of, survivors


def merge_rows(x: torch.Tensor, size: torch.Tensor, row_of: torch.Tensor, rows: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's ``merge_wavg``: x [C, t, D] with sizes [C, t] -> (size-weighted mean per row [C, rows, D],
    summed sizes [C, rows])."""
    new_size = torch.zeros(size.shape[0], rows, dtype=size.dtype, device=size.device).scatter_add_(1, row_of, size)
    total = torch.zeros(x.shape[0], rows, x.shape[2], dtype=torch.float32, device=x.device)
    total.scatter_add_(1, row_of[..., None].expand(-1, -1, x.shape[2]), x.float() * size[..., None].float())
    return (total / new_size[..., None].float()).to(x.dtype), new_size


def max_reduction(tokens: int, layers: int) -> int:
    """Tokens ToMe can remove from ``tokens`` (class token included) in ``layers`` layers at most."""
    removed = 0
    for _ in range(layers):
        r = (tokens - 1) // 2
        tokens, removed = tokens - r, removed + r
    return removed


def merge_schedule(patches: int, keep: int | float, layers: int) -> list[int]:
    """r per merging layer so that ``patches`` (+ [CLS]) become ``keep`` patches over ``layers`` layers:
    ceil(left / layers left), raised just enough that the later layers can remove the rest."""
    keep = keep_count(keep, patches)
    tokens, left, schedule = patches + 1, patches - keep, []
    if left > max_reduction(tokens, layers):
        minimum = patches - max_reduction(tokens, layers)
        raise ValueError(f"keep={keep!r}: ToMe halves at most each of the {layers} merging layers; allowed budgets "
                         f"are {minimum}..{patches} on this tower")
    for i in range(layers):
        cap = (tokens - 1) // 2
        r = min(cap, -(-left // (layers - i)))
        while r < cap and left - r > max_reduction(tokens - r, layers - i - 1):
            r += 1
        schedule.append(r)
        tokens, left = tokens - r, left - r
    return schedule


def keep_count(keep: int | float, patches: int) -> int:
    """A ``keep`` count, or fraction of the patches per crop, as a count of patches per crop (checked)."""
    count = keep if isinstance(keep, int) else max(1, math.floor(keep * patches + 1e-9))
    if not 1 <= count <= patches:
        raise ValueError(f"keep={keep!r}: the budget must lie in 1..{patches} (the patches per crop) or be a "
                         "fraction in (0, 1]")
    return count


def check_tower(adapter: ModelAdapter, keep: int | float) -> list[int]:
    """Refuse a tower these hooks cannot merge in, or a budget that does not fit; the r per merging layer."""
    if adapter.family not in TOWER_FAMILIES:
        raise ValueError(f"model family {adapter.family!r}: ToMe runs inside a CLIP vision tower with a class "
                         f"token and full attention; supported families: {', '.join(map(repr, TOWER_FAMILIES))}")
    implementation = adapter.config.vision_config._attn_implementation or "eager"
    if implementation not in TOWER_ATTENTION:
        raise ValueError(f"vision attn_implementation={implementation!r}: proportional attention needs an additive "
                         f"mask; allowed: {TOWER_ATTENTION}")
    return merge_schedule(adapter.patches_per_crop, keep, adapter.vision_feature_encoder_layer + 1)


@dataclass
class TowerClusters:
    """One sample's ToMe clusters over its visual tokens: each token's representative token (itself for
    LLaVA-NeXT's newline tokens, which have no patch) and its cluster's size in original patches."""

    representative: torch.Tensor  # [N] long, visual-token index
    size: torch.Tensor  # [N] float


@dataclass
class _Pass:
    """One tower forward's merge state (crops C, T = patches + 1 original tokens)."""

    size: torch.Tensor  # [C, t] original patches per current row
    origin: torch.Tensor  # [C, t] original index of the token each row keeps
    slot: torch.Tensor  # [C, T] current row of each original token
    metric: torch.Tensor | None = None
    plan: tuple[torch.Tensor, torch.Tensor] | None = None  # (row_of, survivors) of the layer merging now


class TowerMerging:
    """ToMe's hooks on a LLaVA(-NeXT) CLIP tower; ``clusters(layout)`` reads the last forward's result."""

    def __init__(self, adapter: ModelAdapter, schedule: list[int], proportional: bool = True):
        self.adapter, self.schedule, self.proportional = adapter, schedule, proportional
        self.heads = adapter.vision_geometry().num_heads
        self._pass: _Pass | None = None
        #: the last pass at the feature layer: (slot [C, T], origin [C, t], size [C, t]) on the CPU
        self.result: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def install(self, hooks: HookSet) -> None:
        layers = self.adapter.vision_layers
        feature = self.adapter.vision_feature_encoder_layer
        for i, layer in enumerate(layers):
            hooks.pre(layer, self._make_enter(i))
            if i <= feature:
                hooks.post(layer.self_attn.k_proj, self._keep_metric)
                hooks.pre(layer.layer_norm2, self._make_merge(self.schedule[i]))
                hooks.post(layer.mlp, self._expand_mlp)
                hooks.post(layer, self._make_leave(i == feature), prepend=True)

    # ---- hooks -----------------------------------------------------------------------------
    def _make_enter(self, index: int):
        feature = self.adapter.vision_feature_encoder_layer

        def enter(_module, args, kwargs):
            call = self.adapter.vision_layer_call(args, kwargs)
            hidden = call.hidden
            if index == 0:
                crops, tokens = hidden.shape[:2]
                places = torch.arange(tokens, device=hidden.device).expand(crops, tokens)
                self._pass = _Pass(torch.ones(crops, tokens, device=hidden.device), places.clone(), places.clone())
            state = self._pass
            if index > feature:  # back from the full grid to the merged rows
                hidden = hidden.gather(1, state.origin[..., None].expand(-1, -1, hidden.shape[-1]))
            mask = None
            if self.proportional and index > 0:
                bias = state.size.log().to(hidden.dtype)[:, None, None, :]
                mask = bias.expand(-1, 1, hidden.shape[1], -1)
            return call.rewrite(hidden, mask)

        return enter

    def _keep_metric(self, _module, _args, _kwargs, keys):
        self._pass.metric = keys.unflatten(-1, (self.heads, -1)).mean(dim=2)

    def _make_merge(self, r: int):
        def merge(_module, args, kwargs):
            state = self._pass
            state.plan = bipartite_matching(state.metric, r)
            row_of, survivors = state.plan
            merged, _ = merge_rows(args[0], state.size, row_of, survivors.shape[1])
            return (merged, *args[1:]), kwargs

        return merge

    def _expand_mlp(self, _module, _args, _kwargs, out):
        row_of, _ = self._pass.plan
        return out.gather(1, row_of[..., None].expand(-1, -1, out.shape[-1]))

    def _make_leave(self, feature: bool):
        def leave(_module, _args, _kwargs, out):
            state = self._pass
            hidden = out[0] if isinstance(out, tuple) else out
            row_of, survivors = state.plan
            merged, state.size = merge_rows(hidden, state.size, row_of, survivors.shape[1])
            state.origin = state.origin.gather(1, survivors)
            state.slot = row_of.gather(1, state.slot)
            state.plan = None
            if feature:
                self.result = (state.slot.detach().cpu(), state.origin.detach().cpu(), state.size.detach().cpu())
                merged = merged.gather(1, state.slot[..., None].expand(-1, -1, merged.shape[-1]))
            return (merged, *out[1:]) if isinstance(out, tuple) else merged

        return leave

    def clusters(self, layout) -> list[TowerClusters]:
        """Each sample's clusters from the last tower pass: a patch's cluster is the feature-layer row it went
        into, represented by the row's surviving patch. Where LLaVA-NeXT's unpadding cut that patch away,
        the cluster's first visible token (image order) represents it."""
        slot, origin, size = self.result
        crops, patches = slot.shape[0], slot.shape[1] - 1
        rows = slot[:, 1:]
        rep = (origin.gather(1, rows) - 1 + torch.arange(crops)[:, None] * patches).flatten()
        sizes = size.gather(1, rows).flatten().float()
        out = []
        for grid in layout.samples:
            patch = grid.patch.cpu()
            has = patch >= 0
            cluster = torch.where(has, rep[patch.clamp(min=0)], -1 - torch.arange(patch.numel()))
            token_of = {p: t for t, p in enumerate(patch.tolist()) if p >= 0}
            first: dict[int, int] = {}
            for t, c in enumerate(cluster.tolist()):
                first.setdefault(c, token_of.get(c, t))
            out.append(TowerClusters(torch.tensor([first[c] for c in cluster.tolist()], dtype=torch.long),
                                     torch.where(has, sizes[patch.clamp(min=0)], 1.0)))
        return out


@dataclass(frozen=True)
class Representatives(Reads):
    """Keeps each ToMe cluster's representative (and every token without a patch); the tower fixed the count."""

    name: str = "tome-representatives"
    needs_budget: bool = False

    def select(self, sample, k: int | None = None) -> torch.Tensor:
        own = sample.clusters.representative == torch.arange(sample.candidates.numel())
        return (sample.candidates & own).nonzero().flatten()


@dataclass(frozen=True)
class ToMe:
    """ToMe in the vision tower (acts_on "vision_tower": merged there already, recorded only). ``keep``: patches
    per crop reaching the projector, a count or a fraction of the patches per crop; ``proportional``:
    ToMe's proportional attention. ``merge`` records each token merged into a representative with weight
    1/cluster size (its share of the cluster's patches)."""

    keep: int | float = 64
    proportional: bool = True
    name: str = "tome"
    acts_on: str = "vision_tower"
    needs_keys: bool = False
    keys_layer: str = "feature"

    def __post_init__(self):
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)):
            raise ValueError(f"keep={self.keep!r}: must be a token count >= 1 or a fraction in (0, 1]")
        if isinstance(self.keep, int) and self.keep < 1:
            raise ValueError(f"keep={self.keep!r}: a token count must be >= 1")
        if isinstance(self.keep, float) and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep={self.keep!r} is outside the allowed range (0, 1] for a fraction")

    def merge(self, sample) -> MergeMap:
        representative, size = sample.clusters.representative, sample.clusters.size
        merged = sample.candidates & (representative != torch.arange(representative.numel()))
        sources = merged.nonzero().flatten()
        return MergeMap(representative[sources], sources, (1.0 / size[sources]).float())
