"""The locked install and the supported range, kept honest by throw-away environments.

    python analysis_lib/dependencies.py verify   # the running environment equals the lock
    python analysis_lib/dependencies.py lock     # newest releases in range -> tests -> new lock, or refuse
    python analysis_lib/dependencies.py compat   # oldest and newest ends of the range -> invariant tests

It runs as a plain script on the standard library alone (Python >= 3.11), so refreshing the lock needs
neither the current lock's environment nor an importable analysis_lib.
The lock (``.ci/lock.txt``) pins every package of the environment the two README commands build, direct
and transitive, to the versions the whole test suite passed with. ``lock`` rebuilds that environment
from the newest releases ``pyproject.toml`` allows, runs the suite there and writes the lock only if it
passes; otherwise it lists what changed since the current lock and which tests failed. ``compat`` builds
one environment with every direct dependency at the lower bound of its range and one with the newest
releases in range, and runs the engine, capture and generation invariant tests in each. Environments go
to ``runs/envs/`` and are rebuilt from scratch every time.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the committed lock; ``make lock`` points its test run at the candidate through this variable
LOCK_ENV = "ANALYSIS_LIB_LOCK"
LOCK = Path(os.environ.get(LOCK_ENV, ROOT / ".ci" / "lock.txt"))
ENVS = ROOT / "runs" / "envs"
EXTRAS = ("notebooks", "dev")
#: the CPU build of torch that lies on this machine's disk (a plain requirement pulls a CUDA build)
TORCH = "torch==2.13.0"
#: what make test-compat runs: the engine, capture and generation invariants (also under accelerate's
#: offload hooks, with merging, with the LLM's states, with ToMe in the vision tower), the call readers,
#: the runner (its shared image encoding wraps a transformers method) and the cache accounting
INVARIANT_TESTS = ("tests/test_engine.py", "tests/test_capture.py", "tests/test_adapters.py",
                   "tests/test_calls.py", "tests/test_offload.py", "tests/test_analyses_efficiency.py",
                   "tests/test_merging.py", "tests/test_diversity_methods.py", "tests/test_runner.py",
                   "tests/test_tome.py", "tests/test_sparsevlm.py")
_LOCK_HEADER = """\
# The locked install: every package of the environment that `make test` and `make reproduce` build
# (torch first, then `-e .[{extras}]`), at the versions the whole test suite passed with.
# Regenerate with `make lock` (newest releases within pyproject.toml's ranges; refuses if tests fail).
"""


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines (comments, blanks and local labels such as +cpu dropped) -> {name: version}."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise ValueError(f"lock line {line!r}: expected name==version")
        name, version = line.split("==", 1)
        pins[normalize(name)] = version.split("+")[0].strip()
    return pins


def format_lock(pins: dict[str, str]) -> str:
    return _LOCK_HEADER.format(extras=",".join(EXTRAS)) + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))


def direct_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The project's dependencies and those of the extras the two commands install."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"]) + [r for e in EXTRAS for r in project["optional-dependencies"][e]]


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """{name: version} of each requirement's ``>=`` bound; a requirement without one is an error."""
    bounds = {}
    for req in requirements:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$", req)
        name, spec = match.group(1), match.group(2)
        low = re.search(r">=\s*([0-9][^,;\s]*)", spec)
        if low is None:
            raise ValueError(f"pyproject.toml: {req!r} has no lower bound (>=); every range must be tested")
        bounds[normalize(name)] = low.group(1)
    return bounds


@dataclass
class Change:
    name: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        return f"{self.name}: {self.old or '(absent)'} -> {self.new or '(removed)'}"


def changes(old: dict[str, str], new: dict[str, str]) -> list[Change]:
    return [Change(n, old.get(n), new.get(n)) for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)]


def mismatches(lock: dict[str, str], installed: dict[str, str]) -> list[Change]:
    """Locked packages that are missing or at another version in ``installed`` (extras installed are fine)."""
    return [Change(n, v, installed.get(n)) for n, v in sorted(lock.items()) if installed.get(n) != v]


def installed_pins() -> dict[str, str]:
    """{name: version} of the running interpreter's distributions."""
    from importlib import metadata

    return {normalize(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions()}


# ---- throw-away environments ---------------------------------------------------------------------
def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, cwd=ROOT, **kwargs)


