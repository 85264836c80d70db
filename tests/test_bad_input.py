"""Bad input at every entry point: one clear line naming the argument, the value and what is allowed,
before any work is done (no model loaded, no batch evaluated, nothing written)."""
import subprocess
import sys
from pathlib import Path

import pytest

from analysis_lib.capture import capture_attention
from analysis_lib.cli import main
from analysis_lib.evaluation import runner
from analysis_lib.evaluation.datasets import load_jsonl
from analysis_lib.evaluation.runner import run_grid
from analysis_lib.notebooks.batch import load_profile, output_root, run_batch
from analysis_lib.pruning import PruningEngine, get_method
from analysis_lib.training.__main__ import main as training_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def no_work(monkeypatch):
    """Fails the test if a model is loaded or a batch evaluated."""
    def refuse(*_a, **_k):
        raise AssertionError("work started before the bad input was refused")
    monkeypatch.setattr(runner, "load_eval_model", refuse)
    monkeypatch.setattr(runner, "evaluate_batch", refuse)


def cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


EVAL = ["eval", "--model", "data/embedded-model", "--dataset", "synthetic", "--limit", "2"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "fastv:R=abc"], "method parameter R='abc': must be a number"),
    (["--methods", "fastv:R=nan"], "method parameter R='nan': must be a finite number"),
    (["--methods", "fastv:R=0.5,R=0.9"], "method parameter R is given twice"),
    (["--device", "foo"], "device='foo' is not a device"),
    (["--device", "cuda:99"], "device='cuda:99': this machine has"),
    (["--prompt", "localization={question} {x}"], "unknown field(s) ['x']"),
    (["--prompt", "localization=no question here"], "must contain '{question}'"),
    (["--batch-size", "0"], "batch_size=0: must be an integer >= 1"),
])
def test_eval_arguments_are_refused_before_the_model_loads(argv, message, tmp_path, capsys, no_work):
    assert message in cli_error(capsys, [*EVAL, "--out", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out" / "parts").exists()


def test_an_output_path_that_is_a_file_or_unwritable_is_refused_first(tmp_path, capsys, no_work):
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    assert f"out='{a_file}' is a file" in cli_error(capsys, [*EVAL, "--out", str(a_file)])
    assert "cannot write there" in cli_error(capsys, [*EVAL, "--out", str(a_file / "under-a-file")])


def test_a_missing_model_folder_and_an_uncached_hub_id(tmp_path, capsys, monkeypatch):
    err = cli_error(capsys, ["eval", "--model", "/nonexistent/model", "--dataset", "synthetic", "--limit", "1",
                             "--out", str(tmp_path)])
    assert "model '/nonexistent/model': no such folder" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    err = cli_error(capsys, ["eval", "--model", "nobody/no-such-model", "--dataset", "synthetic", "--limit", "1",
                             "--out", str(tmp_path)])
    assert "not in the local Hugging Face cache" in err and "huggingface-cli download nobody/no-such-model" in err


def test_an_impossible_budget_fails_before_the_first_batch(model, tmp_path, no_work):
    with pytest.raises(ValueError, match=r"method 'vispruner keep=5000' on dataset 'synthetic'.*exceeds the \d+ "
                                         r"visual tokens"):
        run_grid([model], ["none", "vispruner:keep=5000"], ["synthetic"], tmp_path, limit=2, progress=False)
    assert not (tmp_path / "parts").exists()


def test_flops_refuses_negative_token_counts(capsys):
    err = cli_error(capsys, ["flops", "--model", "llava-1.5-7b", "--method", "fastv", "--text-tokens", "-5"])
    assert "--text-tokens=-5: must be an integer >= 0" in err
    err = cli_error(capsys, ["flops", "--model", "llava-1.5-7b", "--method", "fastv", "R=0.5", "R=0.9"])
    assert "method parameter R is given twice" in err


def test_python_api_misuse_gets_a_clear_error(models):
    model = models[("llava", "sdpa")]
    with pytest.raises(TypeError, match=r"schedule='fastv': expected a Schedule, e.g. get_method\('fastv'\)"):
        PruningEngine(model, "fastv")
    with pytest.raises(ValueError, match="fastv parameter R='0.5': must be a finite number"):
        get_method("fastv").schedule(R="0.5")
    with pytest.raises(ValueError, match="fastv parameter R=nan: must be a finite number"):
        get_method("fastv").schedule(R=float("nan"))
    with pytest.raises(ValueError, match="reorder parameter|must be True or False"):
        get_method("fopru").schedule(reorder="yes")
    with pytest.raises(ValueError, match="layers=5: give a list of layer indices"):
        with capture_attention(model, layers=5):
            pass


def test_a_jsonl_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b'\n{"id": "caf\xe9", "image": "a.png", "question": "q", "answers": ["x"], "task": "vqa"}\n')
    with pytest.raises(ValueError, match=rf"{path}, line 2: not UTF-8 text"):
        load_jsonl(path)


def test_a_malformed_profile_names_its_file_and_line(tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text("common:\n  model: [unclosed\n")
    with pytest.raises(ValueError, match=rf"profile {profile}, line \d+: not valid YAML"):
        load_profile(profile)
    profile.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_profile(profile)
    with pytest.raises(FileNotFoundError, match="no-such.yaml: no such file"):
        load_profile(tmp_path / "no-such.yaml")


def test_a_non_default_profile_never_writes_the_committed_results():
    assert output_root("default", None, False) == ROOT
    assert output_root("ci", None, False) == ROOT / "runs" / "reproduce" / "ci"
    assert output_root("ci", None, True) == ROOT
    with pytest.raises(ValueError, match="would overwrite the committed figures and tables; pass --update-committed"):
        run_batch("ci", root=ROOT, progress=False)


def test_training_evaluate_refuses_bad_arguments_before_loading(capsys, tmp_path):
    assert training_main(["evaluate", "--model", "data/embedded-model", "--split", "nosuch"]) == 2
    assert "split='nosuch' is not supported; allowed values:" in capsys.readouterr().err
    assert training_main(["evaluate", "--model", str(tmp_path), "--split", "test"]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert training_main(["evaluate", "--model", "data/embedded-model", "--per-task", "0"]) == 2
    assert "per_task=0: must be an integer >= 1" in capsys.readouterr().err


def test_the_cli_never_prints_a_traceback_for_a_user_error_unless_asked():
    command = [sys.executable, "-m", "analysis_lib", "eval", "--model", "x/y", "--methods", "fastv:R=abc",
               "--dataset", "synthetic", "--out", "/tmp/never-written"]
    plain = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([*command[:3], "--debug", *command[3:]], capture_output=True, text=True, cwd=ROOT)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_skip_up_to_date_needs_the_notebooks_outputs(tmp_path):
    from analysis_lib.notebooks.batch import outputs_exist
    figures, tables = tmp_path / "figures" / "01_positional_bias", tmp_path / "data" / "results" / "01_positional_bias"
    assert not outputs_exist(tmp_path, "01_positional_bias")
    figures.mkdir(parents=True)
    tables.mkdir(parents=True)
    (tables / "t.csv").write_text("a\n")
    assert not outputs_exist(tmp_path, "01_positional_bias"), "an empty figure folder is not up to date"
    (figures / "f.png").write_bytes(b"")
    assert outputs_exist(tmp_path, "01_positional_bias")
