"""Accuracy under pruning, task by task (FEATHER Fig. 2, Fig. 3c, Fig. 4; VisPruner Fig. 2c).

A study is a list of ``Arm``s: a named condition, the method setting that realises it (``run_grid``
runs it) and the study's coordinates (ratio ``R``, paper layer ``paper_K``, quartile ``q``).
``evaluate`` runs the distinct settings once (resumable, under ``out``) and labels every row with its
arm; ``task_accuracy`` is the mean per-sample score per arm and task, which is the benchmark's accuracy
for every metric family (localization: IoU >= 0.5; yes/no and MME: correctness; VQA: VQA accuracy).
A "task" is the scene task on the synthetic suite (its ``group``) and the dataset itself elsewhere.

- where pruning hurts: FastV after layer K with ratio R, swept over R (``ratio_arms``) and over K
  (``layer_arms``), localization against the mean of the other tasks (``localization_vs_rest``); only
  one quarter of the visual-token sequence kept after K (``quartile_arms``, ``quartile_table``);
- benchmark leakage: FastV in the LLM, the same kept set removed before the LLM, and no image at all
  (``leakage_arms``, ``leakage_table``); and, for several methods at the same R, the fraction of the
  ground-truth relevant tokens kept against accuracy (``relevance_arms``, ``relevance_table``).
Layers are given for a ``paper_depth``-layer model and passed as fractions of depth.

Readings: VisPruner Fig. 2c keeps one quarter "at different layers"; here the other three quarters are
removed after layer K (the registry's ``quartile`` method), as FastV would prune there. FEATHER's
"other task avg" is the unweighted mean over the other tasks, so every task counts alike whatever its
number of samples.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..evaluation.datasets import EvalSample, load_dataset
from ..evaluation.runner import EvalModel, MethodSetting
from ..stats import Interval, describe
from . import study
from ..figures import draw_intervals, interval_labels, reference_band
from .study import ALL, LOCALIZATION, OTHER, UNPRUNED, Arm, unpruned_arm

# Study coordinates an arm may carry; they travel with its rows and its accuracy rows.
COORDINATES = ("R", "paper_K", "layer", "q")
# Fig. 4's conditions: arm name -> column of the leakage table.
LEAKAGE_COLUMNS = {UNPRUNED: "unpruned", "fastv": "in_llm", "before_llm": "before_llm", "text_only": "text_only"}


def ratio_arms(ratios: Sequence[float], paper_layer: int, paper_depth: int) -> list[Arm]:
    """Unpruned, then FastV after ``paper_layer`` removing each fraction R (FEATHER Fig. 2)."""
    K = paper_layer / paper_depth
    return [unpruned_arm()] + [Arm(f"R={R:g}", MethodSetting("fastv", {"K": K, "R": R}),
                                   {"R": R, "paper_K": paper_layer}) for R in ratios]


def layer_arms(paper_layers: Sequence[int], R: float, paper_depth: int) -> list[Arm]:
    """Unpruned, then FastV removing R after each paper layer K (FEATHER Fig. 3c)."""
    return [unpruned_arm()] + [Arm(f"K={k}", MethodSetting("fastv", {"K": k / paper_depth, "R": R}),
                                   {"R": R, "paper_K": k}) for k in paper_layers]


def quartile_arms(paper_layers: Sequence[int], paper_depth: int) -> list[Arm]:
    """Unpruned, then per paper layer K and q = 1..4: only the q-th quarter of the visual-token sequence
    kept after K (VisPruner Fig. 2c; quarter 1 = the first tokens = the top of the image)."""
    return [unpruned_arm()] + [Arm(f"K={k} q={q}", MethodSetting("quartile", {"q": q, "K": k / paper_depth}),
                                   {"paper_K": k, "q": q}) for k in paper_layers for q in range(1, 5)]


def leakage_arms(paper_layer: int, R: float, paper_depth: int) -> list[Arm]:
    """FEATHER Fig. 4: unpruned; FastV removing R after K (in the LLM); the kept set FastV chooses after K
    removed before the LLM (no information flows from the pruned tokens); every visual token removed."""
    params = {"K": paper_layer / paper_depth, "R": R}
    coords = {"R": R, "paper_K": paper_layer}
    return [unpruned_arm(), Arm("fastv", MethodSetting("fastv", params), coords),
            Arm("before_llm", MethodSetting("before_llm", {"criterion": "fastv", **params}), coords),
            Arm("text_only", MethodSetting("text_only"), {"R": 1.0})]


def uniform_stride(R: float) -> int:
    """The stride whose grid keeps the fraction of tokens closest to 1 - R (stride s keeps about 1/s²;
    stride 1 keeps everything)."""
    return min(range(1, 17), key=lambda s: abs(1 / s**2 - (1 - R)))


def relevance_arms(paper_layer: int, R: float, paper_depth: int) -> list[Arm]:
    """Fig. 4's arms plus other methods of the registry at the same ratio R: FEATHER's φ-R and φ_uniform
    after K, FoPru and VisPruner before the LLM (keeping 1 - R), and random removal after K (the chance
    baseline of the in-LLM criteria). φ_uniform has no ratio: the stride closest to R is used, and every
    table reports the kept fraction measured per sample."""
    K = paper_layer / paper_depth
    coords = {"R": R, "paper_K": paper_layer}
    return leakage_arms(paper_layer, R, paper_depth) + [
        Arm("fastv_norope", MethodSetting("fastv_norope", {"K": K, "R": R}), coords),
        Arm("uniform", MethodSetting("uniform", {"K": K, "stride": uniform_stride(R)}), coords),
        Arm("fopru", MethodSetting("fopru", {"R": R}), {"R": R}),
        Arm("vispruner", MethodSetting("vispruner", {"keep": 1.0 - R}), {"R": R}),
        Arm("random", MethodSetting("random", {"K": K, "R": R}), coords),
    ]


def load_datasets(specs: Sequence[str], limit: int | None = None) -> list[tuple[str, list[EvalSample]]]:
    """(spec, samples) of each extra dataset spec, first ``limit`` samples (None = all)."""
    return [(spec, load_dataset(spec, limit=limit)) for spec in specs]


def benchmark_rows(em: EvalModel, suite: tuple[str, list[EvalSample]], extra: Sequence[tuple[str, list[EvalSample]]],
                   paper_layer: int, R: float, paper_depth: int, out: str | Path, batch_size: int = 8,
                   store: str | Path | None = None) -> pd.DataFrame:
    """Rows of every ``relevance_arms`` method on the main dataset and of the Fig. 4 arms
    (``leakage_arms``) on each extra dataset."""
    rows = [evaluate(em, [suite], relevance_arms(paper_layer, R, paper_depth), out, batch_size, store)]
    if extra:
        rows.append(evaluate(em, extra, leakage_arms(paper_layer, R, paper_depth), out, batch_size, store))
    return pd.concat(rows, ignore_index=True)


def evaluate(em: EvalModel, datasets: Sequence[tuple[str, list[EvalSample]]], arms: Sequence[Arm], out: str | Path,
             batch_size: int = 8, store: str | Path | None = None) -> pd.DataFrame:
    """The study's tidy rows of every arm on every dataset (``study.run``)."""
    return study.run(em, datasets, arms, out, batch_size, store)


