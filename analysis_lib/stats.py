"""95% intervals for accuracies and for differences between two settings, with fixed seeds.

- A proportion (every score 0 or 1, one task): the Wilson score interval.
- A mean of bounded scores that are not all 0/1 (VQA accuracy), or an unweighted mean of several tasks'
  accuracies ("other tasks"): a percentile bootstrap over samples, resampled within each task (stratum),
  so every task keeps its own sample count. A percentile interval is widened to contain its point estimate
  when floating-point sums put the estimate a hair outside it.
- A difference between two settings on the same samples: a paired bootstrap over samples (a resampled
  sample brings its score under both settings), stratified the same way.
The generator is seeded with ``SEED`` on every call, so a re-run gives byte-identical intervals.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval, the samples behind it and how the interval was made."""

    value: float
    low: float
    high: float
    samples: int
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaNs when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(float(centre - half), p), max(float(centre + half), p)  # exact 0 / 1 at p = 0 / 1


def _strata(scores: np.ndarray, strata: Sequence | None) -> list[np.ndarray]:
    """Positions of each stratum's samples (one stratum when none are given), in first-seen order."""
    if strata is None:
        return [np.arange(len(scores))]
    labels = np.asarray(strata, dtype=object)
    return [np.flatnonzero(labels == s) for s in dict.fromkeys(labels.tolist())]


def _boot(columns: list[np.ndarray], groups: list[np.ndarray]) -> np.ndarray:
    """Per resample, the unweighted mean over strata of each stratum's mean of ``columns[0] - columns[1]``
    (or of ``columns[0]`` alone); resampling within strata, the same draws for every column."""
    rng = np.random.default_rng(SEED)
    total = np.zeros(RESAMPLES)
    for idx in groups:
        draws = idx[rng.integers(0, len(idx), size=(RESAMPLES, len(idx)))]
        values = columns[0][draws] if len(columns) == 1 else columns[0][draws] - columns[1][draws]
        total += values.mean(axis=1)
    return total / len(groups)


def _point(columns: list[np.ndarray], groups: list[np.ndarray]) -> float:
    values = columns[0] if len(columns) == 1 else columns[0] - columns[1]
    return float(np.mean([values[idx].mean() for idx in groups]))


def mean_interval(scores: Sequence[float], strata: Sequence | None = None) -> Interval:
    """Mean score (unweighted mean of the strata's means when ``strata`` label each sample's task) with its
    95% interval: Wilson for 0/1 scores of one stratum, else the stratified percentile bootstrap."""
    values = np.asarray(scores, dtype=float)
    if len(values) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    groups = _strata(values, strata)
    point = _point([values], groups)
    if len(groups) == 1 and np.isin(values, (0.0, 1.0)).all():
        low, high = wilson(values.sum(), len(values))
        return Interval(point, low, high, len(values), "wilson")
    low, high = np.quantile(_boot([values], groups), [0.025, 0.975])
    return Interval(point, min(float(low), point), max(float(high), point), len(values), "bootstrap")


def paired_difference(a: Sequence[float], b: Sequence[float], strata: Sequence | None = None) -> Interval:
    """Mean of ``a`` minus mean of ``b`` (the same samples, in the same order, under two settings) with the
    95% paired-bootstrap interval, resampled within ``strata``."""
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired_difference: {len(first)} and {len(second)} scores; pairs need the same samples")
    if len(first) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    groups = _strata(first, strata)
    low, high = np.quantile(_boot([first, second], groups), [0.025, 0.975])
    point = _point([first, second], groups)
    return Interval(point, min(float(low), point), max(float(high), point), len(first), "paired bootstrap")


def describe(interval: Interval, signed: bool = True) -> str:
    """``+0.04 [-0.02, +0.10]``; a difference whose interval contains zero says so."""
    fmt = "{:+.2f}" if signed else "{:.2f}"
    text = f"{fmt.format(interval.value)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"
    if signed and not interval.excludes_zero:
        text += " (interval contains 0: no difference shown)"
    return text
