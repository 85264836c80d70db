"""The eval CLI under torchrun (gloo, CPU processes): the same rows as one process, split over the ranks,
resumable, and one clear error for each bad launch."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis_lib.evaluation.launch import Launch
from analysis_lib.evaluation.runner import VARYING_COLUMNS, run_grid

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _eval_args(checkpoint, out, limit=16):
    return ["-m", "analysis_lib", "eval", "--model", str(checkpoint), "--methods", "none", "random:R=0.5",
            "--dataset", "synthetic", "--limit", str(limit), "--batch-size", "1", "--out", str(out)]


def _torchrun(nproc: int, args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(nproc), *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _alone(checkpoint, out, limit=16):
    return run_grid([str(checkpoint)], ["none", "random:R=0.5"], ["synthetic"], out, batch_size=1, limit=limit,
                    progress=False)


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    stable = [c for c in a.columns if c not in VARYING_COLUMNS]
    pd.testing.assert_frame_equal(a[stable], b[stable])


def test_two_ranks_under_torchrun_write_the_rows_of_one_process(checkpoint, tmp_path):
    run = _torchrun(2, _eval_args(checkpoint, tmp_path / "two"))
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert stdout.count("rows: ") == 1, "rank 0 alone prints the summary"
    two = pd.read_parquet(tmp_path / "two" / "results.parquet")
    alone = _alone(checkpoint, tmp_path / "alone")
    _same_rows(two, alone)
    assert set(two.world_size) == {2} and set(two["rank"]) == {0, 1}, "both ranks computed batches"
    assert set(alone.world_size) == {1} and set(alone["rank"]) == {0}
    assert not list((tmp_path / "two").rglob("*.claim")) and not list((tmp_path / "two").rglob("*.tmp"))
    assert not list((tmp_path / "two").glob(".launch-*")) and not list((tmp_path / "two" / "running").iterdir())


def test_a_killed_launch_relaunched_keeps_every_finished_batch(checkpoint, tmp_path):
    out = tmp_path / "out"
    run = _torchrun(2, _eval_args(checkpoint, out, limit=24), start_new_session=True)
    deadline = time.monotonic() + 240
    while len(list(out.rglob("batch-*.parquet"))) < 6 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the agent and both ranks, mid-grid
    run.wait()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("batch-*.parquet")}
    assert 6 <= len(kept) < 48, "killed mid-grid"
    again = _torchrun(2, _eval_args(checkpoint, out, limit=24))
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished batches are not recomputed"
    assert len(list(out.rglob("batch-*.parquet"))) == 48
    _same_rows(pd.read_parquet(out / "results.parquet"), _alone(checkpoint, tmp_path / "alone", limit=24))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, args: list[str], cwd: Path) -> subprocess.Popen:
    """One rank started by hand as torchrun would start it on its own node (LOCAL_RANK 0)."""
    env = {**ENV, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_rank_that_cannot_reach_the_rendezvous_stops_with_one_clear_error(checkpoint, tmp_path):
    port = _free_port()  # nobody listens there: rank 0 never started
    start = time.monotonic()
    run = _rank(1, port, [*_eval_args(checkpoint, tmp_path / "out"), "--dist-timeout", "3"], ROOT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"rank 1 on {socket.gethostname()}: the rendezvous at 127.0.0.1:{port} did " \
        "not complete within dist_timeout=3 s" in errors[0], stderr[-2000:]
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_an_out_folder_not_shared_by_the_nodes_is_refused(checkpoint, tmp_path):
    port = _free_port()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    args = [*_eval_args(checkpoint, "shared-out"), "--dist-timeout", "5"]  # relative: each node's own disk
    runs = [_rank(rank, port, args, node) for rank, node in enumerate(nodes)]
    results = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [2, 2], [err[-2000:] for _, err in results]
    for _, stderr in results:
        assert "error: out='shared-out' is not shared by all nodes: rank(s) 1 " in stderr, stderr[-2000:]
    assert not list(nodes[0].rglob("batch-*.parquet")), "nothing computed into a folder a node cannot see"


def test_more_ranks_than_batches_is_refused_before_loading(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "5")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=5 processes but the grid has only 4 batch\(es\): launch at "
                                         r"most 4 .* or lower --batch-size"):
        run_grid([str(checkpoint)], ["none"], ["synthetic"], tmp_path, batch_size=1, limit=4, progress=False)


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x"}, "RANK='x': must be an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "need 0 <= RANK < WORLD_SIZE"),
])
def test_bad_launch_variables_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        Launch.from_env(env)


def test_each_rank_starts_with_its_own_share_then_the_others():
    parts = [[p] for p in range(7)]
    assert Launch(1, 3).order(parts) == [1, 4, 0, 2, 3, 5, 6]
    assert Launch().order(parts) == list(range(7))
    assert Launch(1, 2).order([["a0", "a1"], ["b0", "b1"], ["c0"]]) == ["b0", "b1", "a0", "a1", "c0"]
    assert Launch(1, 2, 1).device("cuda") == "cuda:1" and Launch().device("cuda") == "cuda"


def test_a_second_run_into_one_folder_is_told_it_shares_the_batches(model, tmp_path, capsys):
    from analysis_lib.evaluation import parts
    with parts.registered(tmp_path, world_size=16):
        run_grid([model], ["none"], ["synthetic"], tmp_path, batch_size=2, limit=2, progress=False)
    assert f"note: another run into out={str(tmp_path)!r} is live (host {parts.HOST}, pid {os.getpid()}, 16 " \
        "process(es)); the runs share its batches" in capsys.readouterr().err
    assert not list((tmp_path / "running").iterdir())


def _batch_profile(tmp_path: Path) -> Path:
    """A smaller ci profile under a name of this test's own (its executed copies: runs/notebooks/<name>)."""
    profile = tmp_path / f"launch-{tmp_path.name}.yaml"
    profile.write_text("common: {model: data/embedded-model, device: cpu, dataset: synthetic, per_task: 2, "
                       "batch_size: 7}\nnotebooks:\n  02_where_pruning_hurts: {paper_layers: [3], ratios: [0.5]}\n")
    return profile


