"""Run every notebook with papermill: ``python -m analysis_lib reproduce [--profile NAME]``.

A profile (``notebooks/profiles/<name>.yaml``) gives parameters for all notebooks (``common``) and per
notebook (``notebooks: {name: {...}}``): ``default`` is the embedded default on CPU, ``ci`` the tiny
settings CI runs, ``llava-1.5-7b`` a real checkpoint on a GPU on the papers' benchmarks, ``rehearsal`` that
profile on CPU with a stand-in model and benchmark copies (``analysis_lib.rehearsal``). A profile may start
from another (``base``) and name the hub cache its benchmarks are in (``hub_cache``; ``read_profile``). Before
any notebook runs, the datasets a profile names are checked against the local copies; its ``missing_datasets``
(``fail`` or ``skip``) says what a missing one does (``availability``). Executed notebooks go to
``runs/notebooks/<profile>/``; figures and tables go where the notebooks write them. A failing
notebook stops the batch with its name and the cell's error. ``skip_up_to_date`` skips a notebook
whose executed copy exists and whose inputs (notebook, parameters, library source) are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NamedTuple

import yaml

from ..validation import check_choice
from .availability import POLICIES, without_missing
from .parameters import NOTEBOOKS, REPO

NOTEBOOK_DIR = REPO / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "profiles"
DEFAULT_PROFILE = "default"
SECTIONS = ("base", "common", "notebooks", "missing_datasets", "hub_cache")


class NotebookFailed(RuntimeError):
    """A notebook of the batch raised; the message names it and the failing cell's error."""


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


class Profile(NamedTuple):
    """A profile read and resolved: ``{notebook: parameters}`` for every notebook, the ``missing_datasets``
    policy, and the hub cache its benchmarks are read from (None: the environment's)."""

    settings: dict[str, dict]
    missing_datasets: str
    hub_cache: Path | None


def load_profile(name_or_path: str | Path) -> dict:
    """``{notebook: parameters}`` for every notebook, from a profile name or a YAML path."""
    return read_profile(name_or_path).settings


def _profile_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        check_choice("profile", str(name_or_path), profiles())
        return PROFILE_DIR / f"{name_or_path}.yaml"
    return relative_to / path if relative_to is not None and not path.is_absolute() else path


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"profile {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f", line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"profile {path}{line}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ValueError(f"profile {path}: expected a mapping with 'common' and/or 'notebooks', got "
                         f"{type(data).__name__}")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"profile {path}: unknown sections {sorted(unknown)}; allowed: "
                         f"{', '.join(repr(s) for s in SECTIONS)}")
    return data


def read_profile(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> Profile:
    """The profile's parameters per notebook, its ``missing_datasets`` policy (default "fail") and ``hub_cache``.

    ``base: <profile>`` (a name, or a YAML path relative to this file) starts from that profile's parameters
    per notebook; this profile's ``common`` then applies to every notebook and its ``notebooks`` entries to
    theirs, and ``missing_datasets`` / ``hub_cache`` replace the base's when given. ``hub_cache``: the Hugging
    Face hub cache holding the benchmarks (a path relative to the repository root, as model paths are)."""
    path = _profile_path(name_or_path)
    if path.resolve() in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path.resolve()))
        raise ValueError(f"profile {path}: 'base' profiles form a cycle ({chain})")
    data = _read_yaml(path)
    for key in ("base", "hub_cache"):
        if key in data and not (isinstance(data[key], str) and data[key]):
            raise ValueError(f"profile {path}: {key}={data[key]!r} must be a "
                             f"{'profile name or YAML path' if key == 'base' else 'folder path'}")
    base = (read_profile(_profile_path(data["base"], path.parent), (*_seen, path.resolve())) if "base" in data
            else Profile({name: {} for name in NOTEBOOKS}, "fail", None))
    per_notebook = data.get("notebooks") or {}
    for name in per_notebook:
        check_choice(f"profile {path.name}: notebook", name, NOTEBOOKS)
    policy = check_choice(f"profile {path.name}: missing_datasets", data.get("missing_datasets",
                                                                              base.missing_datasets), POLICIES)
    hub_cache = REPO / Path(data["hub_cache"]).expanduser() if "hub_cache" in data else base.hub_cache
    settings = {name: {**base.settings[name], **(data.get("common") or {}), **(per_notebook.get(name) or {})}
                for name in NOTEBOOKS}
    return Profile(settings, policy, hub_cache)


