"""Where the study's independent pieces of work execute: in this process, on a local Dask cluster,
or on any running Dask cluster.

A *task* is one call ``fn(**job)`` of a module-level function: a (run, fold) training
(:func:`dgstudy.training.run_fold`) or a run's evaluation (:func:`dgstudy.evaluation.evaluate_runs`).
:func:`run` executes a list of them, all submitted at once, and returns their results in order.
Where (:func:`resolve_scheduler`: the ``scheduler=`` argument, else ``$DGSTUDY_SCHEDULER``, else the
profile's ``scheduler`` key, else :data:`DEFAULT`, ``sync``):

* ``sync``: one after another in this process, without Dask (the default, see :data:`DEFAULT`);
* ``local``: a ``distributed.LocalCluster`` started once per process (:func:`local_cluster_options`:
  one worker process per CPU core, or one per GPU when there are GPUs; one thread each);
* ``tcp://host:port`` (any Dask scheduler address): that running cluster, e.g. ``dask scheduler``
  plus ``dask worker`` processes, or one started with dask-jobqueue on SLURM (``docs/training.md``).

Where a cluster is connected to, its size and dashboard link are printed.

What a task function must be: deterministic given its arguments, idempotent (called again after
it finished, it does nothing), writing its outputs atomically and only under a folder of its own.
That is what makes Dask's recovery safe: a task whose worker dies is rerun elsewhere by the
scheduler (at most ``distributed.scheduler.allowed-failures`` times, then ``KilledWorker``). A task
that raises is not retried: the study's errors are deterministic, and the first one is raised here.

Tasks run with this process's data, results and figures folders (``DGSTUDY_DATA``,
``DGSTUDY_RESULTS``, ``DGSTUDY_FIGURES`` set to the resolved paths for the call), so every worker
must see the same file system (one machine, or a shared one on a cluster) and import the same
dgstudy. Torch uses the worker's thread count (one) inside a task.
"""
from __future__ import annotations

import os
import socket
import uuid
from typing import Callable, Sequence

from tqdm.auto import tqdm

from .paths import data_dir, figures_dir, results_dir

ENV_VAR = "DGSTUDY_SCHEDULER"
WORKERS_ENV = "DGSTUDY_WORKERS"          # overrides the LocalCluster's number of workers
SPECIAL = ("sync", "local")
# The default stays in process until a local cluster is shown to help: on the 2-core machine the
# study is measured on, two one-thread workers trained four OSIE reference folds in 122 s against
# 112 s in one process (each epoch 1.65x slower with two at once), with the same bits (profiles
# train on one thread, wherever they run). Two plain processes do gain (each 6-18 % slower, not 65 %),
# so `make reproduce` runs notebooks side by side instead (make -j2). docs/training.md has the measurements.
DEFAULT = "sync"
CONNECT_TIMEOUT = "20s"                  # to reach a running scheduler
PATH_VARS = {"DGSTUDY_DATA": data_dir, "DGSTUDY_RESULTS": results_dir, "DGSTUDY_FIGURES": figures_dir}

HEARTBEAT_S = 20                         # a grid's progress bar is redrawn at least this often (s)

_clients: dict = {}                      # scheduler setting -> distributed.Client of this process


def resolve_scheduler(scheduler: str | None = None, configured: str | None = None) -> str:
    """``'sync'``, ``'local'`` or a scheduler address: ``scheduler`` if given, else
    ``$DGSTUDY_SCHEDULER`` if set, else ``configured`` (a profile's key), else :data:`DEFAULT`."""
    s = (scheduler or os.environ.get(ENV_VAR) or configured or DEFAULT).strip()
    if s not in SPECIAL and "://" not in s:
        raise ValueError(f"scheduler {s!r} (from the argument, ${ENV_VAR} or the profile): expected "
                         "'sync', 'local' or a Dask scheduler address such as tcp://127.0.0.1:8786")
    return s


def local_cluster_options() -> dict:
    """The LocalCluster: one worker per GPU if there are GPUs, else one per CPU core this process
    may use (``$DGSTUDY_WORKERS`` overrides either); one thread per worker, worker processes."""
    import torch   # deferred: choosing a scheduler should not import torch

    n = os.environ.get(WORKERS_ENV)
    n = int(n) if n else (torch.cuda.device_count() or len(os.sched_getaffinity(0)))
    return dict(n_workers=max(1, n), threads_per_worker=1, processes=True)


