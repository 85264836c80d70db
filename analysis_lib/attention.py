"""Attention rows rebuilt from the q/k projections, so any attention backend (SDPA, flash) can run.

Hooks on a layer's q_proj/k_proj keep their outputs for one call; the rows are computed right after
the layer's attention ran and the tensors are dropped. Text→visual rows take the options of the
papers: query = last token or mean over instruction tokens; RoPE as applied, removed (FEATHER's φ-R)
or with every visual key at one shared position (VisPruner's "equi last attention"); softmax over
the whole causal row or over the visual keys only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import ModelAdapter
from .adapters.base import split_heads
from .adapters.calls import AttentionCall
from .hooks import HookSet
from .layout import stack_padded
from .tracking import SlotView
from .validation import check_choice

QUERIES = ("last", "instruction")
ROPES = ("applied", "removed", "equi")
SOFTMAXES = ("full", "visual")
VISION_KINDS = ("cls", "received", "given")


@dataclass(frozen=True)
class TextAttentionSpec:
    """Which text→visual attention to compute.

    ``rope="equi"`` rotates every visual key with the position of the sample's first visual token
    (the image start), so all visual tokens are equally far from the query; text keys keep theirs.
    """

    query: str = "last"
    rope: str = "applied"
    softmax: str = "full"

    def __post_init__(self):
        check_choice("query", self.query, QUERIES)
        check_choice("rope", self.rope, ROPES)
        check_choice("softmax", self.softmax, SOFTMAXES)

    @property
    def name(self) -> str:
        return f"{self.query}/{self.rope}/{self.softmax}"


def _query_slots(view: SlotView, query: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot indices [B, Q] of the query tokens and their validity [B, Q]."""
    batch, length = view.index.shape
    if query == "last":
        return (torch.full((batch, 1), length - 1, device=view.index.device),
                torch.ones(batch, 1, dtype=torch.bool, device=view.index.device))
    last_visual = torch.where(view.visual >= 0, view.index, -1).max(dim=1, keepdim=True).values
    is_query = (view.index > last_visual) & view.valid
    count = int(is_query.sum(dim=1).max())
    if count == 0:
        raise ValueError("query='instruction': no text token follows the image in some sample")
    order = torch.argsort((~is_query).to(torch.int8), dim=1, stable=True)[:, :count]
    return order, torch.gather(is_query, 1, order)


