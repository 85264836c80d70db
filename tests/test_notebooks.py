"""The notebooks: parameters cells match the library's defaults, bad parameters stop a notebook, and the
papermill batch runs every notebook on the CI profile (the embedded checkpoint, a few samples)."""
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from analysis_lib.notebooks.batch import NOTEBOOK_DIR, NotebookFailed, load_profile, profiles, run_batch
from analysis_lib.notebooks.parameters import NOTEBOOKS, collect


def parameters_cell(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    return nb, index


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_equals_the_library_defaults_and_is_validated_next(name):
    nb, index = parameters_cell(name)
    namespace = {}
    exec(nb.cells[index].source, namespace)
    namespace.pop("__builtins__")
    assert namespace == NOTEBOOKS[name]
    assert f'collect(globals(), "{name}")' in nb.cells[index + 1].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs


def test_every_notebook_file_is_registered():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("change, message", [
    ({"batchsize": 4}, r"unknown parameter\(s\) \['batchsize'\].*allowed: model, device"),
    ({"batch_size": "8"}, "batch_size='8' must be of type int"),
    ({"dtype": "float64"}, "dtype='float64'"),
    ({"R": 1.0}, r"R=1.0 is outside the allowed range"),
    ({"paper_layers": [3, 40]}, "paper_layers"),
])
def test_collect_rejects_bad_parameters(change, message):
    namespace = {**NOTEBOOKS["01_positional_bias"], **change, "In": [], "json": json}
    with pytest.raises(ValueError, match=message):
        collect(namespace, "01_positional_bias")


@pytest.mark.parametrize("name, change, message", [
    ("02_where_pruning_hurts", {"ratios": [0.5, 1.2]}, "ratios=1.2"),
    ("02_where_pruning_hurts", {"extra_datasets": ["pope", 3]}, "extra_datasets: dataset specs are strings"),
    ("03_attention_dispersion", {"top_fraction": 0.0}, "top_fraction=0.0"),
    ("04_benchmark_leakage", {"paper_layer": 32}, "paper_layer=32"),
    ("05_criteria", {"examples": 0}, "examples=0"),
    ("06_methods", {"methods": ["fastv", "fastvv"]}, "methods='fastvv'"),
    ("06_methods", {"paper_settings": ["fastv", "fastvv"]}, "paper_settings='fastvv'"),
    ("06_methods", {"kept_counts": [64, 576]}, r"kept_counts=\[64, 576\]: token counts of the paper's 576"),
    ("06_methods", {"kept_counts": []}, "kept_counts=\\[\\]"),
    ("06_methods", {"reference": "knn"}, "reference='knn'"),
    ("06_methods", {"reference": "pyramiddrop"}, "reference='pyramiddrop'.*allowed.*'visionzip', 'vispruner'"),
    ("06_methods", {"count_methods": ["fastv", "uniform"]}, "count_methods='uniform'.*allowed.*visionzip"),
    ("07_efficiency", {"keep_fractions": [0.0]}, "keep_fractions=0.0"),
])
def test_each_notebook_checks_its_own_parameters(name, change, message):
    assert collect({**NOTEBOOKS[name]}, name).notebook == name  # the defaults pass
    with pytest.raises(ValueError, match=message):
        collect({**NOTEBOOKS[name], **change}, name)


def test_profiles_cover_known_notebooks():
    assert {"default", "ci", "llava-1.5-7b"} <= set(profiles())
    assert load_profile("llava-1.5-7b")["01_positional_bias"]["device"] == "cuda"
    with pytest.raises(ValueError, match="profile='gpu'"):
        load_profile("gpu")


def test_a_misspelled_parameter_stops_the_batch_with_the_notebook_and_error(tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("common: {}\nnotebooks:\n  01_positional_bias: {batchsize: 3}\n")
    with pytest.raises(NotebookFailed, match=r"notebook 01_positional_bias failed in cell .*unknown parameter"):
        run_batch(profile, only=["01_positional_bias"], run_dir=tmp_path / "run", root=tmp_path, progress=False)


@pytest.fixture(scope="module")
def ci_batch(tmp_path_factory):
    """The ci profile's batch, two notebooks at a time: (root, executed copies' folder, executed copies)."""
    root = tmp_path_factory.mktemp("ci-batch")
    return root, root / "run", run_batch("ci", run_dir=root / "run", root=root, progress=False, jobs=2)


def test_ci_batch_runs_every_notebook_and_writes_reproducible_figures(ci_batch):
    """Two notebooks at a time first, then one by one: the same figures, byte for byte."""
    root, run, executed = ci_batch
    assert [p.stem for p in executed] == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        figures = sorted((root / "figures" / name).glob("*"))
        tables = sorted((root / "data" / "results" / name).glob("*"))
        assert {p.suffix for p in figures} == {".pdf", ".png"} and {p.suffix for p in tables} == {".parquet", ".csv"}
        last = nbformat.read(run / f"{name}.ipynb", as_version=4).cells[-1]
        assert any("text/markdown" in o.get("data", {}) for o in last.outputs)  # the closing summary
    first = {p: p.read_bytes() for p in (root / "figures").rglob("*.p*")}
    run_batch("ci", run_dir=run, root=root, progress=False)
    assert {p: p.read_bytes() for p in (root / "figures").rglob("*.p*")} == first
    skipped = run_batch("ci", run_dir=run, root=root, skip_up_to_date=True, progress=False)
    assert [Path(p).stem for p in skipped] == list(NOTEBOOKS)


def test_a_notebook_is_not_up_to_date_under_another_hub_cache(ci_batch, monkeypatch, capsys):
    """The benchmarks' source is an input: pointing HF_HUB_CACHE elsewhere runs the notebook again."""
    root, run, _ = ci_batch
    run_batch("ci", only=["07_efficiency"], run_dir=run, root=root, skip_up_to_date=True, progress=False)
    assert "07_efficiency: up to date, skipped" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "another-hub"))
    run_batch("ci", only=["07_efficiency"], run_dir=run, root=root, skip_up_to_date=True, progress=False)
    out = capsys.readouterr().out
    assert "07_efficiency: done in" in out and "up to date" not in out


