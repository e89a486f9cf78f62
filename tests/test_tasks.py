"""Folds as Dask tasks (dgstudy.tasks): the same results as the in-process path on a LocalCluster
and on a scheduler with two workers started as processes on 127.0.0.1; a worker killed with
SIGKILL in the middle of a fold, and the whole run killed, end in the uninterrupted results."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, isolated_study
from dgstudy import datasets, evaluation, features, runs, tasks, training
from dgstudy.config import TrainConfig

pytest.importorskip("distributed")

N_IMAGES = 20                                  # what datasets.load("synthetic") generates
DATASET_OPTIONS = {"size": [48, 64], "seed": 1, "n_subjects": 8, "fixations_per_subject": 8}
VOLATILE = ("seconds", "executed_by")          # what may differ between equal runs of a fold


def grid_configs(store, **kw) -> list[TrainConfig]:
    """Two conditions x three folds on the toy store (as an ablation grid submits them)."""
    base = dict(dataset="synthetic", dataset_options=DATASET_OPTIONS, backbone="toy",
                feature_path=str(store), folds=3, max_epochs=8, patience=5, lr=0.01, batch_size=4,
                blur_sigma=1.0, saliency_map_factor=2)
    base.update(kw)
    return [TrainConfig(run="grid-learned", **base),
            TrainConfig(run="grid-fixed", center_bias="fixed", **base)]


def fold_outputs(run_dir: Path) -> dict:
    """{fold: (state dict, log without timings, config record without volatile keys)}."""
    out = {}
    for d in sorted(Path(run_dir).glob("fold_*")):
        assert runs.fold_done(d), d
        state = torch.load(d / "model.pt", weights_only=True)["state_dict"]
        log = pd.read_csv(d / "log.csv").drop(columns=["seconds"])
        record = {k: v for k, v in json.loads((d / "config.json").read_text()).items() if k not in VOLATILE}
        out[d.name] = (state, log, record)
    return out


def assert_same_runs(a_dirs, b_dirs) -> None:
    for a, b in zip(a_dirs, b_dirs):
        fa, fb = fold_outputs(a), fold_outputs(b)
        assert list(fa) == list(fb) and fa, (a, b)
        for fold in fa:
            sa, la, ra = fa[fold]
            sb, lb, rb = fb[fold]
            assert sa.keys() == sb.keys()
            for k in sa:
                assert torch.equal(sa[k], sb[k]), (a.name, fold, k)
            pd.testing.assert_frame_equal(la, lb, check_exact=True)
            assert ra == rb, (a.name, fold)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The synthetic data set, its toy-backbone feature store, and the grid trained in process."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_features import toy_backbone

    root = tmp_path_factory.mktemp("tasks")
    with isolated_study(root):
        ds = datasets.load("synthetic", **DATASET_OPTIONS)
        store = features.extract(ds, toy_backbone(), downsample=1, out=root / "toy.h5", progress=False)
        os.environ["DGSTUDY_RESULTS"] = str(root / "sync")
        reference = training.train_runs(grid_configs(store), dataset=ds, scheduler="sync", progress=False)
        yield {"root": root, "ds": ds, "store": store, "reference": reference}


def results_in(monkeypatch, study, name: str) -> Path:
    d = study["root"] / name
    monkeypatch.setenv("DGSTUDY_RESULTS", str(d))
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cluster(study):
    """``dask scheduler`` and two ``dask worker`` processes (one thread each) on 127.0.0.1."""
    address = f"tcp://127.0.0.1:{free_port()}"
    exe = Path(sys.executable).with_name("dask")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = open(study["root"] / "cluster.log", "w")
    common = dict(env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs = [subprocess.Popen([exe, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard"], **common)]
    procs += [subprocess.Popen([exe, "worker", address, "--nthreads", "1", "--name", f"w{k}",
                                "--no-dashboard", "--local-directory", str(study["root"] / f"w{k}")], **common)
              for k in range(2)]
    try:
        deadline = time.time() + 60
        while True:
            try:
                tasks.client(address).wait_for_workers(2, timeout=60)
                break
            except (OSError, RuntimeError):
                assert time.time() < deadline, (study["root"] / "cluster.log").read_text()
                time.sleep(0.5)
        yield address
    finally:
        tasks.close()
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()


# -- choosing where ------------------------------------------------------------------------------
def test_resolve_scheduler(monkeypatch):
    monkeypatch.delenv(tasks.ENV_VAR, raising=False)
    assert tasks.resolve_scheduler() == "sync" == tasks.DEFAULT
    assert tasks.resolve_scheduler(configured="sync") == "sync"
    monkeypatch.setenv(tasks.ENV_VAR, "tcp://10.0.0.1:8786")
    assert tasks.resolve_scheduler(configured="sync") == "tcp://10.0.0.1:8786"   # the variable wins
    assert tasks.resolve_scheduler("sync") == "sync"                             # the argument wins
    with pytest.raises(ValueError, match="expected 'sync', 'local' or a Dask scheduler address"):
        tasks.resolve_scheduler("threads")
    monkeypatch.setenv(tasks.WORKERS_ENV, "3")
    assert tasks.local_cluster_options() == {"n_workers": 3, "threads_per_worker": 1, "processes": True}


def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(tasks, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(RuntimeError, match="no Dask scheduler at tcp://127.0.0.1"):
        tasks.client(f"tcp://127.0.0.1:{free_port()}")


# -- equal results ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_cluster_equals_sync(study, monkeypatch, capsys):
    """A LocalCluster of two workers: the grid's folds equal the in-process ones bit for bit, with
    features read by the workers from the store, or handed in (scattered) as a dict."""
    results_in(monkeypatch, study, "local")
    monkeypatch.setenv(tasks.WORKERS_ENV, "2")
    try:
        got = training.train_runs(grid_configs(study["store"]), dataset=study["ds"], scheduler="local",
                                  progress=False)
        assert "Dask LocalCluster, 2 worker processes" in capsys.readouterr().out
        assert_same_runs(study["reference"], got)
        workers = {json.loads((d / "config.json").read_text())["executed_by"]["worker"]
                   for run in got for d in run.glob("fold_*")}
        assert None not in workers and workers <= set(tasks.client("local").scheduler_info()["workers"])
        # the runs' evaluations as tasks: the same metrics as in process
        evaluation.evaluate_runs(got, dataset=study["ds"], scheduler="local", progress=False)
        evaluation.evaluate_runs(study["reference"], dataset=study["ds"], scheduler="sync", progress=False)
        for a, b in zip(study["reference"], got):
            assert json.loads((a / "metrics.json").read_text())["summary"] == \
                json.loads((b / "metrics.json").read_text())["summary"]
            assert (a / "per_image.csv").read_text() == (b / "per_image.csv").read_text()

        with features.FeatureStore(study["store"]) as store:
            feats = training.read_features(store, range(N_IMAGES), progress=False)
        cfg = dataclasses.replace(grid_configs(study["store"])[0], run="given")
        a = training.train_crossval(cfg, dataset=study["ds"], features=feats, scheduler="local", progress=False)
        results_in(monkeypatch, study, "local-sync")
        b = training.train_crossval(cfg, dataset=study["ds"], features=feats, scheduler="sync", progress=False)
        assert_same_runs([a], [b])
    finally:
        tasks.close()


@pytest.mark.slow
def test_two_workers_on_a_scheduler_equal_sync(study, dask_cluster, monkeypatch):
    """The done-when of issue 14 at small scale: a scheduler and two workers started as processes;
    every fold records the worker that trained it; the results equal the in-process ones."""
    results_in(monkeypatch, study, "tcp")
    monkeypatch.setenv(tasks.ENV_VAR, dask_cluster)          # as DGSTUDY_SCHEDULER=... make smoke
    got = training.train_runs(grid_configs(study["store"]), dataset=study["ds"], progress=False)
    assert_same_runs(study["reference"], got)
    names = {json.loads((d / "config.json").read_text())["executed_by"]["worker_name"]
             for run in got for d in run.glob("fold_*")}
    assert names and names <= {"w0", "w1"}
    # a finished grid is not submitted again
    before = {d: (d / "config.json").stat().st_mtime_ns for run in got for d in run.glob("fold_*")}
    training.train_runs(grid_configs(study["store"]), dataset=study["ds"], progress=False)
    assert before == {d: (d / "config.json").stat().st_mtime_ns for d in before}


# -- faults ----------------------------------------------------------------------------------------
def holder_of(lock: Path, pids) -> int | None:
    """The process among ``pids`` that has ``lock`` open (Linux /proc)."""
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(lock):
                    return pid
            except OSError:
                pass
    return None


@pytest.mark.slow
def test_worker_killed_mid_fold_is_rerun(study, dask_cluster, monkeypatch):
    """SIGKILL of the worker training a fold: the scheduler reruns the fold on a live worker, and
    every fold equals an uninterrupted in-process run's."""
    slow = dict(max_epochs=150, patience=150)                 # a few seconds per fold
    cfg = [dataclasses.replace(grid_configs(study["store"], **slow)[0], run="killed-worker")]
    results_in(monkeypatch, study, "killed-worker-sync")
    reference = training.train_runs(cfg, dataset=study["ds"], scheduler="sync", progress=False)
    out = results_in(monkeypatch, study, "killed-worker")
    c = tasks.client(dask_cluster)
    result, errors = [], []

    def train():
        try:
            result.extend(training.train_runs(cfg, dataset=study["ds"], scheduler=dask_cluster, progress=False))
        except Exception as e:            # noqa: BLE001 -- reported below
            errors.append(e)

    thread = threading.Thread(target=train)
    thread.start()
    fold, victim, deadline = None, None, time.time() + 60
    while victim is None:
        assert time.time() < deadline and thread.is_alive(), errors
        pids = c.run(os.getpid).values()
        for lock in sorted((out / "killed-worker").glob(".fold_*.lock")):
            fold = lock.parent / lock.name[1:-len(".lock")]
            if not runs.fold_done(fold):
                victim = holder_of(lock, pids)
                if victim:
                    break
        time.sleep(0.05)
    time.sleep(0.5)                                           # well inside the fold's training
    assert not runs.fold_done(fold)
    os.kill(victim, signal.SIGKILL)
    thread.join(120)
    assert not errors and result, errors
    assert json.loads((fold / "config.json").read_text())["executed_by"]["pid"] != victim
    assert_same_runs(reference, result)
    assert not list(fold.glob(".*.tmp"))
    c.wait_for_workers(2, timeout=60)                         # the nanny restarted the killed worker


