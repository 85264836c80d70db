"""Finished batches are reused only while nothing that determines their rows changed, are shared by
concurrent runs, and survive corruption and dead processes."""
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis_lib.evaluation import parts, runner
from analysis_lib.evaluation.datasets import load_dataset
from analysis_lib.evaluation.runner import TIMING_COLUMNS, run_grid

ROOT = Path(__file__).resolve().parents[1]
VARYING = list(TIMING_COLUMNS)


@pytest.fixture()
def counted(monkeypatch):
    """Counts the batches really evaluated (each call of evaluate_batch)."""
    real, calls = runner.evaluate_batch, []

    def counting(em, setting, samples, *args, **kwargs):
        calls.append((setting.method, tuple(s.sample_id for s in samples)))
        return real(em, setting, samples, *args, **kwargs)
    monkeypatch.setattr(runner, "evaluate_batch", counting)
    return calls


def _grid(model, out, datasets=("synthetic",), methods=("none", "random:R=0.5")):
    return run_grid([model], list(methods), list(datasets), out, batch_size=2, limit=4, progress=False)


def test_a_rerun_reuses_every_batch_and_a_changed_sample_recomputes_only_its_own(model, tmp_path, counted):
    samples = load_dataset("synthetic", limit=4)
    first = _grid(model, tmp_path, [("suite", samples)])
    assert len(counted) == 4
    _grid(model, tmp_path, [("suite", samples)])
    assert len(counted) == 4  # nothing recomputed
    changed = [replace(samples[0], question=samples[0].question + " Answer briefly.")] + samples[1:]
    again = _grid(model, tmp_path, [("suite", changed)])
    assert len(counted) == 6 and {ids for _, ids in counted[4:]} == {(samples[0].sample_id, samples[1].sample_id)}
    assert (again.question.iloc[0] != first.question.iloc[0]) and again.question.iloc[0].endswith("Answer briefly.")
    pixels = [replace(samples[0], image=samples[0].image.rotate(90))] + samples[1:]
    _grid(model, tmp_path, [("suite", pixels)])
    assert len(counted) == 8, "new image bytes under the same sample id must be evaluated again"


def test_device_and_dtype_are_part_of_the_key(model, tmp_path, counted):
    _grid(model, tmp_path)
    em = replace(model, model=model.model.to(torch.bfloat16))
    try:
        rows = _grid(em, tmp_path)
    finally:
        model.model.to(torch.float32)
    assert len(counted) == 8 and set(rows.dtype) == {"bfloat16"} and set(rows.device) == {"cpu"}


def test_a_code_change_invalidates_finished_parts(model, tmp_path, counted, monkeypatch):
    _grid(model, tmp_path)
    monkeypatch.setattr(runner, "code_digest", lambda: "another version of the scorers")
    _grid(model, tmp_path)
    assert len(counted) == 8


