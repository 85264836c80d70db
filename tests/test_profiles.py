"""The shipped profiles and the batch's check of their datasets against the local copies (no notebook runs)."""
from __future__ import annotations

import os

import pytest

from analysis_lib.evaluation.datasets import BENCHMARKS, check_local_copy
from analysis_lib.notebooks.availability import MissingDatasets, dataset_specs
from analysis_lib.notebooks.batch import profiles, read_profile, resolve_profile, run_batch
from analysis_lib.notebooks.parameters import NOTEBOOKS

GPU_PROFILES = ("llava-1.5-7b", "qwen2.5-vl-7b", "qwen3-vl-8b")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A hub cache holding no dataset."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _copy(cache, repo: str) -> None:
    """A hub-cache folder with one snapshot: what the check looks for (it reads no data)."""
    (cache / f"datasets--lmms-lab--{repo}" / "snapshots" / "0123abc").mkdir(parents=True)


def _profile(tmp_path, policy: str, notebooks: str):
    path = tmp_path / "p.yaml"
    path.write_text(f"missing_datasets: {policy}\ncommon: {{dataset: refcoco}}\nnotebooks:\n{notebooks}")
    return path


@pytest.mark.parametrize("name", profiles())
def test_every_shipped_profile_loads_and_names_only_known_benchmarks(name):
    settings, policy, _ = read_profile(name)
    assert policy == "fail"
    for notebook, parameters in settings.items():
        for spec in dataset_specs(notebook, parameters):
            assert spec == "synthetic" or spec.partition(":")[0] in BENCHMARKS, (name, notebook, spec)


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_the_gpu_profiles_evaluate_the_papers_benchmarks(name):
    settings = read_profile(name).settings
    named = {s for notebook, p in settings.items() for s in dataset_specs(notebook, p)}
    assert named == set(BENCHMARKS)
    assert {"refcoco", "refcoco+", "refcocog"} <= set(dataset_specs("02_where_pruning_hurts", settings[
        "02_where_pruning_hurts"]))


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_a_profile_with_nothing_downloaded_fails_fast_reporting_each_benchmark_once(name, empty_cache, capsys):
    with pytest.raises(MissingDatasets) as err:
        run_batch(name, run_dir=empty_cache / "run", root=empty_cache / "out", progress=False)
    message = str(err.value)
    assert message.startswith(f"{len(BENCHMARKS)} dataset(s) the profile names have no local copy")
    for bench in BENCHMARKS.values():
        assert message.count(f"no local copy of benchmark {bench.name!r}") == 1
        assert f"huggingface-cli download {bench.hub_id} --repo-type dataset" in message
    assert f"Looked for: {empty_cache}/datasets--lmms-lab--RefCOCO/snapshots/<revision>" in message
    assert not (empty_cache / "run").exists()  # stopped before any notebook


def test_skip_runs_without_the_missing_benchmarks_and_says_so(tmp_path, empty_cache):
    _copy(empty_cache, "POPE")
    _copy(empty_cache, "textvqa")
    profile = _profile(tmp_path, "skip", "  02_where_pruning_hurts: {extra_datasets: [refcoco+, pope, textvqa]}\n"
                                         "  07_efficiency: {dataset: pope}\n")
    settings, lines = resolve_profile(profile, only=["02_where_pruning_hurts", "05_criteria", "07_efficiency"])
    assert settings["02_where_pruning_hurts"]["dataset"] == "pope"
    assert settings["02_where_pruning_hurts"]["extra_datasets"] == ["textvqa"]
    assert settings["07_efficiency"]["dataset"] == "pope"
    assert "05_criteria" not in settings
    assert lines[0].count("no local copy of benchmark 'refcoco'") == 1
    assert "02_where_pruning_hurts: runs without refcoco, refcoco+" in lines
    assert "05_criteria: skipped, none of its datasets has a local copy (refcoco)" in lines


