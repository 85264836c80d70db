"""The command line: flops, methods, and clear errors."""
import subprocess
import sys

import pytest

from analysis_lib.cli import main


def test_flops_command_prints_the_reduction(capsys):
    assert main(["flops", "--model", "llava-1.5-7b", "--method", "fastv", "K=3", "R=0.5"]) == 0
    out = capsys.readouterr().out
    assert "after layer 3: keep 288 of 576 visual tokens" in out
    assert "reduction 43.4%" in out  # = 1 - 0.566: FastV keeps ≈57% of LLaVA-1.5-7B's FLOPs


def test_flops_accepts_every_registered_method(capsys):
    """Every method but ToMe, which merges inside a CLIP tower the SigLIP preset does not describe (refused)."""
    from analysis_lib.pruning.methods import METHODS
    for name in METHODS:
        if METHODS[name].schedule().changes_vision_tower:
            assert main(["flops", "--model", "feather-siglip-llama2-7b", "--method", name]) == 2
            assert "presets with one: llava-1.5-7b, llava-1.5-13b" in capsys.readouterr().err
            continue
        assert main(["flops", "--model", "feather-siglip-llama2-7b", "--method", name]) == 0
        assert "729 visual" in capsys.readouterr().out


def test_flops_of_tome_report_the_vision_tower_alongside(capsys):
    assert main(["flops", "--model", "llava-1.5-7b", "--method", "tome", "keep=64"]) == 0
    out = capsys.readouterr().out
    assert "before the LLM: keep 64 of 576 visual tokens" in out
    assert "tokens per layer 577 554" in out and "-> 65" in out and "vision tower FLOPs:" in out


@pytest.mark.parametrize("argv, message", [
    (["flops", "--model", "llava-1.5-7b", "--method", "fastv", "R=1.0"], r"R=1.0 is outside the allowed range \[0.0, 1.0\)"),
    (["flops", "--model", "llava-1.5-7b", "--method", "nope"], "method='nope'.*'fastv'"),
    (["flops", "--model", "llava-1.5-7b", "--method", "fastv", "K=40"], r"layer=40 is outside this 32-layer model"),
    (["flops", "--model", "gpt-9", "--method", "fastv"], "presets: llava-1.5-7b"),
])
def test_bad_input_names_the_parameter(capsys, argv, message):
    import re
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


def test_methods_lists_parameters_and_defaults():
    out = subprocess.run([sys.executable, "-m", "analysis_lib", "methods"], capture_output=True, text=True,
                         check=True).stdout
    assert "fastv(K=2, R=0.5, scope=global)" in out and "random(K=0, R=0.5, seed=0, scope=global)" in out
