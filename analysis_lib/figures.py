"""Paper-ready figure export: PDF (TrueType fonts) + 300 dpi PNG, byte-identical across re-runs."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
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
