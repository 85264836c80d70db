"""The supported range is declared once, checked at import, and the lock stays inside it."""
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from analysis_lib import compat, dependencies
from analysis_lib.compat import UnsupportedEnvironment

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_pyproject_declares_the_checked_range():
    transformers = next(Requirement(r) for r in PROJECT["dependencies"] if r.startswith("transformers"))
    assert transformers.specifier == SpecifierSet(compat.supported_range_text())
    assert PROJECT["requires-python"] == ">=" + ".".join(map(str, compat.MIN_PYTHON))


@pytest.mark.parametrize("version", ["5.16.1", "5.25.0", "5.25.0.dev0", "6.0.0", "4.57.1"])
def test_transformers_outside_the_range_is_one_clear_error(version):
    with pytest.raises(UnsupportedEnvironment) as error:
        compat.check_transformers(version)
    message = str(error.value)
    assert "\n" not in message
    assert f"transformers {version} is installed" in message and ">=5.17,<5.25" in message


@pytest.mark.parametrize("version", ["5.17.0", "5.20.2", "5.24.0"])
def test_transformers_inside_the_range_passes(version):
    compat.check_transformers(version)


def test_the_override_warns_instead_and_a_missing_transformers_says_how_to_install():
    with pytest.warns(UserWarning, match="transformers 5.30.0 is installed.*continuing untested"):
        compat.check_transformers("5.30.0", allow=True)
    with pytest.raises(UnsupportedEnvironment, match="not installed"):
        compat.check_transformers(None)


def test_an_old_python_is_refused_naming_both_versions():
    with pytest.raises(UnsupportedEnvironment, match=r"needs Python >= 3\.11; this is Python 3\.10\.13"):
        compat.check_python((3, 10, 13))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_python((3, 11, 0))


def test_importing_with_an_unsupported_transformers_fails_with_one_line():
    code = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda p: '5.30.0' if p == 'transformers' else real(p); import analysis_lib")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("analysis_lib.compat.UnsupportedEnvironment: transformers 5.30.0 is installed")
    assert ">=5.17,<5.25" in last


def test_lock_lines_parse_and_compare():
    pins = dependencies.parse_pins("# header\ntorch==2.13.0+cpu\nTyping_Extensions==4.12.2  # why\n\n")
    assert pins == {"torch": "2.13.0", "typing-extensions": "4.12.2"}
    assert dependencies.parse_pins(dependencies.format_lock(pins)) == pins
    with pytest.raises(ValueError, match="expected name==version"):
        dependencies.parse_pins("numpy>=1")
    assert [str(c) for c in dependencies.changes({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "1"})] == [
        "b: 2 -> 3", "c: (absent) -> 1"]
    assert [str(c) for c in dependencies.mismatches({"a": "1", "b": "2"}, {"a": "1", "extra": "9"})] == [
        "b: 2 -> (removed)"]


def test_every_range_has_a_lower_bound_that_compat_can_install():
    bounds = dependencies.lower_bounds(dependencies.direct_requirements())
    assert bounds["transformers"] == "5.17" and bounds["torch"] == "2.13"
    with pytest.raises(ValueError, match="'numpy' has no lower bound"):
        dependencies.lower_bounds(["numpy"])


def test_the_committed_lock_is_complete_and_inside_every_range():
    lock = dependencies.parse_pins(dependencies.LOCK.read_text())
    assert lock["torch"] == "2.13.0", "the lock must keep the CPU build that lies on disk"
    for requirement in map(Requirement, dependencies.direct_requirements()):
        name = dependencies.normalize(requirement.name)
        assert name in lock, f"{name} is not locked"
        assert requirement.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} outside {requirement}"
    assert compat.transformers_supported(lock["transformers"])
    assert {"pip", "setuptools", "pytest", "papermill", "huggingface-hub", "tokenizers"} <= set(lock)


def _fake_lock_run(tmp_path, passed: bool, lock_file: Path) -> int:
    """``make lock`` with the environment stood in for: newest releases move transformers 5.23.0 -> 5.24.0."""
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    seen = {}

    def test(_python, env):
        seen.update(env)
        failed = [] if passed else ["tests/test_engine.py::test_generation - ValueError: input_ids: no image token"]
        return passed, failed, "1 failed, 9 passed" if not passed else "10 passed"
    rc = dependencies.lock(lock_file, build=lambda name, constraints: python,
                           read=lambda _p: {"transformers": "5.24.0", "numpy": "2.4.6"}, test=test)
    assert dependencies.parse_pins(Path(seen[dependencies.LOCK_ENV]).read_text())["transformers"] == "5.24.0"
    return rc


def test_make_lock_refuses_a_failing_candidate_and_names_what_changed(tmp_path, capsys):
    lock_file = tmp_path / "lock.txt"
    lock_file.write_text(dependencies.format_lock({"transformers": "5.23.0", "numpy": "2.4.6"}))
    before = lock_file.read_text()
    assert _fake_lock_run(tmp_path, passed=False, lock_file=lock_file) == 1
    assert lock_file.read_text() == before
    err = capsys.readouterr().err
    assert "NOT written" in err and "transformers: 5.23.0 -> 5.24.0" in err and "numpy" not in err
    assert "test_generation - ValueError: input_ids: no image token" in err


def test_make_lock_writes_a_passing_candidate(tmp_path):
    lock_file = tmp_path / "lock.txt"
    assert _fake_lock_run(tmp_path, passed=True, lock_file=lock_file) == 0
    assert dependencies.parse_pins(lock_file.read_text()) == {"transformers": "5.24.0", "numpy": "2.4.6"}