def text_visual_probs(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: SlotView,
                      adapter: ModelAdapter, spec: TextAttentionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention probabilities [B, heads, Q, S] of each of the spec's queries over the slots of ``view``,
    and which queries are real [B, Q] (samples with fewer instruction tokens are padded).

    ``q``/``k`` are the raw projection outputs [B, S, heads*dim]; (cos, sin) are what the layer applied.
    """
    geo = adapter.decoder_geometry()
    qh, kh = split_heads(q, geo.head_dim).float(), split_heads(k, geo.head_dim).float()
    cos, sin = cos.float(), sin.float()
    if spec.rope != "removed":
        q_rot, k_rot = adapter.apply_rotary(qh, kh, cos, sin)
        if spec.rope == "equi":
            first = torch.where(view.visual >= 0, torch.arange(view.length, device=q.device), view.length)
            first = first.min(dim=1).values.clamp(max=view.length - 1)
            rows = torch.arange(cos.shape[0], device=q.device)
            cos0 = cos[rows, first][:, None].expand_as(cos)
            sin0 = sin[rows, first][:, None].expand_as(sin)
            _, k_equi = adapter.apply_rotary(qh, kh, cos0, sin0)
            k_rot = torch.where((view.visual >= 0)[:, None, :, None], k_equi, k_rot)
        qh, kh = q_rot, k_rot
    slots, q_valid = _query_slots(view, spec.query)
    q_sel = torch.gather(qh, 2, slots[:, None, :, None].expand(-1, qh.shape[1], -1, qh.shape[-1]))
    kh = kh.repeat_interleave(geo.num_heads // geo.num_kv_heads, dim=1)
    logits = torch.matmul(q_sel, kh.transpose(-1, -2)) * geo.scaling  # [B, H, Q, S]
    q_index = torch.gather(view.index, 1, slots)
    allowed = view.valid[:, None, :] & (view.index[:, None, :] <= q_index[:, :, None])
    if spec.softmax == "visual":
        allowed = allowed & (view.visual >= 0)[:, None, :]
    return torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), dim=-1), q_valid


def text_visual_rows(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: SlotView,
                     adapter: ModelAdapter, spec: TextAttentionSpec) -> torch.Tensor:
    """Attention probabilities [B, heads, S] from the spec's query (the mean over its query tokens) over the
    slots of ``view`` (see ``text_visual_probs``)."""
    probs, q_valid = text_visual_probs(q, k, cos, sin, view, adapter, spec)
    weights = q_valid[:, None, :, None].float()
    return (probs * weights).sum(2) / weights.sum(2)


def rows_to_visual(rows: torch.Tensor, view: SlotView, num_visual: int) -> torch.Tensor:
    """Slot rows [B, H, S] -> [B, H, num_visual] over original visual tokens (NaN where absent)."""
    batch, heads, _ = rows.shape
    out = torch.full((batch, heads, num_visual + 1), float("nan"), device=rows.device)
    target = torch.where(view.visual >= 0, view.visual, num_visual)
    out.scatter_(2, target[:, None, :].expand(-1, heads, -1), rows)
    return out[:, :, :num_visual]


@dataclass
class VisionRows:
    """Per vision-tower layer, per encoder crop (Qwen: per image), per head, over the crop's visual tokens
    ([CLS] excluded; NaN-padded where crops differ in size): the [CLS]→patch row; ``received``: mean
    attention each patch receives from the patch queries (column means of the patch×patch block);
    ``given``: mean attention each patch gives to the patch keys (row means; FoPru's s1, ``received`` is its
    s2); optional head-mean map. A visual token made of several patches (Qwen's 2×2 merged cells) gets the
    mean over its patches. ``cls_joint``: the [CLS] row of one softmax over all heads' q·k together, scaled
    by 1/sqrt(width) (how PruMerge's official code computes [CLS] attention), as a single "head"."""

    cls: torch.Tensor | None  # [crops, H, P]
    received: torch.Tensor  # [crops, H, P]
    given: torch.Tensor  # [crops, H, P]
    map: torch.Tensor | None  # [crops, T, T] head-mean
    cls_joint: torch.Tensor | None = None  # [crops, 1, P]


def patches_to_tokens(values: torch.Tensor, layout) -> list[torch.Tensor]:
    """Per-patch values [crops, P, ...] mapped onto each sample's visual tokens ([N_b, ...]); tokens
    without a patch (LLaVA-NeXT's newlines) get NaN."""
    flat = values.flatten(0, 1).float()
    out = []
    for grid in layout.samples:
        patch = grid.patch.to(flat.device)
        picked = flat[patch.clamp(min=0)]
        missing = (patch < 0).reshape(-1, *([1] * (flat.dim() - 1)))
        out.append(picked.masked_fill(missing, float("nan")))
    return out


def vision_per_token(rows: torch.Tensor, layout) -> list[torch.Tensor]:
    """Head-mean vision rows [crops, H, P] mapped onto each sample's visual tokens (NaN for tokens without a
    patch, such as LLaVA-NeXT's newlines)."""
    return patches_to_tokens(rows.mean(dim=1), layout)


def vision_rows(q: torch.Tensor, k: torch.Tensor, call: AttentionCall, adapter: ModelAdapter, geometry,
                with_map: bool) -> VisionRows:
    """Self-attention of one vision layer, from its q/k projections, reduced to what analyses need."""
    maps = adapter.vision_attention_maps(q, k, call, geometry)
    first = 1 if adapter.has_cls else 0
    blocks = [m[:, first:, first:] for m in maps]
    pooled = adapter.pool_patches
    cls = stack_padded([pooled(m[:, 0, 1:]) for m in maps], 1) if adapter.has_cls else None
    if with_map and len({m.shape[-1] for m in maps}) > 1:
        raise ValueError("vision_maps=True: the images of this batch differ in size; capture one image at a time")
    return VisionRows(cls=cls,
                      received=stack_padded([pooled(b.mean(dim=1)) for b in blocks], 1),
                      given=stack_padded([pooled(b.mean(dim=2)) for b in blocks], 1),
                      map=torch.stack([m.mean(dim=0) for m in maps]) if with_map else None,
                      cls_joint=_joint_cls_row(q, k)[:, None] if adapter.has_cls else None)


def _joint_cls_row(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[crops, P]: softmax over all tokens of the [CLS] query against every key, all heads as one, without [CLS]."""
    q, k = q.float(), k.float()
    logits = (q[:, :1] @ k.transpose(-1, -2))[:, 0] * q.shape[-1] ** -0.5
    return torch.softmax(logits, dim=-1)[:, 1:]


def vision_features(hidden: torch.Tensor, adapter: ModelAdapter, geometry) -> torch.Tensor:
    """The features the projector reads for each visual token, at the feature layer: [crops, P, C]."""
    return adapter.vision_token_features(hidden, geometry)


def watch_output(hooks: HookSet, module: nn.Module, on_output: Callable[[torch.Tensor], None]) -> None:
    """Call ``on_output(hidden)`` with the first output of ``module`` after every call."""
    def hook(_m, _a, _k, out):
        on_output(out[0] if isinstance(out, tuple) else out)
    hooks.post(module, hook)


def watch_qk(hooks: HookSet, adapter: ModelAdapter, attention: nn.Module, armed: Callable[[], bool],
             on_rows: Callable[[torch.Tensor, torch.Tensor, AttentionCall], None]) -> None:
    """Call ``on_rows(q, k, call)`` after ``attention`` ran, while ``armed()`` is true; ``q``/``k`` are the
    raw projection outputs (both the fused qkv output where the block has one), ``call`` the block's call
    (its (cos, sin), its attention segments)."""
    store: dict = {}
    q_proj, k_proj = adapter.qk_projections(attention)

    def keep(name):
        def hook(_m, _a, _k, out):
            if armed():
                store[name] = out
        return hook

    def before(_m, args, kwargs):
        store.clear()
        store["call"] = adapter.attention_call(args, kwargs)

    def after(_m, _a, _k, _out):
        if "q" in store:
            on_rows(store.pop("q"), store.pop("k"), store.pop("call"))
        store.clear()

    hooks.pre(attention, before)
    hooks.post(q_proj, keep("q"))
    hooks.post(k_proj, keep("k"))
    hooks.post(attention, after)
