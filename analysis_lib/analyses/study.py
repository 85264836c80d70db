"""One study type: arms in, one tidy frame out, accuracies with their intervals.

Every analysis declares its conditions as ``Arm``s (a name, the ``run_grid`` setting that realises it,
the study's coordinates), runs them with ``run`` and aggregates with ``accuracy_table`` and
``differences``. The definitions every notebook shares live here:

- a row's ``task_name`` is the scene task on the synthetic suite (its ``group``), else the dataset's
  name; its ``family`` is ``localization`` when its task family (``datasets.task_family``: the benchmark's,
  else the task's) is localization — RefCOCO / RefCOCO+ / RefCOCOg on real data, the ``localization``
  task on the synthetic suite — else ``other tasks``;
- "other tasks" and "all tasks" are the **unweighted mean of the tasks' accuracies** (FEATHER's "other
  task avg": every task counts alike whatever its sample count), with a bootstrap interval resampled
  within each task (``analysis_lib.stats``); one task alone gets its Wilson interval (0/1 scores);
- the unpruned model is the arm ``unpruned``;
- ``kept`` (indices per stage) and ``kept_counts`` are list columns, parsed once here.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.datasets import BENCHMARKS, EvalSample, task_family
from ..evaluation.runner import NO_PRUNING, EvalModel, MethodSetting, run_grid
from ..pruning.schedule import resolve_layer
from ..stats import Interval, mean_interval, paired_difference

UNPRUNED = "unpruned"
LOCALIZATION = "localization"
OTHER = "other tasks"
ALL = "all tasks"
FAMILIES = (LOCALIZATION, OTHER, ALL)
# Means of these row columns travel with every accuracy row, when the rows have them.
MEANS = ("relevant_kept", "kept_fraction", "kept_tokens", "flops_reduction")


@dataclass(frozen=True)
class Arm:
    """One condition of a study: its name, the method setting that realises it, its coordinates."""

    name: str
    setting: MethodSetting
    coords: dict = field(default_factory=dict)


def unpruned_arm(**coords) -> Arm:
    """The reference every study compares with: no pruning (``coords``: its place on the study's axes)."""
    return Arm(UNPRUNED, MethodSetting(NO_PRUNING), coords)


def family(dataset: str | None, task: str) -> str:
    """``localization`` or ``other tasks``: the split every analysis reports (see the module docstring)."""
    return LOCALIZATION if task_family(dataset, task) == LOCALIZATION else OTHER


def require_localization(rows: pd.DataFrame, analysis: str) -> None:
    """Refuse (ValueError) rows without a localization dataset for an analysis that splits localization from
    the rest, naming the datasets given and the ones it can use."""
    if not (rows.family == LOCALIZATION).any():
        usable = ", ".join(k for k, b in BENCHMARKS.items() if b.task_family == LOCALIZATION)
        given = ", ".join(dict.fromkeys(map(str, rows.dataset))) or "none"
        raise ValueError(f"dataset: {analysis} splits localization from the other tasks, but the datasets given "
                         f"({given}) have no localization samples; add one of {usable}, or use the synthetic suite")


def _as_list(value: object) -> list:
    return json.loads(value) if isinstance(value, str) else list(value)


def tidy(rows: pd.DataFrame) -> pd.DataFrame:
    """``run_grid`` rows with ``kept`` and ``kept_counts`` as lists, ``kept_tokens`` and ``kept_fraction``
    after the last stage (all tokens when nothing is pruned), ``task_name`` and ``family``."""
    kept_counts = [_as_list(c) for c in rows.kept_counts]
    tokens = [c[-1] if c else n for c, n in zip(kept_counts, rows.n_visual)]
    scenes = rows.dataset.str.split(":").str[0] == "synthetic"
    short = rows.dataset.map(lambda name: Path(name).name)
    task_name = rows.group.where(scenes & rows.group.notna() & (rows.group != ""), short)
    return rows.assign(kept=[_as_list(k) for k in rows.kept], kept_counts=kept_counts, kept_tokens=tokens,
                       kept_fraction=np.asarray(tokens, dtype=float) / rows.n_visual.to_numpy(),
                       task_name=task_name, family=[family(d, t) for d, t in zip(rows.dataset, rows.task)],
                       score=rows.score.astype(float), relevant_kept=rows.relevant_kept.astype(float))


def run(em: EvalModel, datasets: Sequence[tuple[str, list[EvalSample]]], arms: Sequence[Arm], out: str | Path,
        batch_size: int = 8, store: str | Path | None = None, seed: int = 0) -> pd.DataFrame:
    """The tidy rows of every arm on every (name, samples) dataset, each distinct setting run once
    (finished batches under ``out`` are reused), with ``arm``, its coordinates and ``layer`` (the model
    layer its ``K`` resolves to). ``store``: ``run_grid``'s folder of finished batches (the notebooks share one);
    ``seed``: ``run_grid``'s (random pruning)."""
    settings = list({arm.setting.label: arm.setting for arm in arms}.values())
    rows = tidy(run_grid([em], settings, list(datasets), out=out, batch_size=batch_size, seed=seed, progress=False,
                         store=store))
    frames = []
    for arm in arms:
        coords = dict(arm.coords)
        if "K" in arm.setting.params:
            coords["layer"] = resolve_layer(arm.setting.params["K"], em.adapter.num_layers)
        frames.append(rows[rows.setting == arm.setting.label].assign(arm=arm.name, **coords))
    return pd.concat(frames, ignore_index=True)


def levels(rows: pd.DataFrame, by: str) -> Iterator[tuple[str, pd.DataFrame]]:
    """(level, rows) of ``by``: each task (``task_name``) or each of localization, other tasks and all tasks
    (``family``; a level without rows is left out)."""
    if by == "task_name":
        yield from rows.groupby("task_name", sort=False)
        return
    for level in FAMILIES:
        part = rows if level == ALL else rows[rows.family == level]
        if len(part):
            yield level, part


def interval(rows: pd.DataFrame) -> Interval:
    """Accuracy of ``rows`` (unweighted mean over their tasks) with its 95% interval."""
    return mean_interval(rows.score.to_numpy(), rows.task_name.to_numpy())


def _accuracy_columns(iv: Interval) -> dict:
    return {"accuracy": iv.value, "ci_low": iv.low, "ci_high": iv.high, "samples": iv.samples}


def accuracy_table(rows: pd.DataFrame, keys: Sequence[str], by: str = "task_name") -> pd.DataFrame:
    """Per ``keys`` group (in order of appearance) and level of ``by`` (see ``levels``): accuracy, its 95%
    interval ``ci_low``/``ci_high``, samples, and the mean of each ``MEANS`` column the rows have."""
    means = [c for c in MEANS if c in rows.columns]
    out = []
    for key, group in rows.groupby(list(keys), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for level, part in levels(group, by):
            out.append({**dict(zip(keys, key)), by: level, **_accuracy_columns(interval(part)),
                        **{c: float(part[c].mean()) for c in means}})
    return pd.DataFrame(out)


def differences(rows: pd.DataFrame, reference: pd.DataFrame, keys: Sequence[str], by: str = "family") -> pd.DataFrame:
    """Per ``keys`` group of ``rows`` and level of ``by``: its accuracy minus ``reference``'s on the same
    samples (matched by dataset and sample id), with the 95% paired-bootstrap interval and
    ``excludes_zero``."""
    ref = reference.set_index(["dataset", "sample_id"]).score
    out = []
    for key, group in rows.groupby(list(keys), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for level, part in levels(group, by):
            base = ref.reindex(pd.MultiIndex.from_arrays([part.dataset, part.sample_id])).to_numpy()
            iv = paired_difference(part.score.to_numpy(), base, part.task_name.to_numpy())
            out.append({**dict(zip(keys, key)), by: level, "difference": iv.value, "ci_low": iv.low,
                        "ci_high": iv.high, "samples": iv.samples, "excludes_zero": iv.excludes_zero})
    return pd.DataFrame(out)


def pair(rows: pd.DataFrame, a: pd.Series, b: pd.Series) -> Interval:
    """Accuracy of the rows selected by mask ``a`` minus that of mask ``b`` on the same samples."""
    first = rows[a].set_index(["dataset", "sample_id"])
    second = rows[b].set_index(["dataset", "sample_id"]).score.reindex(first.index)
    return paired_difference(first.score.to_numpy(), second.to_numpy(), first.task_name.to_numpy())


def with_interval(row: pd.Series, column: str = "accuracy") -> str:
    """``0.71 [0.52, 0.85]``: ``row[column]`` and its interval (``<column>_ci_low`` / ``ci_low``)."""
    prefix = "" if column == "accuracy" else f"{column}_"
    return f"{row[column]:.2f} [{row[prefix + 'ci_low']:.2f}, {row[prefix + 'ci_high']:.2f}]"
