"""Pruning methods compared at matched budgets (FEATHER Fig. 5 and Fig. 8; VisPruner Table 1; FoPru Table 2).

Matching: for each kept fraction f a method gets the parameters below (``matched_settings``).

- ``fastv`` keeps f after layer K = 2 of 32 (VisPruner's FastV setting; "retain N tokens" in VisPruner
  Table 1). Its theoretical FLOPs reduction is the **reference** of the multi-stage methods.
- ``pyramiddrop`` (λ) and ``feather`` (R) keep their paper layers (8/16/24 and 8/16 of 32, scaled by
  depth) and solve their one ratio so that their theoretical FLOPs reduction (eq. 1 on the model's own
  dims and grid, kept counts from ``nominal_kept``) equals FastV's: FEATHER Fig. 5 compares at comparable
  FLOPs. On a shallow model the first stage sits late relative to FastV's, so the target can be out of
  reach; the most aggressive setting is then used and the budget table says ``matched=False``. A setting
  that reaches the FLOPs only by keeping a single token or none after its last stage (``final_kept``)
  counts as not matched too: it gets there by discarding the image, which says nothing about the method.
- ``fopru``, ``fopru_row`` (FoPru with strategy=row), ``vispruner`` and ``random`` keep f before the LLM, and
  so do ``prumerge`` and ``prumerge_plus`` with ``keep=f`` (their official non-adaptive branch; FoPru Table 2).
- ``fopru_fastv`` splits f as FoPru Table 2 does: each stage keeps √f, so f remain after FastV's layer.

So single-stage methods keep the same share of visual tokens, and the in-LLM multi-stage ones the same
FLOPs as FastV; the measured per-sample ``flops_reduction`` of every setting goes in the budget table and
is the x-axis of the accuracy figure. Accuracy is the mean per-sample score (localization: IoU ≥ 0.5).

Two comparisons that a shallow model does not distort stand next to it (arms of ``study``):

- **the papers' own settings** (``paper_arms``): each method as published, its layers as fractions of the
  papers' 32 (so each keeps its relative depth) and its token counts as fractions of LLaVA-1.5's 576;
  PruMerge and PruMerge+ keep their adaptive counts (measured per sample);
- **matched kept-token counts** (``count_arms``; VisPruner Table 1): every method keeps the same number of
  visual tokens after its last stage, its one budget parameter solved on the nominal counts (``COUNT_RULES``;
  ``DIRECT_COUNTS`` take the count itself). Whole rows (FoPru row) and FEATHER's union with a grid cannot
  always hit a count exactly; ``count_table``'s ``same_count`` says, from the rows' real counts, whether
  every sample did. SparseVLM counts its budget as its paper and Table 1 do, the mean visual tokens over the
  layers (``LAYER_MEAN_COUNTS``): it keeps fewer after its last stage, and ``same_count`` compares its rows
  with that nominal last count. ToMe merges at most half the tokens of each tower layer: below what a shallow
  tower reaches (``fewest_kept``) it keeps the fewest it can, and ``same_count`` says so.
"""
from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.patches import Rectangle

from ..evaluation.datasets import EvalSample
from ..evaluation.runner import NO_PRUNING, EvalModel, MethodSetting, prompt_inputs
from ..flops import LMDims, schedule_flops
from ..pruning import METHODS, get_method, nominal_kept
from ..pruning.tower_merging import TOWER_FAMILIES, max_reduction
from ..figures import draw_intervals, reference_band
from ..stats import Interval, describe
from ..validation import check_choice, check_range
from . import study
from .study import ALL, LOCALIZATION, OTHER, UNPRUNED

LAYER_PARAMETERS = ("K", "K1", "K2", "K3")
MATCH_TOLERANCE = 0.01  # |nominal - target| FLOPs reduction counted as matched
MIN_FINAL_KEPT = 2  # fewer visual tokens left after the last stage is a degenerate match
# Notebook names that are a registry method with fixed parameters.
VARIANTS: dict[str, tuple[str, dict]] = {"fopru_row": ("fopru", {"strategy": "row"})}


