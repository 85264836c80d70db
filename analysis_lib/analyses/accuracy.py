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

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..evaluation.datasets import EvalSample, load_dataset
from ..evaluation.runner import NO_PRUNING, EvalModel, MethodSetting, run_grid
from ..pruning.schedule import resolve_layer

LOCALIZATION = "localization"
UNPRUNED = "unpruned"
OTHERS = "other tasks (mean)"
# Study coordinates an arm may carry; they travel with its rows and its accuracy rows.
COORDINATES = ("R", "paper_K", "layer", "q")
# Fig. 4's conditions: arm name -> column of the leakage table.
LEAKAGE_COLUMNS = {UNPRUNED: "unpruned", "fastv": "in_llm", "before_llm": "before_llm", "text_only": "text_only"}


@dataclass(frozen=True)
class Arm:
    """One condition of a study: its name, the method setting that realises it, its coordinates."""

    name: str
    setting: MethodSetting
    coords: dict = field(default_factory=dict)


def unpruned_arm() -> Arm:
    """The reference every study compares with: no pruning."""
    return Arm(UNPRUNED, MethodSetting(NO_PRUNING))


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
                   paper_layer: int, R: float, paper_depth: int, out: str | Path, batch_size: int = 8) -> pd.DataFrame:
    """Rows of every ``relevance_arms`` method on the main dataset and of the Fig. 4 arms
    (``leakage_arms``) on each extra dataset."""
    rows = [evaluate(em, [suite], relevance_arms(paper_layer, R, paper_depth), out, batch_size)]
    if extra:
        rows.append(evaluate(em, extra, leakage_arms(paper_layer, R, paper_depth), out, batch_size))
    return pd.concat(rows, ignore_index=True)


def kept_fraction(kept_counts: str, n_visual: int) -> float:
    """Visual tokens left after the last stage, as a fraction (1 when nothing is pruned)."""
    counts = json.loads(kept_counts)
    return counts[-1] / n_visual if counts else 1.0


def evaluate(em: EvalModel, datasets: Sequence[tuple[str, list[EvalSample]]], arms: Sequence[Arm], out: str | Path,
             batch_size: int = 8) -> pd.DataFrame:
    """``run_grid`` rows of every arm on every (name, samples) dataset, each setting run once (finished
    batches under ``out`` are reused), with columns ``arm``, its coordinates, ``layer`` (the model layer
    its K resolves to), ``task_name`` (the scene task on datasets whose samples all carry a relevance
    mask, else the dataset's name without its folder) and ``kept_fraction``."""
    settings = list({arm.setting.label: arm.setting for arm in arms}.values())
    rows = run_grid([em], settings, list(datasets), out=out, batch_size=batch_size, progress=False)
    frames = []
    for arm in arms:
        coords = dict(arm.coords)
        if "K" in arm.setting.params:
            coords["layer"] = resolve_layer(arm.setting.params["K"], em.adapter.num_layers)
        frames.append(rows[rows.setting == arm.setting.label].assign(arm=arm.name, **coords))
    labelled = pd.concat(frames, ignore_index=True)
    scenes = [name for name, samples in datasets if all(s.relevance is not None for s in samples)]
    short = labelled.dataset.map(lambda name: Path(name).name)
    return labelled.assign(task_name=labelled.group.where(labelled.dataset.isin(scenes), short),
                           kept_fraction=[kept_fraction(c, n) for c, n in zip(labelled.kept_counts, labelled.n_visual)])