def test_the_code_digest_follows_code_not_comments(tmp_path):
    package = tmp_path / "analysis_lib"
    shutil.copytree(parts.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    scorers = package / "pruning" / "scorers.py"
    base = parts.code_digest(package)
    source = scorers.read_text()
    scorers.write_text(source.replace('"""', '"""Edited docstring. ', 1) + "\n# a comment\n")
    assert parts.code_digest.__wrapped__(package) == base
    scorers.write_text(source.replace("descending=True", "descending=False", 1) if "descending=True" in source
                       else source + "\nCHANGED = 1\n")
    assert parts.code_digest.__wrapped__(package) != base
    analyses = package / "analyses" / "accuracy.py"
    scorers.write_text(source)
    analyses.write_text(analyses.read_text() + "\nCHANGED = 1\n")
    assert parts.code_digest.__wrapped__(package) == base, "analyses read rows; they do not compute them"


def test_the_full_schedule_is_part_of_the_key():
    from analysis_lib.evaluation.runner import MethodSetting, setting_fingerprint
    from analysis_lib.evaluation.scoring import Scoring
    from analysis_lib.pruning import get_method
    setting, official = MethodSetting("fastv", {"K": 2, "R": 0.5}), Scoring("official", None)
    base = setting_fingerprint(setting, "remove", None, 0, official)
    assert setting_fingerprint(MethodSetting("fastv", {"K": 2, "R": 0.5}), "remove", None, 0, official) == base
    assert setting_fingerprint(setting, "mask", None, 0, official) != base
    assert setting_fingerprint(setting, "remove", None, 0, Scoring("lenient", None)) != base
    schedule = get_method("feather").schedule()
    tweaked = replace(schedule, stages=(replace(schedule.stages[0], score_layer=5), *schedule.stages[1:]))
    assert parts.stable_form(schedule) != parts.stable_form(tweaked)


def test_a_truncated_part_is_set_aside_and_recomputed(model, tmp_path, counted):
    reference = _grid(model, tmp_path)
    part = sorted((tmp_path / "parts").rglob("batch-*.parquet"))[1]
    part.write_bytes(part.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable.*set aside.*recomputing"):
        again = _grid(model, tmp_path)
    assert len(counted) == 5 and list(part.parent.glob(part.name + ".corrupt-*"))
    pd.testing.assert_frame_equal(reference.drop(columns=VARYING), again.drop(columns=VARYING))


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    part = tmp_path / "batch-00000-x.parquet"
    (tmp_path / (part.name + ".claim")).write_text(json.dumps({"host": parts.HOST, "pid": int(dead.stdout)}))
    frames = parts.gather([part], lambda p: pd.DataFrame({"v": [1]}))
    assert frames[0].v.tolist() == [1] and part.exists() and not (tmp_path / (part.name + ".claim")).exists()


def _worker(folder: str, log: str, names: list[str], ready) -> None:
    """One of two processes gathering the same parts; each computation is logged with its pid. Both start
    together (``ready``), so neither finishes the list before the other has imported torch."""
    import time

    def compute(part: Path) -> pd.DataFrame:
        with open(log, "a") as f:
            f.write(f"{part.name} {os.getpid()}\n")
        time.sleep(0.5)
        return pd.DataFrame({"part": [part.name]})
    ready.wait(60)
    frames = parts.gather([Path(folder) / n for n in names], compute, poll=0.05)
    assert [f.part.iloc[0] for f in frames] == names


def test_two_processes_share_the_parts_and_compute_each_once(tmp_path):
    names = [f"batch-{i:05d}-x.parquet" for i in range(8)]
    log = tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(2)
    workers = [context.Process(target=_worker, args=(str(tmp_path), str(log), names, ready)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    computed = [line.split() for line in log.read_text().splitlines()]
    assert sorted(name for name, _ in computed) == names, "every part computed exactly once"
    assert len({pid for _, pid in computed}) == 2, "both processes did part of the work"
    assert not list(tmp_path.glob("*.claim")) and not list(tmp_path.glob("*.tmp"))


def test_two_concurrent_cli_runs_into_one_folder_finish_with_one_complete_table(checkpoint, tmp_path):
    command = [sys.executable, "-m", "analysis_lib", "eval", "--model", str(checkpoint), "--methods", "none",
               "random:R=0.5", "--dataset", "synthetic", "--limit", "8", "--batch-size", "2", "--out",
               str(tmp_path / "shared")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in results]
    shared = pd.read_parquet(tmp_path / "shared" / "results.parquet")
    alone = run_grid([str(checkpoint)], ["none", "random:R=0.5"], ["synthetic"], tmp_path / "alone", batch_size=2,
                     limit=8, progress=False)
    stable = [c for c in shared.columns if c not in VARYING]
    pd.testing.assert_frame_equal(shared[stable], alone[stable])
    assert not list((tmp_path / "shared").rglob("*.claim")) and not list((tmp_path / "shared").rglob("*.tmp"))


def test_an_unreadable_claim_is_respected_until_it_is_old(tmp_path):
    """A claim is published whole (never read half-written); one that cannot be read is someone's until
    it has been unreadable for UNREADABLE_CLAIM_S, then it is taken over."""
    part = tmp_path / "batch-00000-x.parquet"
    claim_file = tmp_path / (part.name + ".claim")
    claim_file.write_text("")
    assert not parts.claim(part)
    old = claim_file.stat().st_mtime - parts.UNREADABLE_CLAIM_S - 1
    os.utime(claim_file, (old, old))
    assert parts.claim(part) and json.loads(claim_file.read_text())["pid"] == os.getpid()
    parts.release(part)
    assert not claim_file.exists() and not list(tmp_path.glob("*.tmp"))
