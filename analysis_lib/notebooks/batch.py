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
Under torchrun every rank runs the batch and the notebooks' evaluation grids are split over the ranks
(``launched``).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NamedTuple

import yaml

from ..validation import check_choice, check_int, check_number
from .availability import POLICIES, without_missing
from .launched import NotebookFailed, placed
from .parameters import NOTEBOOKS, REPO

NOTEBOOK_DIR = REPO / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "profiles"
DEFAULT_PROFILE = "default"
#: notebooks that measure wall-clock time: the batch runs them with no other notebook beside them
ALONE = frozenset({"07_efficiency"})
#: side by side, the longest start first; measured on the default profile (a batch that has run once
#: orders by its own last durations instead)
LONGEST_FIRST = ("06_methods", "02_where_pruning_hurts", "03_attention_dispersion", "01_positional_bias",
                 "05_criteria", "04_benchmark_leakage")
SECTIONS = ("base", "common", "notebooks", "missing_datasets", "hub_cache")
#: the environment variables that say which Hugging Face hub cache the kernels read benchmarks from
HUB_VARIABLES = ("HF_HUB_CACHE", "HF_HOME")


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


def resolve_profile(profile: str | Path | Profile, only: list[str] | None = None) -> tuple[dict[str, dict], list[str]]:
    """The parameters of each notebook to run (all, or ``only``) once the profile's datasets are checked
    against the local copies (``availability``), and the lines saying what was left out. ``profile``: a
    name, a YAML path, or a profile already read."""
    read = profile if isinstance(profile, Profile) else read_profile(profile)
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


def _up_to_date(run_dir: Path, root: Path, name: str, stamp: str) -> bool:
    target, stamp_file = run_dir / f"{name}.ipynb", run_dir / f"{name}.stamp"
    return (target.exists() and stamp_file.exists() and stamp_file.read_text() == stamp
            and outputs_exist(root, name))


