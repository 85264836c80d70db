"""Attention dispersion: [CLS] attention vs text→visual attention (VisPruner Fig. 3a-c; FoPru Fig. 1).

- ``attention_distributions``: per sample, three distributions over the visual tokens: the vision
  tower's [CLS] row at the feature layer, the last token's attention at layer K-1 of the language
  model ("last", RoPE as applied) and the same with every visual key at one shared position ("equi
  last"), each head-averaged and renormalised over the visual tokens.
- ``concentration``: normalised entropy, top-fraction mass and peak of one distribution;
  ``dispersion_stats`` and ``cumulative`` summarise them per kind (Fig. 3a-b).
- ``encoder_concentration``: the same numbers for every vision-tower layer (FoPru Fig. 1).
- ``pruning_arms`` / ``pruning_accuracy``: accuracy when pruning by each attention (Fig. 3c).
Layers are given for a ``paper_depth``-layer model and scaled to the model by depth fraction.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from ..attention import TextAttentionSpec
from ..capture import capture_attention
from ..evaluation.datasets import EvalSample
from ..evaluation.runner import EvalModel, MethodSetting
from ..pruning import Schedule, Stage, TextAttentionScorer, VisionAttentionScorer, get_method
from ..figures import draw_intervals, reference_band
from ..stats import describe
from . import study
from .positional import batches, scaled_layer

# Full-row softmax, as the model (and FastV) computes it; renormalising the head mean over the visual
# tokens makes a distribution that ranks tokens as FastV does. A per-head softmax over the visual keys
# would rank differently: heads that give the image little attention would weigh as much as the rest.
LAST = TextAttentionSpec()
EQUI = TextAttentionSpec(rope="equi")
KINDS = ("[CLS]", "last", "equi last")
# Pruning criteria of Fig. 3c: run_grid method names -> labels (random is the paper's reference).
CRITERIA = {"cls": "[CLS]", "last": "last", "equi_last": "equi last", "random": "random"}
PALETTE = {"[CLS]": "C0", "last": "C3", "equi last": "C1", "random": "0.5", "received": "C2"}


def concentration(values: np.ndarray, top_fraction: float) -> dict[str, float]:
    """How concentrated one attention distribution is (NaN entries dropped, renormalised to sum 1):
    entropy / log N (1 = uniform), the mass of the top ``ceil(top_fraction·N)`` entries, and the peak
    N·max (1 = uniform)."""
    p = np.asarray(values, dtype=np.float64)
    p = p[~np.isnan(p)]
    p = p / p.sum()
    n = p.size
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(n)) if n > 1 else 0.0
    k = max(1, int(np.ceil(top_fraction * n - 1e-9)))
    return {"entropy": entropy, "top_mass": float(np.sort(p)[::-1][:k].sum()), "peak": float(n * p.max())}


def _distribution(values: torch.Tensor) -> np.ndarray:
    """Per-token values without NaN (tokens without a patch), renormalised to sum 1."""
    p = values.float().cpu().numpy().astype(np.float64)
    p = p[~np.isnan(p)]
    return p / p.sum()


@torch.no_grad()
def attention_distributions(em: EvalModel, samples: Sequence[EvalSample], paper_layer: int, paper_depth: int = 32,
                            batch_size: int = 8) -> pd.DataFrame:
    """One row per sample × kind × visual token: the attention it gets, normalised over the visual tokens.

    [CLS]: the tower's [CLS]→patch row at the feature layer (head mean; the [CLS] self-attention is
    dropped). last / equi last: the last token's row at layer K-1, where K is ``paper_layer`` scaled
    (the layer FastV scores with), head mean over the visual keys. Each is renormalised to sum 1.
    """
    layer = scaled_layer(paper_layer, paper_depth, em.adapter.num_layers) - 1
    frames = []
    index = 0
    for _, inputs in batches(em, samples, batch_size):
        with capture_attention(em.model, layers=[layer], specs=(LAST, EQUI), vision_layers="feature",
                               adapter=em.adapter) as cap:
            em.model(**inputs)
        cls = cap.vision_per_token(cap.feature_layer, "cls")
        for b, grid in enumerate(cap.layout.samples):
            n = grid.num_tokens
            rows = {"[CLS]": cls[b], "last": cap.head_mean(LAST, layer)[b, :n],
                    "equi last": cap.head_mean(EQUI, layer)[b, :n]}
            for kind, values in rows.items():
                p = _distribution(values)
                frames.append(pd.DataFrame({"sample": index, "kind": kind, "layer": layer,
                                            "rank": np.arange(p.size), "attention": p}))
            index += 1
    return pd.concat(frames, ignore_index=True)


def dispersion_stats(distributions: pd.DataFrame, top_fraction: float) -> pd.DataFrame:
    """Per kind: mean and standard deviation over samples of ``concentration``'s numbers, and the
    uniform distribution's top-fraction mass for reference."""
    groups = distributions.groupby(["kind", "sample"], sort=False)
    per_sample = pd.DataFrame([{"kind": kind, "sample": sample,
                                **concentration(part.attention.to_numpy(), top_fraction)}
                               for (kind, sample), part in groups])
    stats = per_sample.groupby("kind", sort=False).agg(
        entropy=("entropy", "mean"), entropy_std=("entropy", "std"), top_mass=("top_mass", "mean"),
        top_mass_std=("top_mass", "std"), peak=("peak", "mean"), samples=("sample", "size")).reset_index()
    n = distributions.groupby(["kind", "sample"]).size().groupby("kind").first()
    stats["top_mass_uniform"] = [np.ceil(top_fraction * n[k] - 1e-9) / n[k] for k in stats.kind]
    stats.insert(1, "top_fraction", top_fraction)
    return stats


