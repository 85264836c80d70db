"""FEATHER's pruning criteria after an early layer K (Tables 1-2, Fig. 6-7).

- ``criterion_arms``: per K, φ_original (FastV), φ-R (RoPE removed from the scores), φ_uniform
  (stride 2), φ_KNN (as many tokens as φ_uniform keeps), the ensemble φ-R + φ_uniform, and φ-R's kept
  set applied before the LLM (Table 2); each an arm of ``study`` with its ``criterion`` and ``paper_K``.
- ``criteria_table``: accuracy per task family (localization vs the rest), ground-truth relevant
  tokens kept and the measured theoretical FLOPs reduction, with the FLOPs the same schedules have on
  a 32-layer preset (``preset_flops``, from ``nominal_kept``) for reference.
- ``kept_cells`` / ``kept_tokens_figure``: which grid cells each criterion keeps on example images.
Layers are given for a ``paper_depth``-layer model and scaled to the model by depth fraction.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.patches import Rectangle

from ..evaluation.datasets import EvalSample
from ..evaluation.runner import EvalModel, MethodSetting, prompt_inputs
from ..flops import PRESETS, schedule_flops
from ..pruning import get_method, nominal_kept
from ..figures import reference_band
from ..stats import describe
from . import study

# run_grid method names -> FEATHER's names, in Table 1's order; before_llm is Table 2.
CRITERIA = {"fastv": "φ_original", "fastv_norope": "φ-R", "uniform": "φ_uniform", "knn": "φ_KNN",
            "fastv_norope_uniform": "φ-R + φ_uniform", "before_llm": "φ-R before the LLM"}
PRESET = "feather-siglip-llama2-7b"
MARKERS = ("o", "s", "^", "D", "v", "P")


def matched_knn_ratio(grid: tuple[int, int], stride: int = 2) -> float:
    """The R at which φ_KNN keeps as many tokens as φ_uniform with ``stride`` on a rows × cols grid (FEATHER
    matches their savings: 196 of 729 on 27×27, so R = 1 - 196/729; 36 of 144 on 12×12)."""
    kept = nominal_kept(get_method("uniform").schedule(K=1, stride=stride), 2, grid)[0][1]
    return 1.0 - kept / (grid[0] * grid[1])


def criterion_arms(paper_layers: Sequence[int], paper_depth: int, R: float, grid: tuple[int, int]) -> list[study.Arm]:
    """Unpruned, then for every K each criterion of ``CRITERIA`` after layer K of ``paper_depth``
    (R = 0.75 for the attention criteria as in Table 1; φ_KNN matched to φ_uniform on ``grid``), with the
    coordinates ``criterion`` (FEATHER's name) and ``paper_K`` (0 unpruned)."""
    arms = [study.unpruned_arm(criterion=study.UNPRUNED, paper_K=0)]
    knn_R = matched_knn_ratio(grid)
    for paper_k in paper_layers:
        K = paper_k / paper_depth
        params = {"fastv": {"K": K, "R": R}, "fastv_norope": {"K": K, "R": R}, "uniform": {"K": K, "stride": 2},
                  "knn": {"K": K, "R": knn_R}, "fastv_norope_uniform": {"K": K, "R": R},
                  "before_llm": {"criterion": "fastv_norope", "K": K, "R": R}}
        arms += [study.Arm(f"{name} K={paper_k}", MethodSetting(method, params[method]),
                           {"criterion": name, "paper_K": paper_k}) for method, name in CRITERIA.items()]
    return arms


def preset_flops(paper_layers: Sequence[int], paper_depth: int, R: float, preset: str = PRESET) -> pd.DataFrame:
    """Per criterion and K: the kept visual tokens (``nominal_kept``) and theoretical FLOPs reduction (eq. 1,
    f = 2) of the same schedules on ``preset`` (its grid for φ_KNN's match).

    Counted over the image tokens only (no text tokens), as FEATHER's Table 1 does: its 68% / 66% / 61%
    at K=3 and 56% / 55% / 50% at K=8 are these values truncated to whole percent."""
    spec = PRESETS[preset]
    rows = []
    for arm in criterion_arms(paper_layers, paper_depth, R, spec.grid)[1:]:
        stages = nominal_kept(arm.setting.schedule(), spec.dims.layers, spec.grid)
        report = schedule_flops(spec.dims, spec.n_visual, 0, stages)
        rows.append({**arm.coords, "preset_kept": stages[-1][1], "preset_flops_reduction": report.reduction})
    return pd.DataFrame(rows)


FAMILY_COLUMNS = {study.LOCALIZATION: "localization", study.OTHER: "other", study.ALL: "all"}


def criteria_table(rows: pd.DataFrame, preset: pd.DataFrame) -> pd.DataFrame:
    """One row per criterion × K (unpruned first) of the rows of ``criterion_arms`` (``study.run``): accuracy
    on localization, on the other tasks and on all (``accuracy_<family>`` with ``_ci_low``/``_ci_high``,
    unweighted task means), the fraction of relevant tokens kept on localization and on all, mean kept
    visual tokens, samples, the measured FLOPs reduction and the preset's; refused without a localization
    dataset."""
    study.require_localization(rows, "the criteria table (FEATHER Table 1)")
    keys = ["criterion", "paper_K"]
    long = study.accuracy_table(rows, keys, "family")
    table = long[long.family == study.ALL][keys + ["kept_tokens", "flops_reduction", "samples"]].reset_index(drop=True)
    for fam, name in FAMILY_COLUMNS.items():
        part = long[long.family == fam].set_index(keys)
        wanted = {"accuracy": f"accuracy_{name}", "ci_low": f"accuracy_{name}_ci_low",
                  "ci_high": f"accuracy_{name}_ci_high"}
        if fam != study.OTHER:
            wanted["relevant_kept"] = f"relevant_kept_{name}"
        table = table.join(part[list(wanted)].rename(columns=wanted), on=keys)
    return table.merge(preset, on=keys, how="left")


def accuracy_flops_figure(table: pd.DataFrame) -> plt.Figure:
    """Accuracy vs measured FLOPs reduction, one marker per criterion (colour) × K (shape), for localization
    and the other tasks; dashed: unpruned."""
    columns = [c for c in ("accuracy_localization", "accuracy_other") if c in table]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.3 * len(columns) + 1.6, 2.6), squeeze=False)
    pruned = table[table.criterion != study.UNPRUNED]
    layers = sorted(pruned.paper_K.unique())
    colours = {c: f"C{i}" for i, c in enumerate(CRITERIA.values())}
    base = table[table.criterion == study.UNPRUNED]
    for ax, column in zip(axes[0], columns):
        for _, row in pruned.iterrows():
            ax.errorbar(row.flops_reduction, row[column], yerr=[[row[column] - row[f"{column}_ci_low"]],
                                                                [row[f"{column}_ci_high"] - row[column]]],
                        color=colours[row.criterion], marker=MARKERS[layers.index(row.paper_K) % len(MARKERS)],
                        ms=4, capsize=2, elinewidth=0.7, mec="white", mew=0.3)
        if len(base):
            band = base.iloc[0]
            reference_band(ax, pd.Series({"accuracy": band[column], "ci_low": band[f"{column}_ci_low"],
                                          "ci_high": band[f"{column}_ci_high"]}), "0.3")
        ax.set(xlabel="FLOPs reduction (measured)", ylabel=column.replace("accuracy_", "accuracy: "))
        ax.set_ylim(bottom=0)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=name) for name, c in colours.items()
               if name in set(pruned.criterion)]
    handles += [plt.Line2D([], [], color="0.4", marker=MARKERS[i % len(MARKERS)], ls="", label=f"K={k}")
                for i, k in enumerate(layers)]
    handles.append(plt.Line2D([], [], color="0.3", ls="--", label=study.UNPRUNED))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"FEATHER's criteria: accuracy vs FLOPs reduction ({int(table.samples.max())} samples; 95% intervals)")
    fig.tight_layout()
    return fig