def run_batch(profile: str | Path = DEFAULT_PROFILE, only: list[str] | None = None, run_dir: str | Path | None = None,
              root: str | Path | None = None, skip_up_to_date: bool = False, progress: bool = True,
              threads: int = 1, update_committed: bool = False, jobs: int = 1,
              dist_timeout: float = 600.0) -> list[Path]:
    """Execute the notebooks; returns the executed copies. ``root`` is where figures/ and data/results/ are
    written (the notebooks' own ``root`` parameter; see ``output_root``). ``threads``: CPU threads of each
    notebook's kernel (OMP_NUM_THREADS; 0 keeps torch's default). One thread is the default: several
    threads on a small shared machine were measured 20x slower than one. ``jobs``: notebooks run at once,
    each in its own kernel (on a CPU, one per core with one thread each); a notebook that measures time
    (``ALONE``) runs with no other beside it. The first failure stops the batch once the running ones end.
    Under torchrun (``launched``) the ranks share each notebook's grid, one notebook at a time;
    ``dist_timeout``: seconds to wait for the rendezvous and for every rank to see ``root``."""
    check_int("threads", threads, minimum=0)
    check_int("jobs", jobs, minimum=1)
    if check_number("dist_timeout", dist_timeout) <= 0:
        raise ValueError(f"dist_timeout={dist_timeout!r}: must be a number of seconds > 0")
    root = output_root(profile, root, update_committed)
    read = read_profile(profile)
    settings, lines = resolve_profile(read, only)
    names = list(settings)
    run_dir = Path(run_dir or REPO / "runs" / "notebooks" / Path(str(profile)).stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    hub = _hub_environment(read)
    with _environment(OMP_NUM_THREADS=str(threads) if threads else None), hub:  # inherited by papermill's kernels
        with placed(root, run_dir, dist_timeout) as place:
            for line in lines:
                place.say(line)
            if jobs > 1 and place.launch.distributed:
                place.say(f"jobs={jobs}: under a launch the ranks share each notebook's grid; one notebook at a time")
                jobs = 1
            # where the kernels read benchmarks from is an input too: another hub cache is other data
            hubs = {key: os.environ.get(key) for key in HUB_VARIABLES}
            stamps = {name: _stamp(NOTEBOOK_DIR / f"{name}.ipynb", {**settings[name], "root": str(root),
                                                                      "threads": threads, "hub": hubs})
                      for name in names}
            fresh = place.agree([skip_up_to_date and _up_to_date(run_dir, root, n, stamps[n]) for n in names])
            place.run_dir.mkdir(parents=True, exist_ok=True)
            todo = []
            for name, skip in zip(names, fresh):
                if skip:
                    place.say(f"{name}: up to date, skipped")
                    continue
                stamp_file = run_dir / f"{name}.stamp" if place.lead else None  # rank 0 keeps the stamps
                if stamp_file is not None:
                    stamp_file.unlink(missing_ok=True)
                todo.append((name, NOTEBOOK_DIR / f"{name}.ipynb", place.run_dir / f"{name}.ipynb",
                             {**settings[name], "root": str(place.root), "threads": threads}, stamp_file, stamps[name]))
            durations = _Durations(run_dir / "durations.json")
            for phase in _phases(todo, durations.seconds()) if jobs > 1 else [[job] for job in todo]:
                place.check()
                try:
                    taken = _run_phase(phase, jobs, progress and place.lead and jobs == 1, place.say)
                except NotebookFailed as err:
                    raise place.failed(err) from None
                if place.lead:
                    durations.update(taken)
            place.say(f"executed notebooks: {run_dir}\nfigures: {root / 'figures'}\n"
                      f"tables: {root / 'data' / 'results'}")
            return [place.run_dir / f"{name}.ipynb" for name in names]


def _phases(todo: list[tuple], seconds: dict[str, float]) -> list[list[tuple]]:
    """Consecutive notebooks that may run side by side, the longest first (``seconds``: their last durations,
    else ``LONGEST_FIRST``), so that the last to start are short; each ``ALONE`` notebook is a phase of its own."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    phases: list[list[tuple]] = []
    for job in todo:
        if job[0] in ALONE or not phases or phases[-1][0][0] in ALONE:
            phases.append([job])
        else:
            phases[-1].append(job)
    return [sorted(phase, key=lambda job: (-seconds.get(job[0], 0.0), rank.get(job[0], len(rank))))
            for phase in phases]


class _Durations:
    """Each notebook's last duration in seconds (``run_dir/durations.json``), for ordering the next batch."""

    def __init__(self, path: Path):
        self.path = path

    def seconds(self) -> dict[str, float]:
        try:
            return {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def update(self, taken: dict[str, float]) -> None:
        self.path.write_text(json.dumps({**self.seconds(), **taken}, indent=1, sort_keys=True))


def _run_one(job: tuple, progress: bool) -> float:
    """Execute one notebook; its stamp (if it keeps one) is written only when it succeeded. Returns its seconds."""
    name, source, target, parameters, stamp_file, stamp = job
    start = time.monotonic()
    _execute(name, source, target, parameters, progress)
    if stamp_file is not None:
        stamp_file.write_text(stamp)
    return time.monotonic() - start


def _run_phase(phase: list[tuple], jobs: int, progress: bool, say=print) -> dict[str, float]:
    """The phase's notebooks, ``jobs`` at a time, each in a separate process (papermill's kernel clients
    are not thread-safe); the first failure is raised once the notebooks already running have ended.
    Returns the seconds each took."""
    taken: dict[str, float] = {}
    if jobs == 1 or len(phase) == 1:
        for job in phase:
            say(f"{job[0]} ...")
            taken[job[0]] = _run_one(job, progress)
            say(f"{job[0]}: done in {taken[job[0]]:.0f} s")
        return taken
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(_run_one, job, False): job[0] for job in phase}
        say(f"running {', '.join(futures.values())}, {jobs} at a time")
        failure = None
        for future in as_completed(futures):
            try:
                taken[futures[future]] = future.result()
                say(f"{futures[future]}: done in {taken[futures[future]]:.0f} s")
            except NotebookFailed as err:
                failure = failure or err
                for other in futures:
                    other.cancel()
        if failure is not None:
            raise failure
    return taken