def build_env(name: str, constraints: dict[str, str] | None) -> Path:
    """A fresh venv under runs/envs/NAME with torch, then the project with its extras; ``constraints``
    pins packages (None: the newest releases the ranges allow). Returns its python."""
    path = ENVS / name
    venv.EnvBuilder(clear=True, with_pip=True).create(path)
    python = path / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    constraint_args = []
    if constraints:
        file = path / "constraints.txt"
        file.write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
        constraint_args = ["-c", file]
    setup = {k: v for k, v in (constraints or {}).items() if k in ("pip", "setuptools")}
    tools = [f"{k}=={v}" for k, v in setup.items()] or ["--upgrade", "pip", "setuptools"]
    for step in (tools, [TORCH], ["--no-build-isolation", *constraint_args, "-e", f".[{','.join(EXTRAS)}]"]):
        if _run([*pip, *step]).returncode:
            raise SystemExit(f"{name}: installing {' '.join(map(str, step))} failed (see above)")
    return python


def freeze(python: Path) -> dict[str, str]:
    out = _run([python, "-m", "pip", "freeze", "--all", "--exclude-editable", "--disable-pip-version-check"],
               capture_output=True, text=True, check=True).stdout
    return parse_pins("\n".join(line for line in out.splitlines() if "==" in line))


def run_tests(python: Path, tests: tuple[str, ...] = (), env: dict[str, str] | None = None
              ) -> tuple[bool, list[str], str]:
    """(passed, failed test ids with their error line, last lines of output) of pytest in that environment."""
    result = _run([python, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                  capture_output=True, text=True, env={**os.environ, **(env or {})})
    output = result.stdout + result.stderr
    failed = [line.removeprefix("FAILED ") for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return result.returncode == 0, failed, "\n".join(output.strip().splitlines()[-3:])


def versions_line(pins: dict[str, str]) -> str:
    names = ("torch", "transformers", "accelerate", "numpy", "pandas")
    return ", ".join(f"{n} {pins.get(n, '?')}" for n in names)


# ---- commands ------------------------------------------------------------------------------------
def verify(lock: Path = LOCK) -> int:
    """0 if the running environment holds every locked version, else 1 with the differences."""
    wrong = mismatches(parse_pins(lock.read_text()), installed_pins())
    if wrong:
        print(f"the environment differs from {lock}:\n  " + "\n  ".join(map(str, wrong)),
              file=sys.stderr)
        return 1
    return 0


def lock(lock_path: Path = LOCK, build: Callable = build_env, read: Callable = freeze,
         test: Callable = run_tests) -> int:
    """Rebuild from the newest releases in range; write the lock only if the whole suite passes there.

    ``build``, ``read`` and ``test`` make the environment, list its versions and run the suite in it.
    """
    python = build("lock", None)
    candidate = read(python)
    old = parse_pins(lock_path.read_text()) if lock_path.exists() else {}
    changed = changes(old, candidate)
    print(f"candidate: {versions_line(candidate)}; {len(changed)} change(s) from the current lock")
    for change in changed:
        print("  ", change)
    candidate_path = python.parents[1] / "candidate-lock.txt"
    candidate_path.write_text(format_lock(candidate))
    passed, failed, tail = test(python, env={LOCK_ENV: str(candidate_path)})
    summary = tail.splitlines()[-1] if tail else "no test output"
    if not passed:
        print(f"\nmake lock: NOT written. The test suite fails on the newest releases ({summary}).\n"
              "Changed since the current lock (one of these broke it):\n  "
              + ("\n  ".join(map(str, changed)) or "(nothing)")
              + "\nFailing tests:\n  " + ("\n  ".join(failed[:40]) or "(none reported; see the output above)"),
              file=sys.stderr)
        return 1
    lock_path.write_text(candidate_path.read_text())
    print(f"\nmake lock: {lock_path} written ({len(candidate)} packages; {summary})")
    return 0


def compat(full: bool = False) -> int:
    """Both ends of the supported range, each in its own environment; 0 only if both pass."""
    ends = {"oldest": lower_bounds(direct_requirements()), "newest": None}
    tests = () if full else INVARIANT_TESTS
    results = []
    for name, constraints in ends.items():
        python = build_env(f"compat-{name}", constraints)
        passed, failed, tail = run_tests(python, tests)
        results.append((name, versions_line(freeze(python)), passed, tail.splitlines()[-1], failed))
    print("\nmake test-compat:")
    for name, versions, passed, summary, failed in results:
        print(f"  {name:6s} {'PASS' if passed else 'FAIL'}  {versions}  [{summary.strip('= ')}]")
        for line in failed[:20]:
            print(f"           {line}")
    return 0 if all(r[2] for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analysis_lib/dependencies.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("verify", help="check that this environment holds the locked versions")
    sub.add_parser("lock", help="regenerate the lock from the newest releases, if the tests pass on them")
    compat_parser = sub.add_parser("compat", help="run the invariant tests at both ends of the supported range")
    compat_parser.add_argument("--full", action="store_true", help="run the whole suite in both environments")
    args = parser.parse_args(argv)
    if args.command == "verify":
        return verify()
    if args.command == "lock":
        return lock()
    return compat(full=args.full)


if __name__ == "__main__":
    sys.exit(main())