def client(scheduler: str):
    """The ``distributed.Client`` of ``scheduler`` (``'local'`` or an address), started or connected
    once per process and reused; prints the cluster's size and dashboard link when it starts."""
    c = _clients.get(scheduler)
    if c is not None and c.status == "running":
        return c
    from distributed import Client, LocalCluster

    if scheduler == "local":
        opts = local_cluster_options()
        c = Client(LocalCluster(**opts))
        what = f"Dask LocalCluster, {opts['n_workers']} worker processes of one thread"
    else:
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise RuntimeError(f"no Dask scheduler at {scheduler} (from the argument, ${ENV_VAR} or the "
                               f"profile): {e}. Start one (dask scheduler; dask worker {scheduler}) or "
                               f"set {ENV_VAR}=local / sync") from e
        what = f"Dask scheduler {scheduler}, {len(c.scheduler_info()['workers'])} workers"
    print(f"dgstudy tasks: {what}; dashboard: {c.dashboard_link}", flush=True)
    _clients[scheduler] = c
    return c


def close() -> None:
    """Close this process's clients (and the LocalCluster, if one was started)."""
    while _clients:
        _, c = _clients.popitem()
        cluster = c.cluster
        c.close()
        if cluster is not None:
            cluster.close()


def where() -> dict:
    """Where the calling code runs: ``{"worker": address or None, "worker_name", "host", "pid"}``
    (recorded in each fold's ``config.json``)."""
    try:
        from distributed import get_worker

        w = get_worker()
        worker, name = w.address, str(w.name)
    except (ImportError, ValueError):
        worker, name = None, None
    return {"worker": worker, "worker_name": name, "host": socket.gethostname(), "pid": os.getpid()}


def worker_device(device: str) -> str:
    """``device`` for this worker: on a worker of a local multi-GPU cluster (integer names 0..n-1),
    plain ``'cuda'`` becomes ``'cuda:<name mod GPUs>'``, so each worker has a GPU of its own."""
    if device != "cuda":
        return device
    import torch

    name = where()["worker_name"]
    n = torch.cuda.device_count()
    return f"cuda:{int(name) % n}" if n > 1 and name is not None and name.isdigit() else device


def run(fn: Callable, jobs: Sequence[dict], *, scheduler: str = "local", labels: Sequence[str] | None = None,
        scatter: Sequence[str] = (), desc: str = "tasks", progress: bool = True) -> list:
    """``[fn(**job) for job in jobs]``, executed where ``scheduler`` says (module docstring).

    ``labels``: one name per job (the task's name on the dashboard). ``scatter``: names of large
    arguments (a dataset, a features dict) sent to the cluster once per distinct object rather than
    with every task, to every worker (so that a worker's death does not lose them). The first task to raise raises here (the others are cancelled; finished ones
    have written their outputs).
    """
    jobs = list(jobs)
    if not jobs:
        return []
    if scheduler == "sync":
        return [fn(**job) for job in jobs]
    c = client(scheduler)
    env = {k: str(f()) for k, f in PATH_VARS.items()}
    shared: dict[int, object] = {}
    futures = []
    for k, job in enumerate(jobs):
        job = dict(job)
        for name in scatter:
            value = job.get(name)
            if value is not None:
                if id(value) not in shared:
                    shared[id(value)] = c.scatter([value], hash=False, broadcast=True)[0]
                job[name] = shared[id(value)]
        label = (labels[k] if labels else f"{desc} {k}").replace(" ", "-")
        futures.append(c.submit(_call, fn, env, job, key=f"{label}-{uuid.uuid4().hex[:8]}"))
    from distributed import wait

    index = {f.key: k for k, f in enumerate(futures)}
    results = [None] * len(futures)
    pending = list(futures)
    try:
        with tqdm(total=len(futures), desc=desc, disable=not progress) as bar:
            while pending:
                try:
                    done, not_done = wait(pending, timeout=HEARTBEAT_S, return_when="FIRST_COMPLETED")
                except TimeoutError:          # nothing finished yet: show the elapsed time anyway
                    bar.refresh()
                    continue
                for f in done:
                    results[index[f.key]] = f.result()
                bar.update(len(done))
                pending = list(not_done)
    finally:
        c.cancel([f for f in futures if not f.done()])
    return results


def _call(fn: Callable, env: dict, job: dict):
    """Run one task on a worker: the client's folders, torch on the worker's threads."""
    import torch
    from distributed import get_worker

    old = {k: os.environ.get(k) for k in env}
    threads = torch.get_num_threads()
    os.environ.update(env)
    torch.set_num_threads(get_worker().state.nthreads)
    try:
        return fn(**job)
    finally:
        torch.set_num_threads(threads)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