KILLED_RUN = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import test_tasks
    from dgstudy import datasets, training
    ds = datasets.load("synthetic", **test_tasks.DATASET_OPTIONS)
    cfgs = test_tasks.grid_configs(sys.argv[2], max_epochs=40, patience=40)
    training.train_runs(cfgs, dataset=ds, scheduler="local", progress=False)
""")


@pytest.mark.slow
def test_whole_run_killed_and_rerun(study, dask_cluster, monkeypatch):
    """A run on a LocalCluster killed (client and workers, SIGKILL) after its first finished fold,
    then run again on the cluster: every fold equals an uninterrupted in-process run's."""
    out = results_in(monkeypatch, study, "killed-run")
    env = {**os.environ, "PYTHONPATH": str(REPO), tasks.WORKERS_ENV: "2"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(Path(__file__).parent), str(study["store"])],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not any(runs.fold_done(d) for d in out.glob("grid-*/fold_*")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [d for d in out.glob("grid-*/fold_*") if runs.fold_done(d)]
    assert 1 <= len(done) < 6
    cfgs = grid_configs(study["store"], max_epochs=40, patience=40)
    got = training.train_runs(cfgs, dataset=study["ds"], scheduler=dask_cluster, progress=False)
    results_in(monkeypatch, study, "killed-run-sync")
    reference = training.train_runs(cfgs, dataset=study["ds"], scheduler="sync", progress=False)
    assert_same_runs(reference, got)
    assert not list(out.glob("grid-*/fold_*/.*.tmp"))