def example_samples(samples: Sequence[EvalSample], count: int) -> list[EvalSample]:
    """The first ``count`` localization samples (with a target box), else the first samples."""
    local = [s for s in samples if study.family(s.dataset, s.task) == study.LOCALIZATION and s.box is not None]
    return (local or list(samples))[:count]


def kept_cells(em: EvalModel, rows: pd.DataFrame, examples: Sequence[EvalSample]) -> pd.DataFrame:
    """Grid cells (first segment: LLaVA-1.5's grid, LLaVA-NeXT's base image) kept by each criterion's last
    stage in each example, from the run's recorded kept indices; unpruned and Table 2 (the same kept set as
    φ-R) left out."""
    inputs = prompt_inputs(em, examples)
    layout = em.adapter.inputs_layout(inputs)
    rows = rows[rows.method.isin([m for m in CRITERIA if m != "before_llm"])]
    out = []
    for b, sample in enumerate(examples):
        grid = layout.samples[b]
        for _, row in rows[rows.sample_id == sample.sample_id].iterrows():
            kept = torch.tensor(row.kept[-1], dtype=torch.long)
            out += [{"sample_id": sample.sample_id, "criterion": row.criterion, "paper_K": row.paper_K,
                     "row": cell["row"], "col": cell["col"], "grid_rows": grid.segments[0].rows,
                     "grid_cols": grid.segments[0].cols}
                    for cell in grid.records(kept) if cell["segment"] == 0]
    return pd.DataFrame(out)