def _reproduce_args(profile: Path, root: Path) -> list[str]:
    return ["-m", "analysis_lib", "reproduce", "--profile", str(profile), "--only", "02_where_pruning_hurts",
            "--root", str(root), "--dist-timeout", "60"]


@pytest.fixture
def profile(tmp_path):
    profile = _batch_profile(tmp_path)
    yield profile
    shutil.rmtree(ROOT / "runs" / "notebooks" / profile.stem, ignore_errors=True)


def test_reproduce_under_torchrun_splits_the_arms_and_writes_the_tables_of_one_process(profile, tmp_path):
    from analysis_lib.notebooks.batch import run_batch
    run = _torchrun(2, _reproduce_args(profile, tmp_path / "two"))
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert stdout.count("02_where_pruning_hurts: done in") == 1, "rank 0 alone prints the progress"
    run_batch(profile, only=["02_where_pruning_hurts"], run_dir=tmp_path / "run", root=tmp_path / "one",
              progress=False)
    tables = sorted((tmp_path / "one" / "data" / "results" / "02_where_pruning_hurts").glob("*.parquet"))
    assert len(tables) == 6
    for table in tables:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "two" / table.relative_to(tmp_path / "one")),
                                      pd.read_parquet(table))
    figures = {side: {f.relative_to(tmp_path / side): f.read_bytes()
                      for f in (tmp_path / side / "figures").rglob("*.p*")} for side in ("one", "two")}
    assert figures["one"] == figures["two"] and len(figures["one"]) == 6
    rows = pd.read_parquet(tmp_path / "two" / "runs" / "02_where_pruning_hurts" / "results.parquet")
    # which rank computes which batch depends on when each rank's kernel starts (a rank takes over the batches of
    # one not started yet); that both compute when they start together: test_two_ranks_under_torchrun_...
    assert set(rows["rank"]) <= {0, 1} and set(rows.world_size) == {2}
    _same_rows(rows, pd.read_parquet(tmp_path / "one" / "runs" / "02_where_pruning_hurts" / "results.parquet"))
    executed = ROOT / "runs" / "notebooks" / profile.stem
    assert (executed / "02_where_pruning_hurts.ipynb").exists() and (executed / "rank-1").is_dir()
    assert sorted(p.name for p in (tmp_path / "two" / "runs").iterdir()) == ["02_where_pruning_hurts", "store"], \
        "the batch's control folder is removed"


def test_a_rank_whose_notebook_fails_stops_every_rank_with_its_message(profile, tmp_path):
    broken = tmp_path / "broken" / profile.name  # rank 1 alone gets a bad ratio: its parameters cell fails
    broken.parent.mkdir()
    broken.write_text(profile.read_text().replace("ratios: [0.5]", "ratios: [1.5]"))
    port, root = _free_port(), tmp_path / "out"
    start = time.monotonic()
    runs = [_rank(rank, port, _reproduce_args(p, root), ROOT) for rank, p in enumerate([profile, broken])]
    results = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [2, 2], [err[-2000:] for _, err in results]
    failed = f"rank 1 on {socket.gethostname()}: notebook 02_where_pruning_hurts failed in cell"
    assert failed in results[1][1] and "ratios" in results[1][1], results[1][1][-2000:]
    assert f"error: rank 0 stopped: {failed}" in results[0][1], results[0][1][-2000:]
    assert len(list(root.glob("data/results/*/*.parquet"))) < 6, "rank 0 stopped mid-notebook, at its next batch"
    assert time.monotonic() - start < 200
