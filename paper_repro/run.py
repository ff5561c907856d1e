"""The ``run`` and ``runs`` stages: runs of the study, each trained and then evaluated in one process.

``run`` is one run (one job of ``python -m paper_repro launch``): :func:`paper_repro.train.train`
resumes from the run's last checkpoint (a finished run resumes at its end and only rewrites
``model.pt``), then rank 0 evaluates the final model (:func:`paper_repro.evaluate.evaluate`).

``runs`` is the pipeline's unit of work (``runs@<dataset>`` in ``dvc.yaml``): every run on one
dataset (the study's grid, the sweep, the schedule sensitivity), longest first, ``train.runs_at_once``
of them at a time in worker processes that share the thread budget (``runtime.threads_per_job``).
One stage per dataset instead of one per run saves DVC's bookkeeping and a Python and PyTorch
start-up per run; on 2 CPU cores two 1-thread runs at once train about a quarter more per second
than one 2-thread run. A changed parameter reruns the dataset's stage: the runs it leaves unchanged
resume at their end and are only evaluated again. What runs the parameters no longer name left in
the dataset's run folders is removed first, so that the stage's outputs hold the named runs alone.
"""

from __future__ import annotations

import logging
import shutil
import threading
from functools import partial
from multiprocessing import current_process, get_context

from tqdm.auto import tqdm

from .evaluate import evaluate
from .layout import Layout, Run
from .runtime import rank, threads_per_job, worker_environment
from .settings import DatasetSettings, RunSettings, Settings
from .train import train

log = logging.getLogger(__name__)


def run(settings: RunSettings, layout: Layout = Layout()) -> dict | None:
    """Train the run (under ``torchrun``: every rank), then evaluate it on rank 0; returns its metrics there."""
    train(settings, layout)
    if rank() > 0:
        return None
    return evaluate(settings, layout)


def remove_stale_runs(layout: Layout, dataset: str, runs: list[Run]) -> None:
    """Remove from ``dataset``'s run folders every file and folder that none of ``runs`` writes."""
    kept = set().union(*(layout.run_files(one) for one in runs))
    for folder in layout.run_folders(dataset):
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if entry not in kept:
                log.info("removing %s: no run of the parameters writes it", entry)
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def start_worker() -> None:
    """A worker's logging, as the stage's; tqdm's lock a thread lock, not a semaphore that a worker
    stopped mid-run would leave behind; and the right to start processes of its own: a run's loader
    workers (``train.workers``, on a GPU) are its children, which a pool's daemonic worker may not
    have. They end with it: a loader worker stops when its parent is gone."""
    from .cli import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    tqdm.set_lock(threading.RLock())
    current_process().daemon = False


def run_dataset(settings: Settings, dataset: DatasetSettings, layout: Layout = Layout()) -> None:
    """The ``runs`` stage: every run on ``dataset``, ``train.runs_at_once`` at a time, longest first."""
    runs = settings.runs(dataset.name)
    remove_stale_runs(layout, dataset.name, runs)
    work = sorted((settings.run(one) for one in runs), key=lambda one: one.train.iterations, reverse=True)  # stable: the matrix's order
    at_once = min(settings.train_of(dataset.name).runs_at_once, len(work))
    threads = threads_per_job(at_once)
    log.info("%d runs on %s, %d at a time with %d thread(s) each", len(work), dataset.name, at_once, threads)
    progress = tqdm(total=len(work), desc=f"runs {dataset.name}", unit="run")
    if at_once == 1:
        for one in work:
            run(one, layout)
            progress.update()
    else:  # workers started with their threads and without per-iteration progress bars (two would interleave)
        with worker_environment(threads):
            pool = get_context("spawn").Pool(at_once, initializer=start_worker)
        try:
            for _ in pool.imap_unordered(partial(run, layout=layout), work):
                progress.update()
            pool.close()
        except BaseException:  # the other runs stop too; each resumes from its last checkpoint
            pool.terminate()
            raise
        finally:
            pool.join()
    progress.close()