def cumulative(distributions: pd.DataFrame, points: int = 101) -> pd.DataFrame:
    """Per kind: the mean over samples of the share of attention held by the most-attended fraction of the
    visual tokens (Fig. 3a), on ``points`` fractions in [0, 1]."""
    fractions = np.linspace(0.0, 1.0, points)
    rows = []
    for kind, part in distributions.groupby("kind", sort=False):
        curves = []
        for _, sample in part.groupby("sample", sort=False):
            p = np.sort(sample.attention.to_numpy())[::-1]
            x = np.arange(p.size + 1) / p.size
            curves.append(np.interp(fractions, x, np.concatenate([[0.0], np.cumsum(p)])))
        rows.append(pd.DataFrame({"kind": kind, "token_fraction": fractions,
                                  "attention_share": np.mean(curves, axis=0)}))
    return pd.concat(rows, ignore_index=True)


@torch.no_grad()
def encoder_concentration(em: EvalModel, samples: Sequence[EvalSample], top_fraction: float,
                          batch_size: int = 8) -> pd.DataFrame:
    """Per vision-tower layer and kind (the [CLS] row; "received": the mean attention each patch receives
    from the patches, FoPru's s2), the mean over image crops of ``concentration`` (head mean first)."""
    per_crop = []
    for _, inputs in batches(em, samples, batch_size):
        with capture_attention(em.model, layers=None, vision_layers="all", adapter=em.adapter) as cap:
            em.model(**inputs)
        for layer, rows in cap.vision.items():
            for kind, values in (("[CLS]", rows.cls), ("received", rows.received)):
                if values is None:  # towers without [CLS]
                    continue
                per_crop += [{"layer": layer, "kind": kind, **concentration(crop.numpy(), top_fraction)}
                             for crop in values.mean(dim=1).double().cpu()]
    frame = pd.DataFrame(per_crop).groupby(["layer", "kind"], as_index=False).mean()
    frame["feature_layer"] = frame.layer == em.adapter.vision_feature_encoder_layer
    return frame


@dataclass(frozen=True)
class ScheduleSetting(MethodSetting):
    """A method setting with a schedule built here rather than looked up in the registry; ``run_grid``
    runs it like any other (it reads ``method``, ``params``, ``label``, ``key`` and ``schedule()``)."""

    built: Schedule | None = None

    def schedule(self) -> Schedule | None:
        return self.built


def pruning_arms(paper_layer: int, paper_depth: int, ratios: Sequence[float]) -> list[study.Arm]:
    """Unpruned, then per ratio R: prune the fraction R of the visual tokens after layer K by each
    attention (Fig. 3c), and at random as the paper's reference; coordinates ``criterion`` (a ``CRITERIA``
    label) and ``R`` (0 unpruned).

    Reading: every criterion prunes at the same layer K with the same budget and original positions, so
    only the scores differ; VisPruner prunes by [CLS] before the LLM, which would also change where the
    tokens are removed. [CLS] = VisionAttentionScorer("cls"), last = FastV, equi last = FastV's row with
    every visual key at the image start's position (both rank by the head-mean full-row attention).
    """
    K = paper_layer / paper_depth
    arms = [study.unpruned_arm(criterion=study.UNPRUNED, R=0.0)]
    for R in ratios:
        params = {"K": K, "R": R}
        schedules = {"cls": Schedule((Stage(K, VisionAttentionScorer("cls"), 1.0 - R),), name="cls"),
                     "last": get_method("fastv").schedule(**params),
                     "equi_last": Schedule((Stage(K, TextAttentionScorer(EQUI), 1.0 - R),), name="equi_last"),
                     "random": get_method("random").schedule(**params)}
        arms += [study.Arm(f"{label} R={R:g}", ScheduleSetting(name, params, schedules[name]),
                           {"criterion": label, "R": float(R)}) for name, label in CRITERIA.items()]
    return arms