def test_a_timing_notebook_runs_alone_and_the_others_side_by_side():
    from analysis_lib.notebooks.batch import ALONE, LONGEST_FIRST, _phases
    jobs = [(name,) for name in NOTEBOOKS]
    phases = [[job[0] for job in phase] for phase in _phases(jobs, {})]
    assert sorted(name for phase in phases for name in phase) == sorted(NOTEBOOKS)
    assert all(len(phase) == 1 for phase in phases if set(phase) & ALONE) and len(phases) < len(NOTEBOOKS)
    assert phases[0][:2] == list(LONGEST_FIRST[:2])  # the longest start first
    last = {"01_positional_bias": 300.0, "06_methods": 10.0}
    assert _phases(jobs, last)[0][0] == ("01_positional_bias",)  # a batch's own durations decide
    with pytest.raises(ValueError, match="jobs=0: must be an integer >= 1"):
        run_batch("ci", jobs=0)


def test_06_methods_on_ci_writes_each_comparison_with_intervals(ci_batch):
    """Notebook 6's three comparisons (matched FLOPs, the papers' settings, matched kept counts): every accuracy
    table with its interval and samples, the differences with theirs, a figure each."""
    tmp_path, run, _ = ci_batch
    tables = tmp_path / "data" / "results" / "06_methods"
    interval = {"ci_low", "ci_high", "samples"}
    for name in ("accuracy_by_family", "paper_settings", "matched_counts"):
        assert interval | {"accuracy", "flops_reduction"} <= set(pd.read_parquet(tables / f"{name}.parquet"))
    for name in ("paper_settings", "matched_counts"):  # the tokens kept at the end, measured
        assert "kept_tokens" in set(pd.read_parquet(tables / f"{name}.parquet"))
    for name in ("difference_from_fastv", "difference_at_matched_counts"):
        assert interval | {"difference", "excludes_zero"} <= set(pd.read_parquet(tables / f"{name}.parquet"))
    counts = pd.read_parquet(tables / "matched_counts.parquet")
    assert set(counts[counts.name != "unpruned"].kept_count) == {16}  # 64 of 576 on 12x12
    exact = counts[~counts.name.isin(["unpruned", "tome"])]
    assert exact.same_count.all() and not counts[counts.name == "tome"].same_count.any()  # 18: a 4-layer tower
    assert {"visionzip", "dart", "tome", "sparsevlm"} <= set(counts.name)  # merging, in-LLM, in the tower
    paper = pd.read_parquet(tables / "paper_settings.parquet").set_index("name")
    assert 1 <= paper.loc["prumerge_plus", "kept_tokens"].min() < 144  # its adaptive count, measured
    assert "prumerge" in set(pd.read_parquet(tables / "accuracy_by_family.parquet").name)
    figures = {p.name for p in (tmp_path / "figures" / "06_methods").glob("*.png")}
    assert {"paper_settings.png", "accuracy_vs_kept_count.png", "accuracy_vs_flops.png"} <= figures
    summary = nbformat.read(run / "06_methods.ipynb", as_version=4).cells[-1].outputs[0].data
    assert "Matched kept-token counts" in summary["text/markdown"]


