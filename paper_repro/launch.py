"""``python -m paper_repro launch``: the study's runs as parallel jobs, recorded in DVC.

Each run (train, then evaluate, ``paper_repro/run.py``) belongs to its dataset's ``runs@<dataset>``
stage of ``dvc.yaml``, which a ``dvc repro`` runs on one machine. The launcher

1. brings the runs' inputs up to date with ``dvc repro generate subsets pretrain``;
2. takes the runs of every dataset whose ``runs`` stage ``dvc status`` reports missing or stale
   (the runs the change leaves as they were resume at their end and are only evaluated again);
3. submits each run as one submitit job running ``python -m paper_repro run ...`` (under ``torchrun``
   when ``launch.gpus_per_job`` > 1): with ``launch.executor: local`` at most ``launch.workers``
   at once on this machine, each on GPUs of its own and with its share of the CPU threads
   (``runtime.threads_per_job``); with ``slurm`` all at once via ``sbatch``;
4. submits again a job that ended any other way than with a one-line error (exit status 2): a
   kill, a preemption or a crash. The run resumes from its checkpoint. After
   ``launch.attempts`` tries in all, or at once for exit status 2 (bad data or parameters), the
   run is failed and its log named;
5. records a dataset's stage with ``dvc commit`` once all its runs are done (after removing what
   runs the parameters no longer name left in its run folders), so that a final ``dvc repro`` runs
   only ``report``, ``explain`` and the notebooks.

Jobs' logs and the launcher's state lie under ``launch.folder``: ``<dataset>/<run>/`` per run
(submitit's ``<job>_0_log.out`` and ``.err``) and ``state.json``. One launcher drives a folder at
a time (a second fails at once), and a run whose job is still queued or running is never
submitted again. ``--no-wait`` (SLURM) submits and returns; a later ``launch`` picks the jobs up.
``--status`` prints the table of runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import submitit
from tqdm.auto import tqdm

from .atomic import exclusive_lock, write_json
from .errors import LaunchError, ParamsError
from .layout import Layout, Run
from .run import remove_stale_runs
from .runtime import threads_per_job
from .settings import Settings
from .tool_settings import LaunchSettings

log = logging.getLogger(__name__)

UPSTREAM = ("generate", "subsets", "pretrain")  # the stages whose outputs the runs read
USER_ERROR = 2  # the exit status of `python -m paper_repro` after a one-line error: running it again cannot help
POLL_SECONDS = 2.0
LOCAL_TIMEOUT_MINUTES = 7 * 24 * 60  # submitit's local jobs are killed after their timeout (default 2 minutes)


def stages_of(settings: Settings) -> dict[Run, str]:
    """Every run of the study, the ablation, the schedule and the scale checks, in that order, with its stage in
    ``dvc.yaml``: its dataset's ``runs@synthetic-cityscapes``, or for a dataset drawn larger ``runs-scaled@synthetic-cityscapes``."""
    def stage(dataset: str) -> str:
        drawn_from = settings.dataset(dataset).scaled_from
        return f"runs-scaled@{drawn_from}" if drawn_from else f"runs@{dataset}"
    return {run: stage(run.dataset) for run in settings.runs()}


def run_key(run: Run) -> str:
    """A run's name in the launcher's state, table and job folders: ``synthetic-cityscapes/pals-10-0``."""
    return f"{run.dataset}/{run.name}"


def run_arguments(run: Run) -> list[str]:
    """The ``python -m paper_repro`` arguments of the run's stage command in ``dvc.yaml``."""
    longer = ["--schedule", str(run.schedule)] if run.schedule != 1 else []
    return ["run", "--dataset", run.dataset, "--method", run.method, "--percent", str(run.percent), "--seed", str(run.seed), *longer]


class RunJob(submitit.helpers.Checkpointable):
    """A run inside its job: ``python -m paper_repro run ...`` in a child process with ``threads``
    CPU threads, whose exit status is the job's result. Checkpointable: submitit requeues a SLURM
    job that is preempted or runs out of time, and the run resumes from its checkpoint."""

    def __call__(self, arguments: list[str], gpus: int, root: str, threads: int) -> int:
        command = [sys.executable, "-m", "paper_repro", *arguments]
        if gpus > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *command[1:]]
        return subprocess.run(command, cwd=root, check=False, env=os.environ | {"OMP_NUM_THREADS": str(threads)}).returncode


