"""What every notebook does first: load the model and the samples its parameters name, and know where
its figures and tables go."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from ..evaluation.datasets import EvalSample, load_dataset
from ..evaluation.runner import EvalModel, load_eval_model
from ..figures import paper_style


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


def open_session(params: SimpleNamespace) -> Session:
    """Load the dataset first (cheap errors first), then the model; set the paper figure style."""
    options = {"per_task": params.per_task} if params.dataset.split(":")[0] == "synthetic" else {}
    samples = load_dataset(params.dataset, split=params.split if params.dataset == "synthetic" else None,
                           limit=params.limit or None, seed=params.seed, **options)
    model = load_eval_model(params.model, params.device, params.dtype, params.attn_implementation)
    paper_style()
    return Session(params, model, samples)