@contextmanager
def _environment(**variables: str | None) -> Iterator[None]:
    """Set the environment variables given a value (kernels started meanwhile inherit them); restore after."""
    previous = {k: os.environ.get(k) for k, v in variables.items() if v is not None}
    os.environ.update({k: v for k, v in variables.items() if v is not None})
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hub_environment(profile: Profile) -> AbstractContextManager[None]:
    return _environment(HF_HUB_CACHE=str(profile.hub_cache) if profile.hub_cache else None)


def resolve_profile(profile: str | Path, only: list[str] | None = None) -> tuple[dict[str, dict], list[str]]:
    """The parameters of each notebook to run (all, or ``only``) once the profile's datasets are checked
    against the local copies (``availability``), and the lines saying what was left out."""
    read = read_profile(profile)
    names = list(NOTEBOOKS) if not only else [check_choice("notebook", n, NOTEBOOKS) for n in only]
    with _hub_environment(read):
        return without_missing({name: read.settings[name] for name in names}, read.missing_datasets)


def _stamp(notebook: Path, parameters: dict) -> str:
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for source in sorted((REPO / "analysis_lib").rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _execute(name: str, source: Path, target: Path, parameters: dict, progress: bool) -> None:
    import papermill

    try:
        papermill.execute_notebook(source, target, parameters=parameters, kernel_name="python3", cwd=str(REPO),
                                   progress_bar=progress)
    except papermill.PapermillExecutionError as err:
        raise NotebookFailed(f"notebook {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                             f"(executed copy: {target})") from None


def output_root(profile: str | Path, root: str | Path | None, update_committed: bool) -> Path:
    """Where a profile's figures/ and data/results/ go: the repository for the default profile (its
    committed results), ``runs/reproduce/<profile>/`` for any other unless ``update_committed``."""
    if root is not None:
        chosen = Path(root).resolve()
        if chosen == REPO.resolve() and str(profile) != DEFAULT_PROFILE and not update_committed:
            raise ValueError(f"root={str(root)!r} is the repository: profile {str(profile)!r} would overwrite the "
                             "committed figures and tables; pass --update-committed (update_committed=True) to do so")
        return chosen
    if str(profile) == DEFAULT_PROFILE or update_committed:
        return REPO
    return REPO / "runs" / "reproduce" / Path(str(profile)).stem


def outputs_exist(root: Path, name: str) -> bool:
    """The notebook's figure and table folders exist and hold files."""
    return all(folder.is_dir() and any(folder.iterdir())
               for folder in (root / "figures" / name, root / "data" / "results" / name))


def run_batch(profile: str | Path = DEFAULT_PROFILE, only: list[str] | None = None, run_dir: str | Path | None = None,
              root: str | Path | None = None, skip_up_to_date: bool = False, progress: bool = True,
              threads: int = 1, update_committed: bool = False) -> list[Path]:
    """Execute the notebooks in order; returns the executed copies. ``root`` is where figures/ and
    data/results/ are written (the notebooks' own ``root`` parameter; see ``output_root``). ``threads``:
    CPU threads of each notebook's kernel (OMP_NUM_THREADS; 0 keeps torch's default). One thread is the
    default: several threads on a small shared machine were measured 20x slower than one."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads={threads!r}: must be an integer >= 0 (0 = torch's default)")
    root = output_root(profile, root, update_committed)
    settings, lines = resolve_profile(profile, only)
    for line in lines:
        print(line)
    names = list(settings)
    run_dir = Path(run_dir or REPO / "runs" / "notebooks" / Path(str(profile)).stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    hub = _hub_environment(read_profile(profile))
    executed = []
    with _environment(OMP_NUM_THREADS=str(threads) if threads else None), hub:  # inherited by papermill's kernels
        for i, name in enumerate(names, 1):
            source, target = NOTEBOOK_DIR / f"{name}.ipynb", run_dir / f"{name}.ipynb"
            parameters = {**settings[name], "root": str(root), "threads": threads}
            stamp_file, stamp = run_dir / f"{name}.stamp", _stamp(source, parameters)
            executed.append(target)
            if (skip_up_to_date and target.exists() and stamp_file.exists() and stamp_file.read_text() == stamp
                    and outputs_exist(root, name)):
                print(f"[{i}/{len(names)}] {name}: up to date, skipped")
                continue
            print(f"[{i}/{len(names)}] {name}")
            stamp_file.unlink(missing_ok=True)
            _execute(name, source, target, parameters, progress)
            stamp_file.write_text(stamp)
    print(f"executed notebooks: {run_dir}\nfigures: {root / 'figures'}\ntables: {root / 'data' / 'results'}")
    return executed