def _coords(rows: pd.DataFrame) -> list[str]:
    return [c for c in COORDINATES if c in rows.columns]


def _with_coords(table: pd.DataFrame, rows: pd.DataFrame, front: Sequence[str] = ("dataset", "arm")) -> pd.DataFrame:
    """``table`` with each arm's coordinates after its key columns ``front``."""
    coords = _coords(rows)
    merged = table.merge(rows.drop_duplicates("arm")[["arm", *coords]], on="arm", how="left")
    rest = [c for c in table.columns if c not in front]
    return merged[[*front, *coords, *rest]]


def task_accuracy(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × arm × task: accuracy with its 95% interval, samples, mean kept fraction and mean
    fraction of the relevant tokens kept (synthetic suite), with the arm's coordinates; arms in order."""
    table = study.accuracy_table(rows, ["dataset", "arm"], "task_name")
    return _with_coords(table[["dataset", "arm", "task_name", "accuracy", "ci_low", "ci_high", "samples",
                               "kept_fraction", "relevant_kept"]], rows)


def relative_drop(reference: float, value: float) -> float:
    """1 - value / reference: the share of the unpruned accuracy lost (FEATHER's "% decrease"); NaN
    when the unpruned accuracy is 0."""
    return 1.0 - value / reference if reference > 0 else float("nan")


def localization_vs_rest(rows: pd.DataFrame) -> pd.DataFrame:
    """Per arm and family (localization, other tasks, all tasks; unweighted task means): accuracy with its
    95% interval, and its change from the unpruned arm on the same samples (``change``, paired-bootstrap
    ``change_ci_low``/``change_ci_high``, ``change_excludes_zero``) and relative to it; refused without a
    localization dataset."""
    study.require_localization(rows, "the localization-vs-rest table (FEATHER Fig. 2)")
    table = study.accuracy_table(rows, ["arm"], "family")[["arm", "family", "accuracy", "ci_low", "ci_high", "samples"]]
    change = study.differences(rows[rows.arm != UNPRUNED], rows[rows.arm == UNPRUNED], ["arm"], "family")
    change = change.drop(columns="samples").rename(columns={"difference": "change", "ci_low": "change_ci_low",
                                                            "ci_high": "change_ci_high",
                                                            "excludes_zero": "change_excludes_zero"})
    table = table.merge(change, on=["arm", "family"], how="left")
    base = table[table.arm == UNPRUNED].set_index("family").accuracy
    table["relative_change"] = [-relative_drop(base[f], v) for f, v in zip(table.family, table.accuracy)]
    return _with_coords(table, rows, ("arm", "family"))


def quartile_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per paper layer K, quarter q and family (localization, all tasks): accuracy with its 95% interval;
    refused without a localization dataset."""
    study.require_localization(rows, "the quartile table (FEATHER Fig. 3)")
    table = study.accuracy_table(rows[rows.q.notna()], ["paper_K", "layer", "q"], "family")
    table = table[table.family.isin([LOCALIZATION, ALL])]
    table = table[["paper_K", "layer", "q", "family", "accuracy", "ci_low", "ci_high", "samples"]]
    return table.astype({"paper_K": int, "layer": int, "q": int}).reset_index(drop=True)


def _layer_label(paper_k: float, layer: float, paper_depth: int) -> str:
    return f"K={int(paper_k)}/{paper_depth} (layer {int(layer)})"


def _task_heatmap(ax: plt.Axes, accuracy: pd.DataFrame, column: str, labels: dict) -> None:
    """Tasks × arms (unpruned first) heatmap, each cell annotated with its accuracy and 95% interval."""
    grids = [accuracy.pivot(index="task_name", columns="arm", values=v)[list(labels)].rename(columns=labels)
             for v in ("accuracy", "ci_low", "ci_high")]
    sns.heatmap(grids[0], ax=ax, vmin=0, vmax=1, annot=interval_labels(*grids), fmt="", cmap="crest", cbar=False,
                annot_kws={"fontsize": 4.5})
    ax.set_xlabel(column)
    ax.set_ylabel("")


def sweep_figure(table: pd.DataFrame, per_task: pd.DataFrame, x: str, xlabel: str, title: str) -> plt.Figure:
    """Left: localization and the other tasks' mean against ``x`` (an arm coordinate) with 95% intervals,
    the unpruned accuracy dashed over its interval. Right: every task's accuracy per arm (FEATHER Fig. 2 / 3c)."""
    fig, (ax, ax_tasks) = plt.subplots(1, 2, figsize=(7.8, 2.8), gridspec_kw={"width_ratios": [1, 1.4], "wspace": 0.45})
    for fam, label, colour in ((LOCALIZATION, LOCALIZATION, "C3"), (OTHER, f"{OTHER} (mean)", "C0")):
        part = table[table.family == fam]
        swept = part[part.arm != UNPRUNED].sort_values(x)
        draw_intervals(ax, swept[x], swept, marker="o", color=colour, label=label)
        reference_band(ax, part[part.arm == UNPRUNED].iloc[0], colour)
    swept = table[(table.arm != UNPRUNED) & (table.family == LOCALIZATION)].sort_values(x)
    ax.set_xticks(swept[x].tolist())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (95% interval)")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize=7, title="dashed: unpruned", title_fontsize=7, loc="best")
    ordered = [UNPRUNED] + swept.arm.tolist()
    labels = {arm: arm if arm == UNPRUNED else f"{v:g}" for arm, v in zip(ordered, [None] + swept[x].tolist())}
    _task_heatmap(ax_tasks, per_task, xlabel, labels)
    fig.suptitle(f"{title} ({int(per_task.samples.min())} samples per task)")
    return fig


def quartile_figure(table: pd.DataFrame, rows: pd.DataFrame, paper_depth: int = 32) -> plt.Figure:
    """Accuracy when only one quarter of the visual-token sequence is kept after layer K: all tasks'
    mean and localization, one heatmap each (VisPruner Fig. 2c) annotated with 95% intervals, coloured by
    the difference from the unpruned accuracy (in the titles; red = below it, blue = above)."""
    references = study.accuracy_table(rows[rows.arm == UNPRUNED], ["arm"], "family").set_index("family")
    table = table.assign(K=[_layer_label(k, l, paper_depth) for k, l in zip(table.paper_K, table.layer)])
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 0.55 * table.K.nunique() + 1.3), sharey=True)
    for ax, fam in zip(axes, (ALL, LOCALIZATION)):
        part = table[table.family == fam]
        grids = [part.pivot(index="K", columns="q", values=v).loc[part.K.unique()]
                 for v in ("accuracy", "ci_low", "ci_high")]
        ref = references.loc[fam]
        span = max(0.25, float((grids[0] - ref.accuracy).abs().max().max()))  # small differences stay pale
        sns.heatmap(grids[0], ax=ax, vmin=ref.accuracy - span, vmax=ref.accuracy + span, center=ref.accuracy,
                    annot=interval_labels(*grids), fmt="", cmap="vlag_r", cbar=False, annot_kws={"fontsize": 6})
        ax.set_title(f"{fam}; unpruned {ref.accuracy:.2f} [{ref.ci_low:.2f}, {ref.ci_high:.2f}]", fontsize=7)
        ax.set_xlabel("quarter kept (1 = top of the image)")
        ax.set_ylabel("")
    return fig