def test_a_notebook_opened_in_jupyterlab_runs_from_the_repository_root(tmp_path):
    """JupyterLab starts the kernel in notebooks/; papermill with that working directory mimics it."""
    import papermill
    papermill.execute_notebook(NOTEBOOK_DIR / "01_positional_bias.ipynb", tmp_path / "out.ipynb",
                               parameters={"per_task": 1, "paper_layers": [3], "root": str(tmp_path)},
                               kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False)
    assert (tmp_path / "figures" / "01_positional_bias" / "kept_frequency.png").exists()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_notebook_cell_rebinds_a_parameter(name):
    from analysis_lib.notebooks.parameters import notebook_names
    assert not notebook_names(name) & set(NOTEBOOKS[name])  # else a second Run All would read the cell's value


def test_edited_parameters_write_outside_the_committed_results():
    defaults = NOTEBOOKS["02_where_pruning_hurts"]
    assert collect({**defaults}, "02_where_pruning_hurts").root == "."
    edited = collect({**defaults, "per_task": 4, "ratios": [0.5]}, "02_where_pruning_hurts")
    assert edited.root == "runs/edited/02_where_pruning_hurts/per_task=4,ratios=_0.5_"
    assert collect({**defaults, "per_task": 4, "update_committed": True}, "02_where_pruning_hurts").root == "."
    assert collect({**defaults, "per_task": 4, "root": "/tmp/x"}, "02_where_pruning_hurts").root == "/tmp/x"


def test_run_all_twice_in_one_kernel_gives_the_same_outputs(tmp_path):
    """What JupyterLab's Run All does twice: every cell, twice, in one kernel (nbclient, no papermill)."""
    from nbclient import NotebookClient

    from analysis_lib.notebooks.parameters import REPO
    name = "02_where_pruning_hurts"
    nb, index = parameters_cell(name)
    nb.cells[index].source += (f'\nper_task = 1\npaper_layers = [3]\nratios = [0.5]\nroot = "{tmp_path}"\n')
    client = NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    runs = []
    with client.setup_kernel():
        for _ in range(2):
            for i, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, i)
            # stderr (import-time warnings) appears once per kernel; everything else must repeat exactly
            runs.append([json.dumps([o for o in c.outputs if o.get("name") != "stderr"], sort_keys=True)
                         for c in nb.cells if c.cell_type == "code"])
            runs[-1].append({p.name: p.read_bytes() for p in (tmp_path / "figures" / name).glob("*")})
    assert runs[0] == runs[1]
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and "session.figure(" in c.source]
    for cell in figure_cells:  # the figure and nothing else
        assert [o.output_type for o in cell.outputs] == ["display_data"] and "image/png" in cell.outputs[0].data