def dvc(*arguments: str) -> str:
    """Run a DVC command here; its output, or a :class:`LaunchError` with its last error line."""
    result = subprocess.run([sys.executable, "-m", "dvc", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise LaunchError(f"dvc {' '.join(arguments)} failed: {lines[-1]}")
    return result.stdout


def stale_runs(stages: dict[Run, str]) -> list[Run]:
    """The runs whose stage ``dvc status`` reports changed: outputs missing, or inputs changed since they ran."""
    changed = json.loads(dvc("status", "--json", *sorted(set(stages.values()))) or "{}")
    return [run for run, stage in stages.items() if stage in changed]


def check_arguments(params_path: str, overrides: list[str]) -> None:
    """The runs must run with the parameters DVC records: ``params.yaml``, overridden in ``launch`` alone."""
    if Path(params_path) != Path("params.yaml"):
        raise ParamsError(f"launch runs with params.yaml, which DVC records, not {params_path}: write it there")
    for assignment in overrides:
        if not assignment.startswith("launch."):
            raise ParamsError(f"launch: --set {assignment} would run runs with parameters DVC does not record; "
                              "only launch.* may be overridden (edit params.yaml for the rest)")


class Launcher:
    """Submits, watches and records the runs of one parameter set (see the module's docstring)."""

    def __init__(self, settings: Settings, launch_settings: LaunchSettings) -> None:
        self.settings = launch_settings
        self.study_settings = settings
        self.stages = stages_of(settings)  # run -> its stage in dvc.yaml
        self.folder = Path(self.settings.folder)
        self.state_path = self.folder / "state.json"
        self.state: dict[str, dict] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        gpus = self.settings.gpus_per_job
        workers = self.settings.workers
        if workers == "auto":
            import torch

            workers = max(1, torch.cuda.device_count() // max(gpus, 1))
        # local GPUs per slot: the first `workers` groups of `gpus` devices (CUDA_VISIBLE_DEVICES of each job)
        self.slots = [tuple(range(slot * gpus, (slot + 1) * gpus)) for slot in range(workers)]
        local = self.settings.executor == "local"
        self.threads = threads_per_job(workers) if local else self.settings.slurm.cpus_per_job

    def run_folder(self, run: Run) -> Path:
        return self.folder / run_key(run)

    def executor(self, run: Run, gpus: tuple[int, ...]) -> submitit.Executor:
        settings = self.settings
        if settings.executor == "local":
            executor = submitit.LocalExecutor(self.run_folder(run))
            executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MINUTES, gpus_per_node=len(gpus), visible_gpus=gpus)
            return executor
        slurm = settings.slurm
        executor = submitit.SlurmExecutor(self.run_folder(run), max_num_timeout=settings.attempts)
        options = {"job_name": run_key(run), "time": slurm.time_minutes, "nodes": 1, "ntasks_per_node": 1,
                   "cpus_per_task": slurm.cpus_per_job, "mem": f"{slurm.mem_gb}GB", "setup": list(slurm.setup)}
        if settings.gpus_per_job:
            options["gpus_per_node"] = settings.gpus_per_job
        if slurm.partition:
            options["partition"] = slurm.partition
        executor.update_parameters(**options)
        return executor

    def job(self, run: Run) -> submitit.Job:
        """The recorded job of ``run`` (SLURM: its state survives the launcher)."""
        return submitit.SlurmJob(self.run_folder(run), self.state[run_key(run)]["job"])

    def record(self, run: Run, **entry) -> None:
        key = run_key(run)
        self.state[key] = self.state.get(key, {}) | entry
        write_json(self.state, self.state_path)

    def submit(self, run: Run, gpus: tuple[int, ...]) -> submitit.Job:
        attempt = self.state[run_key(run)]["attempt"] + 1
        job = self.executor(run, gpus).submit(RunJob(), run_arguments(run), self.settings.gpus_per_job, str(Path.cwd()), self.threads)
        self.record(run, state="running", job=job.job_id, attempt=attempt, log=str(job.paths.stderr))
        log.info("%s: job %s (attempt %d of %d, %d thread(s)); log %s", run_key(run), job.job_id, attempt, self.settings.attempts,
                 self.threads, job.paths.stderr)
        return job

    def outcome(self, run: Run, job: submitit.Job) -> str:
        """``done``, ``retry`` or ``failed``, recorded with the exit status or the job's error."""
        error = job.exception()
        status = None if error is not None else job.result()
        entry = self.state[run_key(run)]
        if status == 0:
            verdict = "done"
        elif status == USER_ERROR or entry["attempt"] >= self.settings.attempts:
            verdict = "failed"
        else:
            verdict = "retry"
        reason = f"exit status {status}" if error is None else str(error).strip().splitlines()[0]
        self.record(run, state="running" if verdict == "retry" else verdict, reason=None if status == 0 else reason)
        if verdict != "done":
            log.warning("%s: %s (%s); log %s", run_key(run), "submitting again" if verdict == "retry" else "failed", reason, entry["log"])
        return verdict

    def launch(self, wait: bool) -> None:
        """Bring the runs' inputs up to date, then submit every stale run and watch the jobs until all are
        done (or, with ``wait`` false on SLURM, until they are submitted), recording each finished stage."""
        local = self.settings.executor == "local"
        self.check_executor(local, wait)
        log.info("bringing the runs' inputs up to date: dvc repro %s", " ".join(UPSTREAM))
        dvc("repro", *UPSTREAM)
        runs = stale_runs(self.stages)
        log.info("%d runs to run, %s executor", len(runs), self.settings.executor)
        running, queue = self.running_and_queued(runs, local)
        capacity = len(self.slots) if local else len(runs)
        progress = tqdm(total=len(runs), desc="runs", unit="run")
        failed, unfinished = [], {}  # stage -> its runs not done yet
        for run in runs:
            unfinished.setdefault(self.stages[run], set()).add(run)
        while queue or running:
            busy = {slot for _, slot in running.values()}
            free = [slot for slot in range(len(self.slots)) if slot not in busy] if local else [None] * len(queue)
            while queue and len(running) < capacity:
                run, slot = queue.pop(0), free.pop(0)
                running[run] = (self.submit(run, self.slots[slot] if local else ()), slot)
            if not wait:
                print(f"{len(running)} runs queued or running on SLURM; `python -m paper_repro launch` again waits for them "
                      "and records them in DVC, `--status` shows them")
                return
            finished = self.collect_finished(running, queue, failed, progress)
            self.record_complete_stages(finished, unfinished)
            time.sleep(POLL_SECONDS if running else 0)
        progress.close()
        self.raise_for_failures(runs, failed)
        print(f"{len(runs)} runs done and recorded; `dvc repro` now runs what follows them (report, explain, notebooks)")

    def check_executor(self, local: bool, wait: bool) -> None:
        if not wait and local:
            raise ParamsError("launch --no-wait needs launch.executor: slurm (local jobs end with the launcher)")
        if not local and shutil.which("srun") is None:
            raise LaunchError("launch.executor slurm: this machine has no srun; launch from a SLURM login node, or use local")

    def running_and_queued(self, runs: list[Run], local: bool) -> tuple[dict[Run, tuple[submitit.Job, int | None]], list[Run]]:
        """``({run: (job, its local slot)}, runs to submit)``: a SLURM job recorded as running is watched (or its end
        taken), never submitted twice; every other run is queued afresh."""
        running, queue = {}, []
        for run in runs:
            if not local and self.state.get(run_key(run), {}).get("state") == "running":
                running[run] = (self.job(run), None)
            else:
                self.record(run, state="pending", attempt=0, reason=None)
                queue.append(run)
        return running, queue

    def collect_finished(self, running: dict, queue: list[Run], failed: list[Run], progress) -> list[Run]:
        """The runs whose jobs ended well since the last look; one to retry goes back to the queue's head, one that
        failed for good to ``failed``."""
        finished = []
        for run, (job, _) in list(running.items()):
            if not job.done():
                continue
            del running[run]
            verdict = self.outcome(run, job)
            if verdict == "retry":
                queue.insert(0, run)
                continue
            progress.update()
            (finished if verdict == "done" else failed).append(run)
        return finished

    def record_complete_stages(self, finished: list[Run], unfinished: dict[str, set[Run]]) -> None:
        """Record in ``dvc.lock`` (``dvc commit``) each dataset's stage whose last run just finished, after removing
        the files of runs its parameters no longer name."""
        complete = {}  # stage -> its dataset
        for run in finished:
            unfinished[self.stages[run]].discard(run)
            if not unfinished[self.stages[run]]:
                complete[self.stages[run]] = run.dataset
        for dataset in complete.values():
            remove_stale_runs(Layout(), dataset, self.study_settings.runs(dataset))
        if complete:
            dvc("commit", "--force", *complete)
            log.info("recorded in dvc.lock: %s", ", ".join(complete))

    def raise_for_failures(self, runs: list[Run], failed: list[Run]) -> None:
        failed = [run for run in runs if run in failed]  # in the matrix's order
        if failed:
            described = [f"{run_key(run)} ({self.state[run_key(run)]['reason']}, log {self.state[run_key(run)]['log']})" for run in failed]
            raise LaunchError(f"{len(failed)} of {len(runs)} runs failed: " + "; ".join(described))

    def table(self) -> pd.DataFrame:
        """pending / running / done / failed per run, with its attempts, job and log."""
        stale = set(stale_runs(self.stages))
        rows = []
        for run in self.stages:
            entry = self.state.get(run_key(run), {})
            state = "done" if run not in stale else entry.get("state") if entry.get("state") in ("running", "failed") else "pending"
            rows.append({"run": run_key(run), "state": state,
                         "attempts": entry.get("attempt", 0), "job": entry.get("job", ""), "log": entry.get("log", ""),
                         "reason": entry.get("reason") or ""})
        return pd.DataFrame(rows)


def launch(settings: Settings, launch_settings: LaunchSettings, params_path: str = "params.yaml", overrides: list[str] = (),
           show: bool = False, wait: bool = True) -> None:
    """The ``launch`` command (see the module's docstring)."""
    check_arguments(params_path, list(overrides))
    launcher = Launcher(settings, launch_settings)
    if show:
        print(launcher.table().to_string(index=False))
        return
    busy = "another launch ({holder}) is driving these runs (lock {lock}); wait for it, or see --status"
    with exclusive_lock(launcher.folder / ".lock", busy):
        launcher.launch(wait)