def leakage_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and task: the four Fig. 4 accuracies with their 95% intervals (``<condition>_ci_low``,
    ``<condition>_ci_high``), ``transfer`` = in-LLM minus before-LLM (what the pruned tokens passed on before
    being removed) and ``image_need`` = unpruned minus text-only (how much the task needs the image), each
    with its paired-bootstrap interval."""
    rows = rows[rows.arm.isin(LEAKAGE_COLUMNS)]
    tasks = study.accuracy_table(rows, ["dataset", "arm"], "task_name")
    table = tasks[["dataset", "task_name"]].drop_duplicates().reset_index(drop=True)
    for arm, name in LEAKAGE_COLUMNS.items():
        part = tasks[tasks.arm == arm].set_index(["dataset", "task_name"])[["accuracy", "ci_low", "ci_high"]]
        part.columns = [name, f"{name}_ci_low", f"{name}_ci_high"]
        table = table.join(part, on=["dataset", "task_name"])
    for name, a, b in (("transfer", "fastv", "before_llm"), ("image_need", UNPRUNED, "text_only")):
        diff = study.differences(rows[rows.arm == a], rows[rows.arm == b], ["dataset"], "task_name")
        diff = diff.set_index(["dataset", "task_name"])[["difference", "ci_low", "ci_high"]]
        diff.columns = [name, f"{name}_ci_low", f"{name}_ci_high"]
        table = table.join(diff, on=["dataset", "task_name"])
    return table


def leakage_figure(table: pd.DataFrame, paper_layer: int, R: float, paper_depth: int = 32) -> plt.Figure:
    """Grouped bars per task with 95% intervals: unpruned, pruned in the LLM, the same tokens removed
    before it, text only."""
    names = {"unpruned": "unpruned", "in_llm": f"FastV after K={paper_layer}/{paper_depth} (in LLM)",
             "before_llm": "same tokens removed before LLM", "text_only": "text only"}
    colours = {"unpruned": "0.35", "in_llm": "#2a9d3f", "before_llm": "#a6dba0", "text_only": "0.8"}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(table) + 1.5), 2.6))
    width = 0.8 / len(names)
    x = np.arange(len(table))
    for i, condition in enumerate(names):
        values = table[condition].to_numpy(dtype=float)
        errors = np.clip([values - table[f"{condition}_ci_low"], table[f"{condition}_ci_high"] - values], 0, None)
        ax.bar(x + (i - 1.5) * width, values, width, color=colours[condition], label=names[condition],
               yerr=errors, error_kw={"elinewidth": 0.6, "capsize": 1.5})
    ax.set_xticks(x, table.task_name.tolist(), rotation=30, ha="right")
    ax.legend(frameon=False, fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(0, 1.3))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% interval)")
    ax.set_title(f"R={R:g}", loc="right", fontsize=7)
    return fig


def relevance_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method arm and task of the synthetic suite: fraction of relevant tokens kept, accuracy with its
    95% interval and kept fraction, plus an "all tasks" row per arm (unweighted task means). Tasks whose
    samples have no relevant token in the ground truth (the suite's "prior" questions) are left out."""
    part = rows[rows.relevant_kept.notna()]
    cols = ["arm", "task_name", "relevant_kept", "accuracy", "ci_low", "ci_high", "samples", "kept_fraction"]
    if part.empty:
        return pd.DataFrame(columns=cols)
    tasks = study.accuracy_table(part, ["arm"], "task_name")
    overall = study.accuracy_table(part, ["arm"], "family")
    overall = overall[overall.family == ALL].rename(columns={"family": "task_name"})
    return pd.concat([tasks[cols], overall[cols]], ignore_index=True)