def _draw_kept(ax: plt.Axes, sample: EvalSample, cells: pd.DataFrame) -> None:
    """The image with the pruned cells washed out (white veil: the suite's backgrounds are dark) and the
    ground-truth box outlined."""
    ax.imshow(np.asarray(sample.image.convert("RGB")), extent=(0, 1, 1, 0), interpolation="nearest")
    if len(cells):
        dim = np.full((int(cells.grid_rows.iloc[0]), int(cells.grid_cols.iloc[0]), 4), (1.0, 1.0, 1.0, 0.75))
        dim[cells.row.to_numpy(), cells.col.to_numpy(), 3] = 0.0
        ax.imshow(dim, extent=(0, 1, 1, 0), interpolation="nearest")
    if sample.box is not None:
        x1, y1, x2, y2 = sample.box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#39ff14", lw=1.2))
    ax.set(xlim=(0, 1), ylim=(1, 0), xticks=[], yticks=[])


def kept_tokens_figure(cells: pd.DataFrame, examples: Sequence[EvalSample], paper_k: int) -> plt.Figure:
    """FEATHER Fig. 6-7: one row per criterion, one column per example; kept patches as they are, pruned
    ones washed out, the target box in green."""
    part = cells[cells.paper_K == paper_k]
    criteria = [c for c in CRITERIA.values() if c in set(part.criterion)]
    fig, axes = plt.subplots(len(criteria), len(examples), figsize=(1.25 * len(examples) + 0.9, 1.3 * len(criteria)),
                             squeeze=False, gridspec_kw={"wspace": 0.06, "hspace": 0.08})
    for i, criterion in enumerate(criteria):
        for j, sample in enumerate(examples):
            ax = axes[i, j]
            _draw_kept(ax, sample, part[(part.criterion == criterion) & (part.sample_id == sample.sample_id)])
            if j == 0:
                ax.set_ylabel(criterion, rotation=0, ha="right", va="center")
            if i == 0:
                ax.set_title("\n".join(textwrap.wrap(sample.question, 22)[:3]), fontsize="x-small")
    fig.suptitle(f"Kept tokens after paper layer K={paper_k} (green: target box)", y=0.98)
    return fig


def _with_interval(row: pd.Series, name: str) -> str:
    return study.with_interval(row, f"accuracy_{name}")


def summary(table: pd.DataFrame, rows: pd.DataFrame) -> str:
    """What the table and figures show, in numbers (markdown), with 95% intervals; per K, each criterion's
    localization accuracy minus the unpruned model's on the same samples (``rows``: ``study.run``'s of
    ``criterion_arms``)."""
    base = table[table.criterion == study.UNPRUNED]
    lines = []
    if len(base):
        b = base.iloc[0]
        lines.append(f"- Unpruned: localization accuracy {_with_interval(b, 'localization')}, other tasks "
                     f"{_with_interval(b, 'other')} ({int(b.samples)} samples).")
    pruned = table[table.criterion != study.UNPRUNED]
    local = rows[rows.family == study.LOCALIZATION]
    for paper_k, part in pruned.groupby("paper_K", sort=True):
        part = part.set_index("criterion")
        cells = "; ".join(f"{c} {_with_interval(r, 'localization')} / {_with_interval(r, 'other')} / "
                          f"{r.relevant_kept_all:.0%} at {r.flops_reduction:.0%} FLOPs reduction "
                          f"({r.preset_flops_reduction:.0%} on {PRESET})" for c, r in part.iterrows())
        lines.append(f"- K={paper_k} (localization / other accuracy / relevant tokens kept): {cells}.")
        at = local[(local.paper_K == paper_k) | (local.criterion == study.UNPRUNED)]
        base = at.criterion == study.UNPRUNED
        changes = "; ".join(f"{c} {describe(study.pair(at, (at.criterion == c) & (at.paper_K == paper_k), base))}"
                            for c in part.index)
        lines.append(f"  Localization minus unpruned on the same samples: {changes}.")
        table1 = part.drop(index=CRITERIA["before_llm"], errors="ignore")
        kept = table1.relevant_kept_localization.idxmax()
        lines.append(f"  Most relevant tokens kept on localization: {kept} "
                     f"({table1.relevant_kept_localization[kept]:.0%}).")
    return "\n".join(lines)
