"""Notebook parameters: one table of defaults per notebook, and the check its validation cell runs.

papermill injects parameters as a cell after the one tagged ``parameters`` and carries on when a name
is misspelled (the misspelled name is simply a new variable). ``collect`` reads every parameter-like
name of the notebook's namespace right after those cells, leaving out the names the notebook's own
cells bind (so Run All works again in the same kernel), so an unknown name, a missing one or a value
of the wrong type stops the notebook at once with the allowed names. Parameters edited by hand (not
the defaults) with ``root="."`` write under ``runs/edited/`` unless ``update_committed=True``. The defaults here and the
notebook's parameters cell are the same table (a test keeps them equal).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace

from ..validation import check_choice, check_range

REPO = Path(__file__).resolve().parents[2]

# Defaults every notebook shares: the embedded default on CPU. For LLaVA-1.5-7B on a GPU pass
# model="llava-hf/llava-1.5-7b-hf" (or a local folder), device="cuda", dtype="float16", a dataset.
COMMON: dict[str, object] = {
    "model": "data/embedded-model",
    "device": "cpu",
    "dtype": "float32",
    "attn_implementation": "sdpa",
    "dataset": "synthetic",
    "split": "test",
    "per_task": 96,  # synthetic suite: samples per task
    "limit": 0,  # other datasets: first N samples (0 = all)
    "batch_size": 32,
    "seed": 0,
    "root": ".",  # figures/<notebook>/ and data/results/<notebook>/ are written under it
    "update_committed": False,  # edited parameters with root "." write under runs/edited/ unless True
    "threads": 1,  # CPU threads (as the batch's kernels; 0 = torch's default)
}

# Each notebook's own parameters (layers are given for a paper_depth-layer model and scaled by depth).
OWN: dict[str, dict[str, object]] = {
    "01_positional_bias": {"paper_layers": [3, 8, 16, 24], "paper_depth": 32, "R": 0.75, "frequency_layer": 3},
    "02_where_pruning_hurts": {"paper_layers": [3, 8, 16, 24], "paper_depth": 32, "ratios": [0.25, 0.5, 0.75, 0.9],
                               "R": 0.75, "ratio_layer": 3, "extra_datasets": []},
    "03_attention_dispersion": {"paper_layer": 3, "paper_depth": 32, "top_fraction": 0.2,
                                "ratios": [0.5, 0.75, 0.9]},
    "04_benchmark_leakage": {"paper_layer": 3, "paper_depth": 32, "R": 0.75, "extra_datasets": []},
    "05_criteria": {"paper_layers": [3, 8], "paper_depth": 32, "R": 0.75, "examples": 4},
    # keep fractions 0.5 and 0.25: on a 6-layer model FEATHER and PyramidDrop (first stage at 8/32 -> layer 2)
    # cannot match FastV's FLOPs (layer 1) below ~0.25 without keeping a single token.
    # methods at keep_fractions: FEATHER Fig. 5 and FoPru Table 2 (25%/50%, with PruMerge and PruMerge+);
    # paper_settings: each method at its paper's setting (layers of 32, counts of paper_tokens, scaled);
    # count_methods at kept_counts: VisPruner Table 1's methods and 128/64/32 of 576, scaled to the model's tokens.
    "06_methods": {"keep_fractions": [0.5, 0.25], "paper_depth": 32,
                   "methods": ["fastv", "pyramiddrop", "feather", "fopru", "fopru_row", "fopru_fastv", "vispruner",
                               "prumerge", "prumerge_plus", "random"], "examples": 4,
                   # FEATHER's criteria (φ-R, φ_uniform, φ_KNN, φ-R + φ_uniform) at its settings: notebook 5; ToMe's
                   # 64 of 576 is beyond a 4-layer tower (it halves at most per layer): in the matched counts
                   "paper_settings": ["fastv", "fastv_feather", "feather", "pyramiddrop", "fopru", "fopru_fastv",
                                      "vispruner", "visionzip", "prumerge", "prumerge_plus", "sparsevlm", "divprune",
                                      "dart"],
                   "paper_tokens": 576,
                   # VisPruner Table 1's methods in its order after the reference, then DivPrune and DART
                   "count_methods": ["fastv", "tome", "sparsevlm", "prumerge_plus", "visionzip", "vispruner",
                                     "divprune", "dart"],
                   "kept_counts": [128, 64, 32], "reference": "fastv"},
    "07_efficiency": {"keep_fractions": [0.5, 0.25, 0.1], "paper_depth": 32,
                      "methods": ["fastv", "feather", "fopru", "vispruner"], "repeats": 3, "new_tokens": 16,
                      "batch_size": 8},  # the timed batch: 8 prompts, as before
}
NOTEBOOKS: dict[str, dict[str, object]] = {name: {**COMMON, **own} for name, own in sorted(OWN.items())}

def _check_paper_layers(p: dict) -> None:
    check_range("R", p["R"], 0.0, 1.0, high_open=True)
    bad = [k for k in p["paper_layers"] if not isinstance(k, int) or not 1 <= k < p["paper_depth"]]
    if bad or not p["paper_layers"]:
        raise ValueError(f"paper_layers={p['paper_layers']!r}: layers of a {p['paper_depth']}-layer model, each in "
                         f"1..{p['paper_depth'] - 1}")


def _check_positional(p: dict) -> None:
    _check_paper_layers(p)
    check_choice("frequency_layer", p["frequency_layer"], p["paper_layers"])


def _check_ratios(p: dict) -> None:
    if not p["ratios"]:
        raise ValueError("ratios: give at least one reduction ratio in [0, 1)")
    for r in p["ratios"]:
        check_range("ratios", r, 0.0, 1.0, high_open=True)


def _check_layer(p: dict) -> None:
    if not isinstance(p["paper_layer"], int) or not 1 <= p["paper_layer"] < p["paper_depth"]:
        raise ValueError(f"paper_layer={p['paper_layer']!r}: a layer of a {p['paper_depth']}-layer model in "
                         f"1..{p['paper_depth'] - 1}")


def _check_dispersion(p: dict) -> None:
    _check_layer(p)
    _check_ratios(p)
    check_range("top_fraction", p["top_fraction"], 0.0, 1.0, low_open=True)


def _check_criteria(p: dict) -> None:
    _check_paper_layers(p)
    if p["examples"] < 1:
        raise ValueError(f"examples={p['examples']!r} must be >= 1")


def _check_where(p: dict) -> None:
    _check_paper_layers(p)
    _check_ratios(p)
    if not isinstance(p["ratio_layer"], int) or not 1 <= p["ratio_layer"] < p["paper_depth"]:
        raise ValueError(f"ratio_layer={p['ratio_layer']!r}: a layer of a {p['paper_depth']}-layer model in "
                         f"1..{p['paper_depth'] - 1}")
    _check_extra(p)


def _check_extra(p: dict) -> None:
    bad = [d for d in p["extra_datasets"] if not isinstance(d, str)]
    if bad:
        raise ValueError(f"extra_datasets: dataset specs are strings (names or paths), got {bad!r}")


def _check_leakage(p: dict) -> None:
    _check_layer(p)
    check_range("R", p["R"], 0.0, 1.0, high_open=True)
    _check_extra(p)


def _check_budgets(p: dict) -> None:
    if not p["keep_fractions"]:
        raise ValueError("keep_fractions: give at least one kept fraction in (0, 1]")
    for f in p["keep_fractions"]:
        check_range("keep_fractions", f, 0.0, 1.0, low_open=True)
    from ..pruning.methods import METHODS
    for name in p["methods"]:
        check_choice("methods", name, [*METHODS, "fopru_row"])
    for name in ("examples", "repeats", "new_tokens"):
        if name in p and p[name] < 1:
            raise ValueError(f"{name}={p[name]!r} must be >= 1")


def _check_methods(p: dict) -> None:
    _check_budgets(p)
    from ..analyses.methods import paper_names
    for name in p["paper_settings"]:
        check_choice("paper_settings", name, paper_names())
    if p["paper_tokens"] < 2:
        raise ValueError(f"paper_tokens={p['paper_tokens']!r} must be >= 2")
    bad = [c for c in p["kept_counts"]
           if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c < p["paper_tokens"]]
    if bad or not p["kept_counts"]:
        raise ValueError(f"kept_counts={p['kept_counts']!r}: token counts of the paper's {p['paper_tokens']}, each in "
                         f"1..{p['paper_tokens'] - 1}")
    from ..analyses.methods import COUNTED
    for name in p["count_methods"]:
        check_choice("count_methods", name, COUNTED)
    check_choice("reference", p["reference"], p["count_methods"])


# Checks of each notebook's own parameters, run after the common ones.
CHECKS = {"01_positional_bias": _check_positional, "02_where_pruning_hurts": _check_where,
          "03_attention_dispersion": _check_dispersion, "04_benchmark_leakage": _check_leakage,
          "05_criteria": _check_criteria, "06_methods": _check_methods, "07_efficiency": _check_budgets}

CHOICES = {"device_prefix": ("cpu", "cuda", "mps"), "dtype": ("float32", "float16", "bfloat16"),
           "attn_implementation": ("sdpa", "eager", "flash_attention_2")}
# Names IPython and Jupyter put in a kernel's namespace.
KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


@cache
def notebook_names(notebook: str) -> frozenset[str]:
    """Names the notebook's own code cells (all but the parameters cell) bind: imports, assignments, loop
    targets. They are the notebook's variables, never parameters, so a second Run All in the same kernel
    (where ``P``, ``fig``, ``session`` already exist) is not mistaken for misspelled parameters."""
    cells = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text(encoding="utf-8"))["cells"]
    names = set()
    for cell in cells:
        if cell["cell_type"] != "code" or "parameters" in cell["metadata"].get("tags", []):
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
    return frozenset(names)


def _parameter_names(namespace: dict, notebook: str) -> dict[str, object]:
    own = notebook_names(notebook)
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and k not in KERNEL_NAMES and k not in own and not isinstance(v, ModuleType)
            and not callable(v)}


def edited_root(notebook: str, values: dict) -> str:
    """``runs/edited/<notebook>/<changed parameters>``: where a run whose parameters differ from the defaults
    writes when it keeps ``root="."`` and does not ask to ``update_committed``; ``"."`` otherwise."""
    defaults = NOTEBOOKS[notebook]
    changed = {k: v for k, v in values.items() if k not in ("root", "update_committed", "threads") and v != defaults[k]}
    if values["root"] != "." or values["update_committed"] or not changed:
        return values["root"]
    name = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", ",".join(f"{k}={v}" for k, v in sorted(changed.items())))
    if len(name) > 60:
        name = f"{name[:50]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return str(Path("runs") / "edited" / notebook / name)


def _same_kind(value: object, default: object) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def collect(namespace: dict, notebook: str) -> SimpleNamespace:
    """The checked parameters of ``notebook`` from its namespace (``globals()`` in the notebook).

    JupyterLab starts a notebook's kernel in ``notebooks/``; relative paths (the default model, ``root``)
    are meant from the repository root, so the kernel moves there (papermill runs already do)."""
    if Path.cwd().resolve() == (REPO / "notebooks").resolve():
        os.chdir(REPO)
    check_choice("notebook", notebook, NOTEBOOKS)
    defaults = NOTEBOOKS[notebook]
    given = _parameter_names(namespace, notebook)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{notebook}: unknown parameter(s) {unknown} (misspelled?); allowed: {', '.join(defaults)}")
    missing = sorted(set(defaults) - set(given))
    if missing:
        raise ValueError(f"{notebook}: the parameters cell must define {missing}")
    for name, default in defaults.items():
        if not _same_kind(given[name], default):
            raise ValueError(f"{notebook}: parameter {name}={given[name]!r} must be of type {type(default).__name__} "
                             f"like its default {default!r}")
    check_choice("device", str(given["device"]).split(":")[0], CHOICES["device_prefix"])
    check_choice("dtype", given["dtype"], CHOICES["dtype"])
    check_choice("attn_implementation", given["attn_implementation"], CHOICES["attn_implementation"])
    if given["threads"] < 0:
        raise ValueError(f"{notebook}: parameter threads={given['threads']!r} must be >= 0 (0 = torch's default)")
    for name in ("per_task", "batch_size"):
        if given[name] < 1:
            raise ValueError(f"{notebook}: parameter {name}={given[name]!r} must be >= 1")
    if given["limit"] < 0:
        raise ValueError(f"{notebook}: parameter limit={given['limit']!r} must be >= 0 (0 = all samples)")
    values = {k: given[k] for k in defaults}
    if notebook in CHECKS:
        CHECKS[notebook](values)
    values["root"] = edited_root(notebook, values)
    return SimpleNamespace(notebook=notebook, **values)