@dataclass(frozen=True)
class Geometry:
    """What a schedule's theoretical FLOPs depend on: the LM's shapes, the visual grid, the text tokens."""

    dims: LMDims
    grid: tuple[int, int]
    n_text: int
    same_tokens: bool = True  # every prompt has the grid's visual tokens (False: LLaVA-NeXT's varying crops)
    tower_layers: int | None = None  # vision-tower layers up to the one the projector reads (ToMe merges in them)

    @property
    def n_visual(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class Budgeted:
    """One method at one kept fraction: its setting, the FLOPs reduction aimed at (FastV's; NaN for the
    methods budgeted by kept share) and the one its parameters give in theory."""

    name: str
    keep_fraction: float
    setting: MethodSetting
    rule: str
    target_reduction: float
    nominal_reduction: float
    layers: tuple[int, ...] = ()
    final_kept: int | None = None  # nominal visual tokens left after the last stage

    @property
    def matched(self) -> bool:
        """False when a FLOPs target was out of reach (the most aggressive setting was used), or reached
        only by keeping fewer than ``MIN_FINAL_KEPT`` tokens."""
        if math.isnan(self.target_reduction):
            return True
        degenerate = self.final_kept is not None and self.final_kept < MIN_FINAL_KEPT
        return abs(self.nominal_reduction - self.target_reduction) <= MATCH_TOLERANCE and not degenerate


def geometry(em: EvalModel, samples: Sequence[EvalSample], batch_size: int = 8) -> Geometry:
    """The model's LM dims, the grid of its first visual segment (LLaVA-1.5's grid; LLaVA-NeXT's base
    image, which then stands in for all crops) and the mean number of non-visual tokens of the prompts."""
    n_text, grid, counts = [], None, set()
    for start in range(0, len(samples), batch_size):
        inputs = prompt_inputs(em, samples[start:start + batch_size])
        layout = em.adapter.inputs_layout(inputs)
        lengths = em.adapter.token_counts(inputs)
        n_text += [length - n for length, n in zip(lengths, layout.counts())]
        counts.update(layout.counts())
        segment = layout.samples[0].segments[0]
        grid = grid or (segment.rows, segment.cols)
    geo = Geometry(LMDims.from_config(em.model.config), grid, round(float(np.mean(n_text))))
    tower = em.adapter.vision_feature_encoder_layer + 1 if em.adapter.family in TOWER_FAMILIES else None
    return replace(geo, same_tokens=counts == {geo.n_visual}, tower_layers=tower)


def final_kept(setting: MethodSetting, geo: Geometry) -> int:
    """Nominal visual tokens ``setting`` keeps after its last stage on the model's grid (all when unpruned)."""
    schedule = setting.schedule()
    stages = nominal_kept(schedule, geo.dims.layers, geo.grid) if schedule else []
    return stages[-1][1] if stages else geo.n_visual


def _layers(setting: MethodSetting, depth: int) -> list[int]:
    """The model layers the setting's stages prune at (none when unpruned)."""
    schedule = setting.schedule()
    return [layer for layer, _ in schedule.resolve(depth)] if schedule else []


def nominal_reduction(setting: MethodSetting, geo: Geometry) -> float:
    """Theoretical prefill FLOPs reduction (eq. 1) of ``setting`` on the model's dims and grid."""
    schedule = setting.schedule()
    if schedule is None:
        return 0.0
    stages = nominal_kept(schedule, geo.dims.layers, geo.grid)
    return schedule_flops(geo.dims, geo.n_visual, geo.n_text, stages).reduction


def _bracket(value_of: Callable[[float], float], target: float, low: float, high: float,
             steps: int) -> tuple[float, float]:
    """(lo, hi): the last bisection interval in which a monotone ``value_of`` crosses ``target``."""
    increasing = value_of(high) >= value_of(low)
    lo, hi = low, high
    for _ in range(steps):
        mid = (lo + hi) / 2
        if (value_of(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return lo, hi


def solve(reduction_of: Callable[[float], float], target: float, low: float, high: float,
          steps: int = 16, digits: int = 3) -> float:
    """The parameter in [low, high] (rounded to ``digits``) whose reduction is closest to ``target``, by
    bisection on a monotone ``reduction_of``; an endpoint when the target is out of reach."""
    lo, hi = _bracket(reduction_of, target, low, high, steps)
    candidates = {round(x, digits) for x in (low, high, lo, hi)}
    candidates = {min(max(x, low), high) for x in candidates}
    return min(sorted(candidates), key=lambda x: abs(reduction_of(x) - target))


def paper_layers(method: str, paper_depth: int) -> dict[str, float]:
    """The method's default layers (given for a ``paper_depth``-layer model) as fractions of depth; 0
    (before the LLM) stays 0."""
    defaults = get_method(method).parameters
    return {k: defaults[k] / paper_depth for k in LAYER_PARAMETERS
            if isinstance(defaults.get(k), int) and defaults[k] > 0}


def _setting(name: str, paper_depth: int, **params) -> MethodSetting:
    method, fixed = VARIANTS.get(name, (name, {}))
    full = {**paper_layers(method, paper_depth), **fixed, **params}
    get_method(method).schedule(**full)  # bad parameters fail here
    return MethodSetting(method, full)


def _ratio(value: float) -> float:
    return round(value, 4)


def _keep(f: float) -> dict:
    return {"keep": f}


# name -> (rule, parameters for a kept fraction f); "solve" rules get their ratio from ``solve``.
FIXED_RULES: dict[str, tuple[str, Callable[[float], dict]]] = {
    "fastv": ("keeps f after layer K=2/32 (FLOPs reference)", lambda f: {"R": _ratio(1 - f)}),
    "fopru": ("keeps f before the LLM", lambda f: {"R": _ratio(1 - f)}),
    "fopru_row": ("keeps f before the LLM (whole rows)", lambda f: {"R": _ratio(1 - f)}),
    "vispruner": ("keeps f before the LLM", _keep),
    "prumerge": ("keeps f before the LLM (non-adaptive), merging the rest", _keep),
    "prumerge_plus": ("keeps f before the LLM (non-adaptive), merging the rest", _keep),
    "random": ("keeps f before the LLM", lambda f: {"R": _ratio(1 - f)}),
    "fopru_fastv": ("keeps √f before the LLM, then √f of those after K=2/32",
                    lambda f: {"R": _ratio(1 - math.sqrt(f)), "R_llm": _ratio(1 - math.sqrt(f))}),
}
# name -> (parameter, low, high) solved to FastV's FLOPs reduction.
SOLVED_RULES: dict[str, tuple[str, float, float]] = {"pyramiddrop": ("lam", 0.01, 1.0), "feather": ("R", 0.0, 0.99)}
SUPPORTED = (*FIXED_RULES, *SOLVED_RULES)


def matched_settings(methods: Sequence[str], keep_fractions: Sequence[float], geo: Geometry,
                     paper_depth: int = 32) -> list[Budgeted]:
    """Every method at every kept fraction with its matched parameters (see the module docstring), in
    the order given, preceded by the unpruned model."""
    for name in methods:
        check_choice("method", name, SUPPORTED)
    plan = [Budgeted(UNPRUNED, 1.0, MethodSetting(NO_PRUNING), "unpruned", math.nan, 0.0)]
    depth = geo.dims.layers
    for f in keep_fractions:
        check_range("keep fraction", f, 0.0, 1.0, low_open=True, high_open=True)
        reference = nominal_reduction(_setting("fastv", paper_depth, R=_ratio(1 - f)), geo)
        for name in methods:
            target = reference if name in SOLVED_RULES or name == "fastv" else math.nan
            if name in SOLVED_RULES:
                parameter, low, high = SOLVED_RULES[name]

                def reduction_of(value: float, name=name, parameter=parameter) -> float:
                    return nominal_reduction(_setting(name, paper_depth, **{parameter: value}), geo)
                setting = _setting(name, paper_depth, **{parameter: solve(reduction_of, reference, low, high)})
                rule = f"{parameter} solved to FastV's FLOPs reduction"
            else:
                rule, params = FIXED_RULES[name]
                setting = _setting(name, paper_depth, **params(f))
            plan.append(Budgeted(name, f, setting, rule, target, nominal_reduction(setting, geo),
                                 tuple(_layers(setting, depth)), final_kept(setting, geo)))
    return plan


def plan_frame(plan: Sequence[Budgeted]) -> pd.DataFrame:
    """The plan as a table: name, kept fraction, registry setting, the model layers its stages prune at,
    rule, target and nominal reduction, matched."""
    return pd.DataFrame([{"name": b.name, "keep_fraction": b.keep_fraction, "setting": b.setting.label,
                          "params": json.dumps(b.setting.params, sort_keys=True), "layers": list(b.layers),
                          "rule": b.rule,
                          "target_reduction": b.target_reduction, "nominal_reduction": b.nominal_reduction,
                          "final_kept": b.final_kept, "matched": b.matched} for b in plan])


def plan_arms(plan: Sequence[Budgeted]) -> list[study.Arm]:
    """The plan as study arms (``evaluate_arms`` runs them): its names with their kept fractions and ``matched``
    as coordinates (a setting two entries share is run once)."""
    return [study.Arm(b.name, b.setting, {"keep_fraction": b.keep_fraction, "matched": b.matched}) for b in plan]


def accuracy_table(rows: pd.DataFrame, by: str = "family") -> pd.DataFrame:
    """Per method × kept fraction × family (localization, other tasks, all tasks) or task (``by="task_name"``):
    accuracy with its 95% interval, samples, share of the relevant tokens kept, mean measured FLOPs
    reduction, and whether the method's budget was matched. Methods stay in the plan's order."""
    check_choice("by", by, ("family", "task_name"))
    table = study.accuracy_table(rows, ["name", "keep_fraction", "matched"], by)
    columns = ["name", "keep_fraction", by, "accuracy", "ci_low", "ci_high", "samples", "relevant_kept",
               "flops_reduction", "matched"]
    return table[columns]


def versus(rows: pd.DataFrame, reference: str, at: str) -> pd.DataFrame:
    """Per level of the budget column ``at``, method (``name``) other than ``reference`` and family: its
    accuracy minus ``reference``'s at the same level on the same samples, with the 95% paired-bootstrap
    interval and ``excludes_zero`` (levels without the reference are left out)."""
    out = []
    for _, part in rows[rows.name != UNPRUNED].groupby(at, sort=False):
        base = part[part.name == reference]
        if len(base):
            out.append(study.differences(part[part.name != reference], base, ["name", at], "family"))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def budget_table(plan: Sequence[Budgeted], rows: pd.DataFrame) -> pd.DataFrame:
    """The plan with the mean measured FLOPs reduction and mean kept tokens per stage of its rows."""
    measured = rows.groupby(["name", "keep_fraction"], sort=False).agg(
        flops_reduction=("flops_reduction", "mean"), kept_per_stage=("kept_counts", _mean_counts))
    return plan_frame(plan).merge(measured.reset_index(), on=["name", "keep_fraction"])


def _mean_counts(counts: pd.Series) -> list[float]:
    """Mean kept tokens per stage over rows of one setting (lists of equal length)."""
    return [round(float(np.mean(stage)), 1) for stage in zip(*counts)]


# The papers' own settings, scaled by depth (and by token count).
PAPER_TOKENS = 576  # LLaVA-1.5's visual tokens: the papers' token counts are of this many
COUNT_PARAMETERS = ("keep",)  # parameters that may be a token count (scaled to a fraction of PAPER_TOKENS)
# Published settings that are not a registry method's defaults: name -> (registry method, parameters), layers of
# the papers' 32-layer model. Any other name is the registry method (or a VARIANTS entry) at its defaults,
# which are its paper's.
PAPER_SETTINGS: dict[str, tuple[str, dict]] = {
    "fastv_feather": ("fastv", {"K": 3, "R": 0.75}),  # FastV as FEATHER runs it (φ_original, Table 1, Fig. 5)
}


def paper_names() -> tuple[str, ...]:
    """Every name ``paper_setting`` knows: the registry's methods, the variants and ``PAPER_SETTINGS``."""
    return (*METHODS, *VARIANTS, *PAPER_SETTINGS)


def published(name: str) -> tuple[str, dict]:
    """The registry method of ``name`` and its published parameters (registry defaults, then the setting's
    own), as the paper gives them: layers of a 32-layer model, counts of ``PAPER_TOKENS``."""
    check_choice("paper setting", name, paper_names())
    method, fixed = PAPER_SETTINGS.get(name) or VARIANTS.get(name, (name, {}))
    defaults = {k: v for k, v in get_method(method).parameters.items() if k != "scope"}
    return method, {**defaults, **fixed}


def paper_setting(name: str, paper_depth: int = 32, paper_tokens: int = PAPER_TOKENS) -> MethodSetting:
    """``name``'s published setting with its layers as fractions of ``paper_depth`` (PyramidDrop's 8/16/24 of 32
    are layers 2/3/5 of 6) and its token counts as fractions of ``paper_tokens`` (VisPruner's 64 of 576 keeps
    1/9 of any grid; 0, PruMerge's adaptive count, stays); the other parameters as published."""
    method, params = published(name)
    defaults = get_method(method).parameters
    scaled = {}
    for key, value in params.items():
        if key in LAYER_PARAMETERS and isinstance(value, int) and value > 0:
            scaled[key] = value / paper_depth
        elif key in COUNT_PARAMETERS and isinstance(value, int) and not isinstance(value, bool) and value > 0:
            scaled[key] = value / paper_tokens
        elif value != defaults[key]:
            scaled[key] = value
    get_method(method).schedule(**scaled)  # a count above paper_tokens fails here
    return MethodSetting(method, scaled)


def _unique(kind: str, names: Sequence) -> None:
    repeated = sorted({str(n) for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"{kind}: {', '.join(repeated)} given more than once")


def paper_arms(names: Sequence[str], paper_depth: int = 32, paper_tokens: int = PAPER_TOKENS) -> list[study.Arm]:
    """The unpruned model, then each named setting as published (``paper_setting``)."""
    _unique("paper settings", names)
    return [study.unpruned_arm()] + [study.Arm(n, paper_setting(n, paper_depth, paper_tokens)) for n in names]


def arm_frame(arms: Sequence[study.Arm], depth: int) -> pd.DataFrame:
    """Per arm: its name, coordinates, registry setting, parameters (JSON) and the model layers it prunes at."""
    return pd.DataFrame([{"name": a.name, **a.coords, "setting": a.setting.label,
                          "params": json.dumps(a.setting.params, sort_keys=True),
                          "layers": _layers(a.setting, depth)} for a in arms])


def evaluate_arms(em: EvalModel, samples: list[EvalSample], arms: Sequence[study.Arm], out: str | Path,
                  batch_size: int = 8, dataset: str = "synthetic", store: str | Path | None = None) -> pd.DataFrame:
    """The study's tidy rows of every arm (``study.run``, resumable under ``out`` or ``store``), the arm's name
    as ``name``."""
    return study.run(em, [(dataset, samples)], arms, out, batch_size, store).rename(columns={"arm": "name"})


MEASURED = ["accuracy", "ci_low", "ci_high", "samples", "flops_reduction", "kept_tokens"]


def _with_tower(table: pd.DataFrame, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``table`` with each setting's vision-tower FLOPs reduction (``tower_flops_reduction``: nonzero for ToMe,
    which merges inside the tower; eq. 1's ``flops_reduction`` counts the language model only)."""
    tower = rows.groupby(keys, sort=False).tower_flops_reduction.mean().reset_index()
    return table.merge(tower, on=keys, how="left")


def _flops(row) -> str:
    """A setting's measured FLOPs reduction, with the vision tower's where it has one."""
    tower = f" (vision tower {row.tower_flops_reduction:.0%})" if row.tower_flops_reduction > 0 else ""
    return f"{row.flops_reduction:.0%}{tower}"


def paper_table(rows: pd.DataFrame, arms: Sequence[study.Arm], depth: int) -> pd.DataFrame:
    """Per published setting and family: accuracy with its 95% interval and samples, the mean measured FLOPs
    reduction (and the vision tower's, ``_with_tower``) and visual tokens kept after the last stage, the published
    parameters (``published``, JSON), the scaled setting and the model layers it prunes at."""
    table = _with_tower(study.accuracy_table(rows, ["name"], "family")[["name", "family", *MEASURED]], rows, ["name"])
    settings = arm_frame(arms, depth)
    settings.insert(1, "published", [json.dumps(published(n)[1]) if n != UNPRUNED else "{}" for n in settings.name])
    return table.merge(settings, on="name", how="left")


# Matched kept-token counts: name -> (parameter, low, high) solved so that the last stage keeps the count; the
# other parameters are those of the kept fraction count / tokens (FIXED_RULES), the layers the paper's.
COUNT_RULES: dict[str, tuple[str, float, float]] = {
    "fastv": ("R", 0.0, 0.999), "fopru": ("R", 0.0, 0.999), "fopru_row": ("R", 0.0, 0.999),
    "random": ("R", 0.0, 0.999), "fopru_fastv": ("R_llm", 0.0, 0.999), "pyramiddrop": ("lam", 0.01, 1.0),
    "feather": ("R", 0.0, 0.99), "divprune": ("R", 0.0, 0.999), "dart": ("R", 0.0, 0.999)}
# name -> its parameter that takes the token count itself (exact on any grid, nothing to solve; a COUNT_PARAMETERS
# name, so its published count is scaled too).
DIRECT_COUNTS: dict[str, str] = {"vispruner": "keep", "visionzip": "keep", "prumerge": "keep", "prumerge_plus": "keep",
                                  "sparsevlm": "keep", "tome": "keep"}
COUNTED = (*COUNT_RULES, *DIRECT_COUNTS)  # the methods ``count_arms`` takes
# Methods whose count is the mean visual tokens over the layers (their paper's unit, as Table 1 uses it), not the
# count after their last stage.
LAYER_MEAN_COUNTS = ("sparsevlm",)



def solve_count(count_of: Callable[[float], float], n: int, low: float, high: float, steps: int = 24,
                digits: int = 6) -> float:
    """The parameter in [low, high] in the middle of the range where a monotone ``count_of`` gives ``n``
    (rounded to ``digits``, which keeps it inside), or the one whose count is closest to ``n`` when none
    gives it (whole rows, say: the ends of the jump over ``n``, unrounded)."""
    first = _bracket(count_of, n - 0.5, low, high, steps)
    last = _bracket(count_of, n + 0.5, low, high, steps)
    candidates = [round((sum(first) + sum(last)) / 4, digits), *first, *last, low, high]
    return min(candidates, key=lambda x: abs(count_of(x) - n))


def count_arms(methods: Sequence[str], counts: Sequence[int], geo: Geometry, paper_depth: int = 32,
               paper_tokens: int = PAPER_TOKENS) -> list[study.Arm]:
    """The unpruned model, then every method keeping each of ``counts`` (of ``paper_tokens``, scaled to the
    model's visual tokens) after its last stage: its ``COUNT_RULES`` parameter solved on the nominal counts.
    Coordinates: ``kept_count`` (of the model's tokens), ``paper_count`` and ``nominal_kept``."""
    for name in methods:
        check_choice("method", name, COUNTED)
    _unique("methods", methods)
    _unique("kept counts", counts)
    everything = {"kept_count": geo.n_visual, "paper_count": paper_tokens, "nominal_kept": geo.n_visual}
    arms = [study.Arm(UNPRUNED, MethodSetting(NO_PRUNING), everything)]
    for paper_count in counts:
        if isinstance(paper_count, bool) or not isinstance(paper_count, int) or not 1 <= paper_count < paper_tokens:
            raise ValueError(f"kept count {paper_count!r}: a token count of the paper's {paper_tokens}, in "
                             f"1..{paper_tokens - 1}")
        n = max(1, round(paper_count * geo.n_visual / paper_tokens))
        for name in methods:
            setting, nominal = _count_setting(name, n, paper_count / paper_tokens, geo, paper_depth)
            coords = {"kept_count": n, "paper_count": paper_count, "nominal_kept": nominal}
            arms.append(study.Arm(name, setting, coords))
    return arms


def _count_setting(name: str, n: int, fraction: float, geo: Geometry, paper_depth: int
                   ) -> tuple[MethodSetting, int]:
    """``name`` keeping ``n`` visual tokens (``fraction`` of the paper's) after its last stage, and what it keeps
    in theory. A ``DIRECT_COUNTS`` method takes the paper's fraction where that keeps exactly ``n`` of every
    prompt: the same setting as its published one (``paper_setting``), so the run store runs it once."""
    if name in DIRECT_COUNTS:
        fewest = fewest_kept(name, geo)
        if n < fewest:  # out of reach: the closest count it can keep (``same_count`` then says so)
            setting = _setting(name, paper_depth, **{DIRECT_COUNTS[name]: fewest})
            return setting, final_kept(setting, geo)
        exact = geo.same_tokens and max(1, math.floor(fraction * geo.n_visual + 1e-9)) == n
        setting = _setting(name, paper_depth, **{DIRECT_COUNTS[name]: fraction if exact else n})
        return setting, final_kept(setting, geo)
    parameter, low, high = COUNT_RULES[name]
    base = FIXED_RULES[name][1](n / geo.n_visual) if name in FIXED_RULES else {}

    def count_of(value: float) -> int:
        return final_kept(_setting(name, paper_depth, **{**base, parameter: value}), geo)
    value = solve_count(count_of, n, low, high)
    return _setting(name, paper_depth, **{**base, parameter: value}), count_of(value)


def fewest_kept(name: str, geo: Geometry) -> int:
    """The fewest visual tokens ``name`` can keep on this model: ToMe merges at most half the tokens of each
    tower layer, so a shallow tower (the embedded model's 3 merging layers: 18 of 144 patches) cannot go lower;
    1 for every other method."""
    if name != "tome" or geo.tower_layers is None:
        return 1
    return geo.n_visual - max_reduction(geo.n_visual + 1, geo.tower_layers)


def count_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method, kept count and family: accuracy with its 95% interval and samples, the mean measured FLOPs
    reduction (and the vision tower's, ``_with_tower``) and tokens kept after the last stage, and ``same_count``: every sample kept exactly
    ``kept_count`` (the rows' real kept counts; for ``LAYER_MEAN_COUNTS`` methods, their nominal last count)."""
    keys = ["name", "kept_count"]
    table = _with_tower(study.accuracy_table(rows, keys, "family")[[*keys, "family", *MEASURED]], rows, keys)
    expected = rows.kept_count.where(~rows.name.isin(LAYER_MEAN_COUNTS), rows.nominal_kept)
    same = rows.assign(same_count=rows.kept_tokens == expected).groupby(keys, sort=False).same_count.all()
    coords = rows.drop_duplicates(keys)[[*keys, "paper_count", "nominal_kept"]]
    return table.merge(same.reset_index(), on=keys).merge(coords, on=keys)


def paper_shape(table: pd.DataFrame, budget: str) -> pd.DataFrame:
    """A paper table's shape from ``accuracy_table`` or ``count_table``: a row per method (in order), a column
    per family (localization, other tasks) × level of ``budget`` (``keep_fraction``: FoPru Table 2's retention;
    ``paper_count``: VisPruner Table 1's tokens of 576), each cell the accuracy with its 95% interval."""
    part = table[table.family.isin([LOCALIZATION, OTHER])]
    cells = part.assign(cell=[f"{r.accuracy:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" for r in part.itertuples()])
    shaped = cells.pivot(index="name", columns=["family", budget], values="cell")
    return shaped.reindex(index=list(dict.fromkeys(part.name)),
                          columns=list(dict.fromkeys(zip(part.family, part[budget])))).fillna("")


def palette(names: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per method (plan order), grey for the unpruned model."""
    methods = [n for n in dict.fromkeys(names) if n != UNPRUNED]
    return {UNPRUNED: (0.4, 0.4, 0.4), **dict(zip(methods, sns.color_palette("tab10", len(methods))))}


def accuracy_figure(by_family: pd.DataFrame) -> plt.Figure:
    """Accuracy on localization and on the other tasks (95% intervals), and the share of relevant tokens
    kept, against the measured FLOPs reduction; one line per method, the unpruned model dashed over its
    interval (FEATHER Fig. 5). A method whose budget could not be matched at the model's depth is left out
    of the plot and named under it."""
    colours = palette(by_family.name)
    panels = [(LOCALIZATION, "accuracy", "localization (IoU ≥ 0.5)"), (OTHER, "accuracy", "other tasks"),
              (LOCALIZATION, "relevant_kept", "relevant tokens kept (localization)")]
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 2.7))
    for ax, (fam, column, title) in zip(axes, panels):
        part = by_family[by_family.family == fam]
        base = part[part.name == UNPRUNED]
        if len(base) and column == "accuracy":
            reference_band(ax, base.iloc[0], colours[UNPRUNED], "unpruned")
        for name, line in part[(part.name != UNPRUNED) & part.matched].groupby("name", sort=False):
            line = line.sort_values("flops_reduction")
            if column == "accuracy":
                draw_intervals(ax, line.flops_reduction, line, marker="o", ms=3, lw=1, color=colours[name], label=name)
            else:
                ax.plot(line.flops_reduction, line[column], marker="o", ms=3, lw=1, color=colours[name], label=name)
        ax.set_title(title)
        ax.set_xlabel("FLOPs reduction")
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("accuracy (95% interval)")
    axes[2].set_ylabel("share kept")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    unmatched = by_family[~by_family.matched & (by_family.family == LOCALIZATION)]
    note = _samples_note(by_family)
    if len(unmatched):
        note += (" Not plotted, FastV's FLOPs out of reach at this depth without keeping fewer than "
                 f"{MIN_FINAL_KEPT} tokens: "
                 + ", ".join(f"{r.name} at kept fraction {r.keep_fraction:g}" for r in unmatched.itertuples()) + ".")
    fig.text(0.01, -0.04, textwrap.fill(note, 150), fontsize=6, ha="left", va="top")
    fig.tight_layout()
    return fig


def _samples_note(table: pd.DataFrame) -> str:
    """The samples behind each point of a figure's localization and other-task panels."""
    counts = [f"{int(table[table.family == fam].samples.max())} {label}" for fam, label in
              ((LOCALIZATION, "localization"), (OTHER, "other-task")) if (table.family == fam).any()]
    return f"{' and '.join(counts)} samples per point."


def _point(ax: plt.Axes, x: float, row: pd.DataFrame, colour, label: str | None = None) -> None:
    draw_intervals(ax, [x], row, ls="none", marker="o", ms=3, color=colour, label=label)


def paper_figure(table: pd.DataFrame) -> plt.Figure:
    """The published settings side by side (``paper_table``): accuracy on localization and on the other tasks
    (95% intervals; the unpruned model dashed over its interval), and the FLOPs reduction each achieves, with
    the visual tokens it keeps after its last stage over its bar."""
    names = [n for n in dict.fromkeys(table.name) if n != UNPRUNED]
    colours = palette(table.name)
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 2.9))
    for ax, fam in zip(axes, (LOCALIZATION, OTHER)):
        part = table[table.family == fam].set_index("name", drop=False)
        if UNPRUNED in part.index:
            reference_band(ax, part.loc[UNPRUNED], colours[UNPRUNED], "unpruned")
        for x, name in enumerate(names):
            if name in part.index:
                _point(ax, x, part.loc[[name]], colours[name])
        ax.set_title("localization (IoU ≥ 0.5)" if fam == LOCALIZATION else fam)
        ax.set_ylim(-0.03, 1.03)
    overall = table[table.family == ALL].set_index("name").reindex(names)
    axes[2].bar(range(len(names)), overall.flops_reduction, color=[colours[n] for n in names])
    for x, kept in enumerate(overall.kept_tokens):
        axes[2].text(x, overall.flops_reduction.iloc[x] + 0.02, f"{kept:.0f}", ha="center", fontsize=5)
    axes[2].set_title("FLOPs reduction (tokens kept at the end)")
    axes[2].set_ylim(0, 1.1)
    for ax in axes:
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=6)
    axes[0].set_ylabel("accuracy (95% interval)")
    axes[0].legend(loc="lower left", frameon=False, fontsize=6)
    fig.text(0.01, -0.02, f"Each method at its paper's setting, layers scaled by depth; {_samples_note(table)}",
             fontsize=6, ha="left", va="top")
    fig.tight_layout()
    return fig


def count_figure(table: pd.DataFrame) -> plt.Figure:
    """Accuracy on localization and on the other tasks (95% intervals) at each matched kept-token count
    (``count_table``), one line per method (side by side), the unpruned model dashed over its interval
    (VisPruner Table 1's shape). Counts a method did not keep on every sample are named under it."""
    colours = palette(table.name)
    pruned = table[table.name != UNPRUNED]
    counts = sorted(set(pruned.kept_count), reverse=True)
    names = list(dict.fromkeys(pruned.name))
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.7))
    for ax, fam in zip(axes, (LOCALIZATION, OTHER)):
        base = table[(table.name == UNPRUNED) & (table.family == fam)]
        if len(base):
            reference_band(ax, base.iloc[0], colours[UNPRUNED], "unpruned")
        for i, name in enumerate(names):
            line = pruned[(pruned.name == name) & (pruned.family == fam)]
            x = [counts.index(c) + (i - (len(names) - 1) / 2) * 0.06 for c in line.kept_count]
            draw_intervals(ax, x, line, marker="o", ms=3, lw=1, color=colours[name], label=name)
        ax.set_xticks(range(len(counts)), [str(c) for c in counts])
        ax.set_xlabel("visual tokens kept after the last stage")
        ax.set_title("localization (IoU ≥ 0.5)" if fam == LOCALIZATION else fam)
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("accuracy (95% interval)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    varied = pruned[(pruned.family == ALL) & ~pruned.same_count]
    note = ("Every method keeps the same number of visual tokens after its last stage" + _layer_mean_note(pruned)
            + ". " + _samples_note(table))
    if len(varied):
        note += (" Not the same count on every sample: " + ", ".join(
            f"{r.name} at {r.kept_count} (mean {r.kept_tokens:.1f})" for r in varied.itertuples()) + ".")
    fig.text(0.01, -0.04, textwrap.fill(note, 120), fontsize=6, ha="left", va="top")
    fig.tight_layout()
    return fig


def _kept_mask(grid, kept: Sequence[int]) -> np.ndarray:
    """rows × cols booleans of the first segment's kept tokens."""
    segment = grid.segments[0]
    mask = np.zeros((segment.rows, segment.cols), dtype=bool)
    for cell in grid.records(torch.tensor(list(kept), dtype=torch.long)):
        if cell["segment"] == 0 and cell["row"] < segment.rows and cell["col"] < segment.cols:
            mask[cell["row"], cell["col"]] = True
    return mask


def example_samples(samples: Sequence[EvalSample], count: int) -> list[EvalSample]:
    """The first ``count`` localization samples (their target box is drawn)."""
    return [s for s in samples if s.task == LOCALIZATION and s.box is not None][:count]


def examples_figure(em: EvalModel, samples: Sequence[EvalSample], rows: pd.DataFrame, keep_fraction: float,
                    count: int = 4) -> plt.Figure:
    """The tokens each method keeps last (the ones the answer is read from) on ``count`` localization
    images at one kept fraction, one row per method, target box in red (FEATHER Fig. 8)."""
    chosen = example_samples(samples, count)
    if not chosen:
        raise ValueError("examples: no localization sample with a box among the samples")
    inputs = prompt_inputs(em, chosen)
    layout = em.adapter.inputs_layout(inputs)
    part = rows[np.isclose(rows.keep_fraction, keep_fraction) & (rows.name != UNPRUNED)]
    names = list(dict.fromkeys(part.name))
    fig, axes = plt.subplots(len(names), len(chosen), figsize=(1.35 * len(chosen) + 0.9, 1.35 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        by_id = part[part.name == name].set_index("sample_id")
        for j, sample in enumerate(chosen):
            ax = axes[i, j]
            row = by_id.loc[sample.sample_id]
            mask = _kept_mask(layout.samples[j], row.kept[-1])
            ax.imshow(sample.image, extent=(0, 1, 1, 0))
            shade = np.ones((*mask.shape, 4))
            shade[mask, 3] = 0.0
            shade[~mask, 3] = 0.75
            ax.imshow(shade, extent=(0, 1, 1, 0), interpolation="nearest")
            x1, y1, x2, y2 = sample.box
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1))
            ax.set_xlabel(f"{int(mask.sum())} kept, {row.relevant_kept:.0%} rel.", fontsize=5, labelpad=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(textwrap.fill(sample.question, 24), fontsize=5)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"Tokens kept last at kept fraction {keep_fraction:g}\n(pale: pruned; rel.: share of the "
                 "target's tokens kept)", fontsize=7)
    fig.tight_layout()
    return fig


def _ranking(part: pd.DataFrame, flag: str | None, note: str) -> str:
    ordered = part.sort_values("accuracy", ascending=False, kind="stable")
    return ", ".join(f"{r.name} {r.accuracy:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
                     + ("" if flag is None or getattr(r, flag) else f" ({note})") for r in ordered.itertuples())


def _difference(r) -> str:
    return f"{r.name} {describe(Interval(r.difference, r.ci_low, r.ci_high, r.samples, 'paired bootstrap'))}"


def _family_lines(at: pd.DataFrame, base: pd.DataFrame, diffs: pd.DataFrame, reference: str, indent: str,
                  flag: str | None = None, note: str = "") -> list[str]:
    """Per family: the ranking with 95% intervals (and the unpruned model's accuracy from ``base``, indexed
    by family), then each method minus ``reference`` on the same samples (``diffs``)."""
    lines = []
    for fam in (LOCALIZATION, OTHER):
        ranked = at[at.family == fam]
        if ranked.empty:
            continue
        ref = (f" (unpruned {base.accuracy[fam]:.2f} [{base.ci_low[fam]:.2f}, {base.ci_high[fam]:.2f}])"
               if fam in base.index else "")
        lines.append(f"{indent}- {fam}, accuracy over {int(ranked.samples.iloc[0])} samples{ref}: "
                     f"{_ranking(ranked, flag, note)}.")
        diff = diffs[diffs.family == fam] if len(diffs) else diffs
        if len(diff):
            lines.append(f"{indent}  minus {reference} on the same samples: "
                         + "; ".join(_difference(r) for r in diff.itertuples()) + ".")
    return lines


def summary(budget: pd.DataFrame, by_family: pd.DataFrame, versus: pd.DataFrame) -> str:
    """What the figures show, in numbers (markdown): the budgets (saying which could not be matched), and
    per budget the ranking on localization and on the other tasks with 95% intervals, and each method's
    difference from FastV on the same samples (``versus``)."""
    lines = []
    base = by_family[by_family.name == UNPRUNED].set_index("family")
    pruned = budget[budget.name != UNPRUNED]
    for f, part in pruned.groupby("keep_fraction", sort=False):
        fastv = part[part.name == "fastv"]
        target = f" (FastV's FLOPs reduction {fastv.nominal_reduction.iloc[0]:.0%})" if len(fastv) else ""
        solved = [f"{r.name} {SOLVED_RULES[r.name][0]}={json.loads(r.params)[SOLVED_RULES[r.name][0]]:g} (keeps "
                  + " → ".join(f"{k:g}" for k in r.kept_per_stage) + " tokens after layers "
                  + ", ".join(map(str, r.layers)) + ")"
                  + ("" if r.matched else f" — **not matched**: FastV's reduction is out of reach at its layers on "
                                          f"this depth without keeping fewer than {MIN_FINAL_KEPT} tokens (nominal "
                                          f"{r.nominal_reduction:.0%}); left out of the figure")
                  for r in part.itertuples() if r.name in SOLVED_RULES]
        lines.append(f"- **Kept fraction {f:g}**{target}: measured FLOPs reduction "
                     + ", ".join(f"{r.name} {r.flops_reduction:.0%}" for r in part.itertuples())
                     + (". Solved: " + "; ".join(solved) if solved else "") + ".")
        at_f = by_family[np.isclose(by_family.keep_fraction, f)]
        diffs = versus[np.isclose(versus.keep_fraction, f)] if len(versus) else versus
        lines += _family_lines(at_f, base, diffs, "FastV", "  ", "matched", "budget not matched")
        loc = at_f[at_f.family == LOCALIZATION]
        if not loc.empty and loc.relevant_kept.notna().any():
            shares = loc.sort_values("relevant_kept", ascending=False, kind="stable")
            lines.append("  - share of the target's tokens kept (localization): "
                         + ", ".join(f"{r.name} {r.relevant_kept:.2f}" for r in shares.itertuples()) + ".")
    return "\n".join(lines)


def _adaptive_note(names: pd.Series) -> str:
    """Names the settings whose kept count is data-dependent (PruMerge's ``keep=0``): their counts are means."""
    adaptive = [n for n in names if published(n)[1].get("keep") == 0]
    return f" ({', '.join(adaptive)}: adaptive counts, the mean over the samples)" if adaptive else ""


def paper_summary(table: pd.DataFrame) -> str:
    """The published settings in numbers (markdown): each one's FLOPs reduction and tokens kept, and the
    ranking per family with 95% intervals (settings differ in budget, so no difference is claimed)."""
    overall = table[(table.family == ALL) & (table.name != UNPRUNED)]
    base = table[table.name == UNPRUNED].set_index("family")
    lines = ["- **The papers' own settings** (layers as fractions of the papers' 32, token counts of "
             f"{PAPER_TOKENS}; each keeps its own budget, so this ranks settings, not methods at one budget): "
             + ", ".join(f"{r.name} {_flops(r)} FLOPs reduction, {r.kept_tokens:.0f} tokens kept"
                         for r in overall.itertuples()) + _adaptive_note(overall.name) + "."]
    return "\n".join(lines + _family_lines(table[table.name != UNPRUNED], base, pd.DataFrame(), "", "  "))


def _layer_mean_note(pruned: pd.DataFrame) -> str:
    """Says which methods count their budget as the mean over layers, and what they keep after the last stage."""
    mean = pruned[pruned.name.isin(LAYER_MEAN_COUNTS)].drop_duplicates(["name", "kept_count"])
    if not len(mean):
        return ""
    return (", except that " + ", ".join(dict.fromkeys(mean.name)) + " counts the mean over its layers, as its paper "
            "and Table 1 do (after its last stage: " + ", ".join(f"{r.nominal_kept} at {r.kept_count}"
                                                                 for r in mean.itertuples()) + ")")


def count_summary(table: pd.DataFrame, diffs: pd.DataFrame, reference: str) -> str:
    """Matched kept-token counts in numbers (markdown): per count the FLOPs each method needs, the ranking per
    family with 95% intervals and each method minus ``reference`` on the same samples; which differences
    exclude zero (the only ones claimed), and which counts were not the same on every sample."""
    pruned = table[table.name != UNPRUNED]
    base = table[table.name == UNPRUNED].set_index("family")
    lines = ["- **Matched kept-token counts** (VisPruner Table 1's shape: every method keeps the same number of visual "
             f"tokens after its last stage, its layers the paper's scaled by depth{_layer_mean_note(pruned)}):"]
    for n, at in pruned.groupby("kept_count", sort=False):
        overall = at[at.family == ALL]
        lines.append(f"  - **{n} tokens** ({int(at.paper_count.iloc[0])} of {PAPER_TOKENS} scaled), measured FLOPs "
                     "reduction " + ", ".join(f"{r.name} {_flops(r)}" for r in overall.itertuples()) + ":")
        here = diffs[diffs.kept_count == n] if len(diffs) else diffs
        lines += _family_lines(at, base, here, reference, "    ", "same_count", "not the matched count on every sample")
    shown = diffs[diffs.excludes_zero] if len(diffs) else diffs
    lines.append(f"  - Differences from {reference} whose 95% interval excludes zero: "
                 + ("; ".join(f"{_difference(r)} on {r.family} at {r.kept_count} tokens" for r in shown.itertuples())
                    if len(shown) else f"none — every interval contains zero, so no method is shown to differ from "
                                       f"{reference} at matched counts on these samples") + ".")
    varied = pruned[(pruned.family == ALL) & ~pruned.same_count]
    if len(varied):
        lines.append("  - Not the same count on every sample (whole rows, a union whose size depends on the image, "
                     "or ToMe below what a shallow tower can merge to): " + ", ".join(f"{r.name} at {r.kept_count} (mean {r.kept_tokens:.1f} kept)"
                                            for r in varied.itertuples()) + ".")
    return "\n".join(lines)