def task_accuracy(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × arm × task: accuracy (mean score), samples, mean kept fraction and mean fraction of
    the relevant tokens kept (synthetic suite), with the arm's coordinates; arms in evaluation order."""
    coords = [c for c in COORDINATES if c in rows.columns]
    rows = rows.astype({"score": float, "relevant_kept": float})
    table = rows.groupby(["dataset", "arm", "task_name"], sort=False, as_index=False).agg(
        accuracy=("score", "mean"), samples=("score", "size"), kept_fraction=("kept_fraction", "mean"),
        relevant_kept=("relevant_kept", "mean"))
    arm_coords = rows.drop_duplicates("arm")[["arm", *coords]]
    return table.merge(arm_coords, on="arm", how="left")[["dataset", "arm", *coords, "task_name", "accuracy",
                                                           "samples", "kept_fraction", "relevant_kept"]]


def relative_drop(reference: float, value: float) -> float:
    """1 - value / reference: the share of the unpruned accuracy lost (FEATHER's "% decrease"); NaN
    when the unpruned accuracy is 0."""
    return 1.0 - value / reference if reference > 0 else float("nan")


def localization_vs_rest(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per arm: localization accuracy and the unweighted mean of the other tasks' accuracies (FEATHER's
    "other task avg"), with each one's drop from the unpruned arm (absolute and relative)."""
    coords = [c for c in COORDINATES if c in accuracy.columns]
    loc = accuracy.task_name == LOCALIZATION
    table = accuracy[loc].set_index("arm")[coords + ["accuracy"]].rename(columns={"accuracy": "localization"})
    table["others"] = accuracy[~loc].groupby("arm", sort=False).accuracy.mean()
    table = table.reset_index()
    base = table.set_index("arm").loc[UNPRUNED]
    for column in ("localization", "others"):
        table[f"{column}_drop"] = base[column] - table[column]
        table[f"{column}_relative_drop"] = [relative_drop(base[column], v) for v in table[column]]
    return table


def quartile_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per paper layer K and quarter q: localization accuracy and the mean accuracy over all tasks."""
    part = accuracy[accuracy.q.notna()]
    table = part.groupby(["paper_K", "layer", "q"], as_index=False).accuracy.mean().rename(
        columns={"accuracy": "all_tasks"})
    loc = part[part.task_name == LOCALIZATION][["paper_K", "q", "accuracy"]].rename(columns={"accuracy": LOCALIZATION})
    table = table.merge(loc, on=["paper_K", "q"], how="left")
    return table.astype({"paper_K": int, "layer": int, "q": int})


def _layer_label(paper_k: float, layer: float, paper_depth: int) -> str:
    return f"K={int(paper_k)}/{paper_depth} (layer {int(layer)})"


def _task_heatmap(ax: plt.Axes, accuracy: pd.DataFrame, column: str, labels: dict) -> None:
    """Tasks × arms (unpruned first) annotated accuracy heatmap."""
    grid = accuracy.pivot(index="task_name", columns="arm", values="accuracy")[list(labels)]
    grid = grid.rename(columns=labels)
    sns.heatmap(grid, ax=ax, vmin=0, vmax=1, annot=True, fmt=".2f", cmap="crest", cbar=False,
                annot_kws={"fontsize": 6})
    ax.set_xlabel(column)
    ax.set_ylabel("")


def sweep_figure(accuracy: pd.DataFrame, x: str, xlabel: str, title: str) -> plt.Figure:
    """Left: localization and the other tasks' mean against ``x`` (an arm coordinate), each with its
    unpruned accuracy as a dashed line. Right: every task's accuracy per arm (FEATHER Fig. 2 / 3c)."""
    table = localization_vs_rest(accuracy)
    swept = table[table.arm != UNPRUNED].sort_values(x)
    base = table.set_index("arm").loc[UNPRUNED]
    fig, (ax, ax_tasks) = plt.subplots(1, 2, figsize=(7.4, 2.6), gridspec_kw={"width_ratios": [1, 1.3], "wspace": 0.45})
    for column, label, colour in (("localization", "localization", "C3"), ("others", OTHERS, "C0")):
        ax.plot(swept[x], swept[column], marker="o", color=colour, label=label)
        ax.axhline(base[column], color=colour, ls="--", lw=0.8)
    ax.set_xticks(swept[x].tolist())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize=7, title="dashed: unpruned", title_fontsize=7, loc="best")
    ordered = [UNPRUNED] + swept.arm.tolist()
    labels = {arm: arm if arm == UNPRUNED else f"{v:g}" for arm, v in zip(ordered, [None] + swept[x].tolist())}
    _task_heatmap(ax_tasks, accuracy, xlabel, labels)
    fig.suptitle(title)
    return fig