REFERENCE_ARMS = (UNPRUNED, "text_only")


def relevance_correlation(table: pd.DataFrame) -> pd.Series:
    """Per task: Pearson correlation between relevant tokens kept and accuracy across the pruning arms
    (unpruned and text-only left out: they differ in budget, not in which tokens they choose); NaN when
    either is constant."""
    def pearson(part: pd.DataFrame) -> float:
        if part.relevant_kept.std() == 0 or part.accuracy.std() == 0:
            return float("nan")
        return float(part.relevant_kept.corr(part.accuracy))
    pruned = table[~table.arm.isin(REFERENCE_ARMS)]
    return pd.Series({task: pearson(part) for task, part in pruned.groupby("task_name", sort=False)}, name="pearson_r")


def relevance_figure(table: pd.DataFrame) -> plt.Figure:
    """One small scatter per task: fraction of ground-truth relevant tokens kept (x) against accuracy (y)
    with its 95% interval, one marker per method arm (a note instead when the dataset has no ground-truth
    relevance)."""
    tasks = table.task_name.unique().tolist()
    arms = table.arm.unique().tolist()
    if not tasks:
        fig, ax = plt.subplots(figsize=(3.0, 1.0))
        ax.text(0.5, 0.5, "no ground-truth relevant tokens in this dataset", ha="center", va="center", fontsize=8)
        ax.axis("off")
        return fig
    cols = 4
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.0, 1.8 * rows + 0.4), sharex=True, sharey=True, squeeze=False)
    markers = dict(zip(arms, "o^vsDPX*hp<>"))
    colours = dict(zip(arms, sns.color_palette("tab10", len(arms))))
    for ax, task in zip(axes.flat, tasks):
        part = table[table.task_name == task]
        for arm in arms:
            point = part[part.arm == arm]
            if len(point):
                draw_intervals(ax, point.relevant_kept, point, marker=markers[arm], color=colours[arm], ms=4,
                               ls="", label=arm)
        ax.set_title(f"{task} (n={int(part.samples.max())})", fontsize=8)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    fig.supxlabel("fraction of the ground-truth relevant tokens kept", fontsize=9)
    fig.supylabel("accuracy (95% interval)", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return fig


def _resolution(per_task: pd.DataFrame) -> str:
    n = int(per_task.samples.min())
    return (f"{n} samples per task (one answer moves a task's accuracy by {1 / n:.2f}); brackets are 95% intervals "
            "(Wilson for one task, bootstrap over samples for means over tasks, paired bootstrap for changes).")


def _change(row: pd.Series) -> str:
    """``0.71 [..] → 0.67 [..], change -0.04 [-0.12, +0.04] (interval contains 0 ...)``."""
    iv = Interval(row.change, row.change_ci_low, row.change_ci_high, int(row.samples), "paired bootstrap")
    return f"{study.with_interval(row)}, change {describe(iv)}"


def where_pruning_hurts_summary(by_ratio: pd.DataFrame, by_layer: pd.DataFrame, quartiles: pd.DataFrame,
                                per_task: pd.DataFrame, paper_depth: int = 32) -> str:
    """What the three figures show, in numbers (markdown): per R and per K, localization's and the other
    tasks' accuracy and change from unpruned with intervals; the best quarter per layer."""
    lines = []
    for table in (by_ratio, by_layer):
        base = table[table.arm == UNPRUNED].set_index("family")
        lines.append(f"- Unpruned: localization {study.with_interval(base.loc[LOCALIZATION])}, other tasks "
                     f"{study.with_interval(base.loc[OTHER])}.")
        for arm, part in table[table.arm != UNPRUNED].groupby("arm", sort=False):
            part = part.set_index("family")
            row = part.loc[LOCALIZATION]
            where = f"R={row.R:g} after {_layer_label(row.paper_K, row.layer, paper_depth)}"
            lines.append(f"- FastV {where}: localization {_change(row)}; other tasks {_change(part.loc[OTHER])}.")
    for (paper_k, layer), part in quartiles[quartiles.family == ALL].groupby(["paper_K", "layer"], sort=True):
        scores = part.set_index("q")
        best = " and ".join(f"q{q}" for q, a in scores.accuracy.items() if a >= scores.accuracy.max() - 1e-9)
        listed = ", ".join(f"q{q} {study.with_interval(r)}" for q, r in scores.iterrows())
        lines.append(f"- Only one quarter kept after {_layer_label(paper_k, layer, paper_depth)}: mean accuracy over "
                     f"tasks {listed}; highest {best}.")
    lines.append(f"- {_resolution(per_task)}")
    return "\n".join(lines)


def _per_task(part: pd.DataFrame, column: str) -> str:
    """``task value [low, high], ...`` of one dataset's leakage rows; no task name for a one-task dataset."""
    text = [describe(Interval(r[column], r[f"{column}_ci_low"], r[f"{column}_ci_high"], 0, "paired bootstrap"))
            for _, r in part.iterrows()]
    if len(part) == 1:
        return text[0]
    return ", ".join(f"{task} {t}" for task, t in zip(part.task_name, text))


def leakage_summary(leakage: pd.DataFrame, relevance: pd.DataFrame, rows: pd.DataFrame) -> str:
    """What the leakage and relevance figures show, in numbers (markdown), differences with their
    paired-bootstrap intervals."""
    lines = []
    for dataset, part in leakage.groupby("dataset", sort=False):
        at = rows[rows.dataset == dataset]
        mean = study.pair(at, at.arm == "fastv", at.arm == "before_llm")
        lines.append(f"- {dataset}: in-LLM minus before-LLM accuracy (information passed on by the pruned tokens): "
                     f"{_per_task(part, 'transfer')}; mean over tasks {describe(mean)}.")
        lines.append(f"- {dataset}: unpruned minus text-only accuracy (how much a task needs the image): "
                     f"{_per_task(part, 'image_need')}.")
    if len(relevance):
        overall = relevance[relevance.task_name == ALL].set_index("arm")
        pruned = overall.drop(index=[a for a in REFERENCE_ARMS if a in overall.index])
        ranked = pruned.sort_values("relevant_kept", ascending=False)
        listed = ", ".join(f"{arm} {row.relevant_kept:.0%} / {study.with_interval(row)}" for arm, row in ranked.iterrows())
        low, high = f"{pruned.kept_fraction.min():.0%}", f"{pruned.kept_fraction.max():.0%}"
        kept = low if low == high else f"{low}-{high}"
        references = "; ".join(f"{arm} {study.with_interval(overall.loc[arm])}" for arm in REFERENCE_ARMS
                               if arm in overall.index)
        lines.append(f"- Relevant tokens kept / accuracy (means over tasks with relevant tokens), most relevant "
                     f"kept first: {listed} (each keeps {kept} of the visual tokens; {references}); "
                     f"{int(overall.samples.max())} samples per arm.")
        r = relevance_correlation(relevance)
        lines.append("- Pearson correlation across the pruning methods between relevant tokens kept and accuracy "
                     "(a handful of methods: descriptive only): "
                     + ", ".join(f"{t} {v:+.2f}" for t, v in r.items() if not math.isnan(v)) + ".")
    return "\n".join(lines)
