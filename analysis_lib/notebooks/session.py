"""What every notebook does first: load the model and the samples its parameters name, use the batch's
thread setting, and know where its figures and tables go; and how a cell saves them (a figure cell shows
the figure and nothing else)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..evaluation.datasets import EvalSample, load_dataset
from ..evaluation.launch import Launch
from ..evaluation.runner import EvalModel, load_eval_model
from ..figures import paper_style, save_figure, save_table


FIGURE_WIDTH_PX = 900  # the 300-dpi PNG shown at a readable size


@dataclass
class Session:
    params: SimpleNamespace
    model: EvalModel
    samples: list[EvalSample]

    @property
    def figures(self) -> Path:
        return Path(self.params.root) / "figures" / self.params.notebook

    @property
    def tables(self) -> Path:
        return Path(self.params.root) / "data" / "results" / self.params.notebook

    @property
    def runs(self) -> Path:
        """The notebook's evaluation results tables."""
        return Path(self.params.root) / "runs" / self.params.notebook

    @property
    def store(self) -> Path:
        """Finished evaluation batches of every notebook: a batch two notebooks share (the unpruned model,
        FastV's setting) is computed once, and reused when a notebook runs again."""
        return Path(self.params.root) / "runs" / "store"

    def figure(self, fig: plt.Figure, name: str) -> None:
        """Write ``figures/<notebook>/<name>.pdf/.png``, close the figure and show the saved PNG once: the
        notebook shows exactly the paper's file, the same on every run whatever the kernel's matplotlib
        backend (displaying the figure object shows only its repr before the inline backend is active)."""
        from IPython.display import Image, display
        _, png = save_figure(fig, self.figures / name)
        display(Image(filename=str(png), width=FIGURE_WIDTH_PX))

    def table(self, frame: pd.DataFrame, name: str) -> None:
        """Write ``data/results/<notebook>/<name>.parquet/.csv``."""
        save_table(frame, self.tables / name)


def open_session(params: SimpleNamespace) -> Session:
    """Load the dataset first (cheap errors first), then the model, on ``params.threads`` CPU threads (the
    batch's setting; 0 keeps torch's default); set the paper figure style."""
    if params.threads:
        torch.set_num_threads(params.threads)
    options = {"per_task": params.per_task} if params.dataset.split(":")[0] == "synthetic" else {}
    samples = load_dataset(params.dataset, split=params.split if params.dataset == "synthetic" else None,
                           limit=params.limit or None, seed=params.seed, **options)
    device = Launch.from_env().device(params.device)  # a launched batch's rank: its own GPU
    model = load_eval_model(params.model, device, params.dtype, params.attn_implementation)
    paper_style()
    return Session(params, model, samples)
