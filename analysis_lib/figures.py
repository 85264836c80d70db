"""Paper-ready figure export (PDF with TrueType fonts + 300 dpi PNG, byte-identical across re-runs) and the
way every figure draws a 95% interval."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def paper_style() -> None:
    """seaborn "paper" context, TrueType fonts in PDFs, a fixed hash salt for reproducible output."""
    sns.set_theme(context="paper", style="white")
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "analysis_lib"})


def save_figure(fig: plt.Figure, stem: str | Path, close: bool = True) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png`` without timestamps, close the figure (unless a notebook still
    shows it), return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    pdf, png = stem.with_suffix(".pdf"), stem.with_suffix(".png")
    fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None, "Producer": "analysis_lib",
                               "Creator": "analysis_lib"}, bbox_inches="tight")
    fig.savefig(png, dpi=300, metadata={"Software": None}, bbox_inches="tight")
    if close:
        plt.close(fig)
    return [pdf, png]


def save_table(frame: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write ``stem.parquet`` and ``stem.csv`` (index dropped), return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(stem.with_suffix(".parquet"), index=False)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    return [stem.with_suffix(".parquet"), stem.with_suffix(".csv")]


def draw_intervals(ax: plt.Axes, x, table: pd.DataFrame, column: str = "accuracy", **style) -> None:
    """``table[column]`` against ``x`` as a line with markers and the 95% interval (``ci_low``/``ci_high``)
    as error bars."""
    y = table[column].to_numpy(dtype=float)
    yerr = np.clip([y - table.ci_low.to_numpy(dtype=float), table.ci_high.to_numpy(dtype=float) - y], 0, None)
    ax.errorbar(x, y, yerr=yerr, capsize=2, elinewidth=0.7, **style)


def reference_band(ax: plt.Axes, row: pd.Series, colour, label: str | None = None) -> None:
    """A reference accuracy (the unpruned model's) as a dashed line over its shaded 95% interval."""
    ax.axhspan(row.ci_low, row.ci_high, color=colour, alpha=0.12, lw=0)
    ax.axhline(row.accuracy, color=colour, ls="--", lw=0.8, label=label)


def interval_labels(values: pd.DataFrame, lows: pd.DataFrame, highs: pd.DataFrame) -> np.ndarray:
    """Heatmap annotations: each value over its 95% interval (``0.71`` / ``.52-.85``)."""
    def short(v: float) -> str:
        return f"{v:.2f}".replace("0.", ".", 1)
    return np.array([[f"{v:.2f}\n{short(lo)}–{short(hi)}" for v, lo, hi in zip(*rows)]
                     for rows in zip(values.to_numpy(), lows.to_numpy(), highs.to_numpy())])
