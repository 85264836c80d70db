"""environment.yml, the Makefile and CI install the same locked set that pyproject.toml describes."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK = ".ci/lock.txt"


def test_environment_installs_the_project_with_its_extras_under_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "pip" in conda
    python = next(d for d in conda if d.startswith("python"))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))
    assert pip[0] == "torch==2.13.0", "torch must be installed first, pinned to the local CPU build"
    assert f"-c {LOCK}" in pip
    editable = next(p for p in pip if p.startswith("-e"))
    extras = editable.split("[")[1].rstrip("]").split(",")
    assert set(extras) <= set(project["optional-dependencies"])
    assert {"notebooks", "dev"} <= set(extras)
    # nothing is listed twice: every other dependency comes from pyproject.toml, every version from the lock
    assert len(pip) == 3
    assert any(dep.startswith("torch") for dep in project["dependencies"])


def test_makefile_installs_torch_first_under_the_lock_and_verifies_it():
    makefile = (ROOT / "Makefile").read_text()
    assert f"LOCK := {LOCK}" in makefile and "-c $(LOCK)" in makefile
    assert makefile.index("torch==2.13.0") < makefile.index('-e ".[notebooks,dev]"')
    assert makefile.index('-e ".[notebooks,dev]"') < makefile.index("analysis_lib/dependencies.py verify")
    assert "make test" in (ROOT / ".ci" / "run").read_text()