def quartile_figure(table: pd.DataFrame, accuracy: pd.DataFrame, paper_depth: int = 32) -> plt.Figure:
    """Accuracy when only one quarter of the visual-token sequence is kept after layer K: all tasks'
    mean and localization, one heatmap each (VisPruner Fig. 2c), coloured by the difference from the
    unpruned accuracy (in the titles; red = below it, blue = above)."""
    base = accuracy[accuracy.arm == UNPRUNED]
    references = {"all_tasks": base.accuracy.mean(),
                  LOCALIZATION: base[base.task_name == LOCALIZATION].accuracy.mean()}
    table = table.assign(K=[_layer_label(k, l, paper_depth) for k, l in zip(table.paper_K, table.layer)])
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 0.45 * table.K.nunique() + 1.3), sharey=True)
    for ax, column, name in zip(axes, ("all_tasks", LOCALIZATION), ("all tasks (mean)", LOCALIZATION)):
        grid = table.pivot(index="K", columns="q", values=column).loc[table.K.unique()]
        reference = references[column]
        span = max(0.25, float((grid - reference).abs().max().max()))  # small differences stay pale
        sns.heatmap(grid, ax=ax, vmin=reference - span, vmax=reference + span, center=reference, annot=True,
                    fmt=".2f", cmap="vlag_r", cbar=False)
        ax.set_title(f"{name}; unpruned {reference:.2f}")
        ax.set_xlabel("quarter kept (1 = top of the image)")
        ax.set_ylabel("")
    return fig