def test_present_copies_and_the_synthetic_suite_pass_unchanged(tmp_path, empty_cache):
    _copy(empty_cache, "RefCOCO")
    profile = _profile(tmp_path, "fail", "  01_positional_bias: {dataset: synthetic}\n")
    settings, lines = resolve_profile(profile)
    assert lines == [] and settings["01_positional_bias"]["dataset"] == "synthetic"
    assert settings["05_criteria"] == {"dataset": "refcoco"}


def test_a_bad_missing_datasets_value_is_refused_naming_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"missing_datasets='ignore' is not supported; allowed values: 'fail', "
                                         r"'skip'"):
        read_profile(_profile(tmp_path, "ignore", "  05_criteria: {}\n"))


def test_an_unknown_benchmark_name_is_refused_before_any_notebook(tmp_path, empty_cache):
    with pytest.raises(ValueError, match="unknown dataset 'refcocoo'"):
        resolve_profile(_profile(tmp_path, "skip", "  05_criteria: {dataset: refcocoo}\n"))


def test_check_local_copy_reads_paths_and_names(tmp_path, empty_cache):
    check_local_copy("synthetic:test")
    check_local_copy(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset path .*nope.jsonl does not exist"):
        check_local_copy(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="no local copy of benchmark 'pope'"):
        check_local_copy("pope:adversarial")


def test_a_profile_on_a_base_overrides_it_everywhere_and_names_its_hub_cache(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("missing_datasets: skip\ncommon: {dataset: pope, limit: 50}\n"
                    "notebooks: {01_positional_bias: {limit: 1000, dataset: gqa}}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nhub_cache: /data/hub\ncommon: {limit: 2}\n"
                                         "notebooks: {07_efficiency: {limit: 5}}\n")
    child = read_profile(tmp_path / "child.yaml")
    assert child.settings["01_positional_bias"] == {"dataset": "gqa", "limit": 2}  # common beats the base's notebook
    assert child.settings["07_efficiency"] == {"dataset": "pope", "limit": 5}
    assert child.missing_datasets == "skip" and str(child.hub_cache) == "/data/hub"
    base.write_text("base: child.yaml\n")
    with pytest.raises(ValueError, match=r"'base' profiles form a cycle \(child.yaml -> base.yaml -> child.yaml\)"):
        read_profile(tmp_path / "child.yaml")
    base.write_text("base: [child.yaml]\n")
    with pytest.raises(ValueError, match=r"base=\['child.yaml'\] must be a profile name or YAML path"):
        read_profile(tmp_path / "base.yaml")
    base.write_text("bases: child.yaml\n")
    with pytest.raises(ValueError, match=r"unknown sections \['bases'\]; allowed: 'base'"):
        read_profile(tmp_path / "child.yaml")


def test_the_rehearsal_is_llava_1_5_7b_with_model_data_and_device_swapped():
    rehearsal, real = read_profile("rehearsal"), read_profile("llava-1.5-7b")
    assert real.hub_cache is None and rehearsal.hub_cache.parts[-3:] == ("runs", "rehearsal", "hub")
    for notebook in NOTEBOOKS:
        assert dataset_specs(notebook, rehearsal.settings[notebook]) == dataset_specs(notebook, real.settings[notebook])
        assert rehearsal.settings[notebook]["model"] == "runs/rehearsal/model"
        assert (rehearsal.settings[notebook]["device"], rehearsal.settings[notebook]["dtype"]) == ("cpu", "float32")


def test_the_hub_cache_of_a_profile_is_where_its_benchmarks_are_looked_for(tmp_path, empty_cache):
    elsewhere = tmp_path / "elsewhere"
    _copy(elsewhere, "RefCOCO")
    profile = tmp_path / "p.yaml"
    profile.write_text(f"hub_cache: {elsewhere}\ncommon: {{dataset: refcoco}}\n")
    settings, lines = resolve_profile(profile, only=["05_criteria"])
    assert lines == [] and settings["05_criteria"]["dataset"] == "refcoco"
    assert os.environ["HF_HUB_CACHE"] == str(empty_cache)  # restored after the check