def pruning_accuracy(rows: pd.DataFrame) -> pd.DataFrame:
    """Per criterion × R × family (localization, other tasks, all tasks; those the rows have): accuracy with its
    95% interval, the fraction of ground-truth relevant tokens kept and the mean FLOPs reduction (``study.run``'s
    rows of ``pruning_arms``). Fig. 3c compares the attentions on benchmarks without localization (POPE among
    them), so a run without a localization dataset reports the other tasks alone."""
    return study.accuracy_table(rows, ["criterion", "R"], "family")


def _share(value: float) -> str:
    return f"{value:.0%}" if pd.notna(value) else "n/a"


def _families(accuracy: pd.DataFrame) -> list[str]:
    """Localization and/or other tasks: the families ``accuracy`` has rows for."""
    return [f for f in (study.LOCALIZATION, study.OTHER) if (accuracy.family == f).any()]


def dispersion_figure(distributions: pd.DataFrame, curves: pd.DataFrame, top_fraction: float) -> plt.Figure:
    """(a) cumulative share of attention vs share of tokens, most attended first; (b) density of the
    attention relative to uniform (N·a, log scale, values below 10⁻³ counted in the first bin)."""
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(6.4, 2.5))
    for kind, part in curves.groupby("kind", sort=False):
        ax_a.plot(part.token_fraction, part.attention_share, color=PALETTE[kind], label=kind)
    ax_a.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8, label="uniform")
    ax_a.axvline(top_fraction, color="0.6", ls=":", lw=0.8)
    ax_a.set(xlabel="fraction of visual tokens (most attended first)", ylabel="cumulative attention",
             xlim=(0, 1), ylim=(0, 1), title="(a) cumulative distribution")
    ax_a.legend(frameon=False, loc="lower right")
    n = distributions.groupby(["kind", "sample"]).attention.transform("size")
    relative = distributions.assign(relative=(distributions.attention * n).clip(lower=1e-3))
    sns.histplot(relative, x="relative", hue="kind", hue_order=list(KINDS), palette=PALETTE, log_scale=True,
                 stat="density", common_norm=False, element="step", fill=False, bins=60, ax=ax_b)
    ax_b.axvline(1.0, color="0.6", ls="--", lw=0.8)
    ax_b.set(xlabel="attention × N (1 = uniform)", title="(b) density")
    ax_b.get_legend().set_title(None)
    ax_b.get_legend().set_frame_on(False)
    layer = int(distributions[distributions.kind == "last"].layer.iloc[0])
    fig.suptitle(f"[CLS] attention (feature layer) vs last-token attention (LLM layer {layer})")
    fig.tight_layout()
    return fig


def encoder_figure(layers: pd.DataFrame, top_fraction: float) -> plt.Figure:
    """Top-fraction mass and normalised entropy per vision-tower layer (FoPru Fig. 1)."""
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 2.3))
    for ax, column, label in ((axes[0], "top_mass", f"mass of the top {top_fraction:.0%} patches"),
                              (axes[1], "entropy", "entropy / log N")):
        for kind, part in layers.groupby("kind", sort=False):
            ax.plot(part.layer, part[column], marker="o", ms=3, color=PALETTE[kind], label=kind)
        feature = layers[layers.feature_layer].layer
        if len(feature):
            ax.axvline(feature.iloc[0], color="0.6", ls=":", lw=0.8)
        ax.set(xlabel="vision-tower layer (dotted: feature layer)", ylabel=label)
        ax.set_xticks(sorted(layers.layer.unique()))
    axes[0].axhline(top_fraction, color="0.6", ls="--", lw=0.8)
    axes[1].set_ylim(top=1.02)
    axes[0].legend(frameon=False, loc="best")
    fig.suptitle("Concentration of the vision tower's attention per layer")
    fig.tight_layout()
    return fig