def leakage_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and task: the four Fig. 4 accuracies, ``transfer`` = in-LLM minus before-LLM (what the
    pruned tokens passed on before being removed) and ``image_need`` = unpruned minus text-only (how much
    the task needs the image)."""
    part = accuracy[accuracy.arm.isin(LEAKAGE_COLUMNS)]
    table = part.pivot_table(index=["dataset", "task_name"], columns="arm", values="accuracy", sort=False)
    table = table.rename(columns=LEAKAGE_COLUMNS)[list(LEAKAGE_COLUMNS.values())].reset_index()
    table.columns.name = None
    return table.assign(transfer=table.in_llm - table.before_llm, image_need=table.unpruned - table.text_only)


def leakage_figure(table: pd.DataFrame, paper_layer: int, R: float, paper_depth: int = 32) -> plt.Figure:
    """Grouped bars per task: unpruned, pruned in the LLM, the same tokens removed before it, text only."""
    names = {"unpruned": "unpruned", "in_llm": f"FastV after K={paper_layer}/{paper_depth} (in LLM)",
             "before_llm": "same tokens removed before LLM", "text_only": "text only"}
    colours = {"unpruned": "0.35", "in_llm": "#2a9d3f", "before_llm": "#a6dba0", "text_only": "0.8"}
    long = table.melt(id_vars=["task_name"], value_vars=list(names), var_name="condition", value_name="accuracy")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(table) + 1.5), 2.6))
    sns.barplot(long, x="task_name", y="accuracy", hue="condition", palette=colours, ax=ax, hue_order=list(names),
                order=table.task_name.tolist())
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [names[label] for label in labels], frameon=False, fontsize=6, ncol=2, loc="upper left",
              bbox_to_anchor=(0, 1.3))
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(f"R={R:g}", loc="right", fontsize=7)
    return fig


def relevance_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per method arm and task of the synthetic suite: fraction of relevant tokens kept, accuracy and kept
    fraction, plus an "all tasks" row per arm (unweighted task means). Tasks whose samples have no
    relevant token in the ground truth (the suite's "prior" questions) have no fraction and are left out."""
    part = accuracy[accuracy.relevant_kept.notna()]
    cols = ["arm", "task_name", "relevant_kept", "accuracy", "kept_fraction"]
    mean = part.groupby("arm", sort=False, as_index=False)[cols[2:]].mean().assign(task_name="all tasks")
    return pd.concat([part[cols], mean[cols]], ignore_index=True)


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
    """One small scatter per task: fraction of ground-truth relevant tokens kept (x) against accuracy (y),
    one marker per method arm (a note instead when the dataset has no ground-truth relevance)."""
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
        for arm, row in part.set_index("arm").iterrows():
            ax.scatter(row.relevant_kept, row.accuracy, marker=markers[arm], color=colours[arm], s=22, label=arm)
        ax.set_title(task, fontsize=8)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    fig.supxlabel("fraction of the ground-truth relevant tokens kept", fontsize=9)
    fig.supylabel("accuracy", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return fig


def _change(base: float, value: float) -> str:
    relative = f"{value / base - 1:+.0%}" if base > 0 else "n/a"
    return f"{base:.2f} → {value:.2f} ({relative})"


def _resolution(accuracy: pd.DataFrame) -> str:
    n = int(accuracy.samples.min())
    return f"With {n} samples per task one answer moves a task's accuracy by {1 / n:.2f}."


def where_pruning_hurts_summary(by_ratio: pd.DataFrame, by_layer: pd.DataFrame, quartiles: pd.DataFrame,
                                accuracy: pd.DataFrame, paper_depth: int = 32) -> str:
    """What the three figures show, in numbers (markdown): unpruned → pruned accuracy (relative change)
    of localization and of the other tasks per R and per K, and the best quarter per layer."""
    lines = []
    for table in (by_ratio, by_layer):
        base = table.set_index("arm").loc[UNPRUNED]
        for _, row in table[table.arm != UNPRUNED].iterrows():
            where = f"R={row.R:g} after {_layer_label(row.paper_K, row.layer, paper_depth)}"
            lines.append(f"- FastV {where}: localization {_change(base.localization, row.localization)}, "
                         f"other tasks {_change(base.others, row.others)}.")
    unpruned = accuracy[accuracy.arm == UNPRUNED].accuracy.mean()
    for (paper_k, layer), part in quartiles.groupby(["paper_K", "layer"], sort=True):
        scores = part.set_index("q").all_tasks
        best = " and ".join(f"q{q}" for q, a in scores.items() if a >= scores.max() - 1e-9)
        listed = ", ".join(f"q{q} {a:.3f}" for q, a in scores.items())
        central, last = scores.loc[[2, 3]].mean(), scores.loc[4]
        lines.append(f"- Only one quarter kept after {_layer_label(paper_k, layer, paper_depth)}: mean accuracy over "
                     f"tasks {listed} (unpruned {unpruned:.3f}); best {best}; central quarters (q2, q3) "
                     f"{central:.3f} against the last one (q4, next to the text) {last:.3f}.")
    lines.append(f"- {_resolution(accuracy)}")
    return "\n".join(lines)


def _per_task(part: pd.DataFrame, column: str) -> str:
    """``task value, ...`` of one dataset's leakage rows; the bare value for a dataset that is one task."""
    if len(part) == 1:
        return f"{part[column].iloc[0]:+.2f}"
    return ", ".join(f"{task} {value:+.2f}" for task, value in zip(part.task_name, part[column]))


def leakage_summary(leakage: pd.DataFrame, relevance: pd.DataFrame) -> str:
    """What the leakage and relevance figures show, in numbers (markdown)."""
    lines = []
    for dataset, part in leakage.groupby("dataset", sort=False):
        gaps, needs = _per_task(part, "transfer"), _per_task(part, "image_need")
        helped = int((part.transfer > 0).sum())
        lines.append(f"- {dataset}: in-LLM minus before-LLM accuracy (information passed on by the pruned tokens): "
                     f"{gaps}; mean {part.transfer.mean():+.2f}, positive on {helped} of {len(part)} tasks.")
        lines.append(f"- {dataset}: unpruned minus text-only accuracy (how much a task needs the image): {needs}.")
    if len(relevance):
        overall = relevance[relevance.task_name == "all tasks"].set_index("arm")
        pruned = overall.drop(index=[a for a in REFERENCE_ARMS if a in overall.index])
        ranked = pruned.sort_values("relevant_kept", ascending=False)
        listed = ", ".join(f"{arm} {row.relevant_kept:.0%} / {row.accuracy:.2f}" for arm, row in ranked.iterrows())
        low, high = f"{pruned.kept_fraction.min():.0%}", f"{pruned.kept_fraction.max():.0%}"
        kept = low if low == high else f"{low}-{high}"
        references = "; ".join(f"{arm} {overall.accuracy[arm]:.2f}" for arm in REFERENCE_ARMS if arm in overall.index)
        lines.append(f"- Relevant tokens kept / accuracy (means over tasks), most relevant kept first: {listed} "
                     f"(each keeps {kept} of the visual tokens; {references}).")
        r = relevance_correlation(relevance)
        lines.append("- Pearson correlation across the pruning methods between relevant tokens kept and accuracy: "
                     + ", ".join(f"{t} {v:+.2f}" for t, v in r.items() if not math.isnan(v)) + ".")
    return "\n".join(lines)