def accuracy_figure(accuracy: pd.DataFrame) -> plt.Figure:
    """Accuracy (localization, other tasks: those present) with 95% intervals and relevant tokens kept (where
    the data has ground truth) vs reduction ratio, per criterion; dashed over its interval: unpruned (Fig. 3c)."""
    panels = [(fam, "accuracy", f"{fam} accuracy") for fam in _families(accuracy)]
    if accuracy.relevant_kept.notna().any():
        panels.append((study.ALL, "relevant_kept", "relevant tokens kept"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.4), squeeze=False)
    axes = axes[0]
    pruned = accuracy[accuracy.criterion != study.UNPRUNED]
    for ax, (fam, column, label) in zip(axes, panels):
        for i, (criterion, part) in enumerate(pruned[pruned.family == fam].groupby("criterion", sort=False)):
            if column == "accuracy":
                draw_intervals(ax, part.R + 0.006 * (i - 1.5), part, marker="o", ms=3, color=PALETTE[criterion],
                               label=criterion)
            else:
                ax.plot(part.R, part[column], marker="o", ms=3, color=PALETTE[criterion], label=criterion)
        base = accuracy[(accuracy.criterion == study.UNPRUNED) & (accuracy.family == fam)]
        if column == "accuracy" and len(base):
            reference_band(ax, base.iloc[0], "0.3", "unpruned")
        ax.set(xlabel="reduction ratio R", ylabel=label)
        ax.set_ylim(0, 1.02)
        ax.set_xticks(sorted(pruned.R.unique()))
    axes[0].legend(frameon=False, fontsize="small")
    n = int(accuracy[accuracy.family == study.ALL].samples.max())
    fig.suptitle(f"Pruning by each attention after the same layer ({n} samples; 95% intervals)")
    fig.tight_layout()
    return fig


def summary(stats: pd.DataFrame, layers: pd.DataFrame, accuracy: pd.DataFrame, rows: pd.DataFrame) -> str:
    """What the figures show, in numbers (markdown); ``rows`` (``study.run``'s of ``pruning_arms``) give the
    paired differences."""
    s = stats.set_index("kind")
    top = f"top {s.top_fraction.iloc[0]:.0%}"
    lines = ["- Concentration (mean over samples; entropy / log N, 1 = uniform): " + "; ".join(
        f"{k}: entropy {s.entropy[k]:.3f}, {top} of the tokens hold {s.top_mass[k]:.0%} of the attention, "
        f"peak {s.peak[k]:.1f}× uniform" for k in s.index) + f" (uniform: {s.top_mass_uniform.iloc[0]:.0%})."]
    most = s.entropy.idxmin()
    lines.append(f"- The most concentrated is {most} (entropy {s.entropy[most]:.3f}); the least is "
                 f"{s.entropy.idxmax()} ({s.entropy.max():.3f}).")
    for kind, part in layers.groupby("kind", sort=False):
        part = part.sort_values("layer")
        lines.append(f"- Vision tower, {kind}: the {top} patches hold " + ", ".join(
            f"{m:.0%}" for m in part.top_mass) + f" of the attention in layers {part.layer.min()}..{part.layer.max()}"
            f" (entropy {part.entropy.iloc[0]:.3f} → {part.entropy.iloc[-1]:.3f}).")
    families = _families(accuracy)
    base = accuracy[accuracy.criterion == study.UNPRUNED].set_index("family")
    lines.append("- Unpruned accuracy: " + ", ".join(f"{fam} {study.with_interval(base.loc[fam])}" for fam in families)
                 + f" ({int(base.samples[study.ALL])} samples).")
    pruned = accuracy[accuracy.criterion != study.UNPRUNED]
    for R, part in pruned.groupby("R", sort=True):
        cells = []
        for criterion, group in part.groupby("criterion", sort=False):
            r = group.set_index("family")
            cells.append(f"{criterion} " + " / ".join([*(study.with_interval(r.loc[fam]) for fam in families),
                                                       _share(r.relevant_kept[study.ALL])]))
        lines.append(f"- R={R:g} ({' / '.join(families)} accuracy / relevant tokens kept): " + "; ".join(cells) + ".")
        at = rows[rows.R == R]
        for fam in [f for f in families if f == study.LOCALIZATION] + [study.ALL]:
            scope = at if fam == study.ALL else at[at.family == fam]
            iv = study.pair(scope, scope.criterion == "last", scope.criterion == "[CLS]")
            lines.append(f"  - last minus [CLS] on {fam}: {describe(iv)}.")
    return "\n".join(lines)
