"""``python -m paper_repro launch``: the study's runs as parallel jobs, recorded in DVC.

Each run is one ``run@...``, ``run_ablation@...`` or ``run_schedule@...`` stage of ``dvc.yaml``
(train, then evaluate, ``paper_repro/run.py``). The launcher

1. brings the runs' inputs up to date with ``dvc repro generate subsets pretrain``;
2. takes the runs whose outputs ``dvc status`` reports missing or stale;
3. submits each as one submitit job running ``python -m paper_repro run ...`` (under ``torchrun``
   when ``launch.gpus_per_job`` > 1): with ``launch.executor: local`` at most ``launch.workers``
   at once on this machine, each on GPUs of its own and with its share of the CPU threads
   (``runtime.threads_per_job``); with ``slurm`` all at once via ``sbatch``;
4. submits again a job that ended any other way than with a one-line error (exit status 2): a
   kill, a preemption or a crash. The run resumes from its checkpoint. After
   ``launch.attempts`` tries in all, or at once for exit status 2 (bad data or parameters), the
   run is failed and its log named;
5. records each finished run with ``dvc commit``, so that a final ``dvc repro`` runs only
   ``report``, ``explain`` and the notebooks.

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
from .layout import Run
from .runtime import threads_per_job
from .settings import Settings

log = logging.getLogger(__name__)

UPSTREAM = ("generate", "subsets", "pretrain")  # the stages whose outputs the runs read
USER_ERROR = 2  # the exit status of `python -m paper_repro` after a one-line error: running it again cannot help
POLL_SECONDS = 2.0
LOCAL_TIMEOUT_MINUTES = 7 * 24 * 60  # submitit's local jobs are killed after their timeout (default 2 minutes)


def stages_of(settings: Settings) -> dict[Run, str]:
    """Every run of the study, the ablation and the schedule sensitivity, in the matrix's order, with its
    stage in ``dvc.yaml`` (``run@synthetic-cityscapes-pals-10-0``, ``run_ablation@...``, ``run_schedule@...``:
    a matrix stage's name holds its matrix values, not the schedule factor)."""
    stages = {run: "run" for run in settings.study.runs()}
    for stage, extra in (("run_ablation", settings.ablation), ("run_schedule", settings.schedule)):
        stages |= {run: stage for run in (extra.runs() if extra else [])}
    return {run: f"{stage}@{run.dataset}-{run.method}-{run.percent}-{run.seed}" for run, stage in stages.items()}


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
    changed = json.loads(dvc("status", "--json", *sorted({stage.split("@")[0] for stage in stages.values()})) or "{}")
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

    def __init__(self, study: Settings) -> None:
        if study.launch is None:
            raise ParamsError("params.yaml: no launch: section (see the one in the repository's params.yaml)")
        self.settings = study.launch
        self.stages = stages_of(study)  # run -> its stage in dvc.yaml, the key of its state
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
        return self.folder / run.dataset / run.name

    def executor(self, run: Run, gpus: tuple[int, ...]) -> submitit.Executor:
        settings = self.settings
        if settings.executor == "local":
            executor = submitit.LocalExecutor(self.run_folder(run))
            executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MINUTES, gpus_per_node=len(gpus), visible_gpus=gpus)
            return executor
        slurm = settings.slurm
        executor = submitit.SlurmExecutor(self.run_folder(run), max_num_timeout=settings.attempts)
        options = {"job_name": self.stages[run], "time": slurm.time_minutes, "nodes": 1, "ntasks_per_node": 1,
                   "cpus_per_task": slurm.cpus_per_job, "mem": f"{slurm.mem_gb}GB", "setup": list(slurm.setup)}
        if settings.gpus_per_job:
            options["gpus_per_node"] = settings.gpus_per_job
        if slurm.partition:
            options["partition"] = slurm.partition
        executor.update_parameters(**options)
        return executor

    def job(self, run: Run) -> submitit.Job:
        """The recorded job of ``run`` (SLURM: its state survives the launcher)."""
        return submitit.SlurmJob(self.run_folder(run), self.state[self.stages[run]]["job"])

    def record(self, run: Run, **entry) -> None:
        stage = self.stages[run]
        self.state[stage] = self.state.get(stage, {}) | entry
        write_json(self.state, self.state_path)

    def submit(self, run: Run, gpus: tuple[int, ...]) -> submitit.Job:
        stage = self.stages[run]
        attempt = self.state[stage]["attempt"] + 1
        job = self.executor(run, gpus).submit(RunJob(), run_arguments(run), self.settings.gpus_per_job, str(Path.cwd()), self.threads)
        self.record(run, state="running", job=job.job_id, attempt=attempt, log=str(job.paths.stderr))
        log.info("%s: job %s (attempt %d of %d, %d thread(s)); log %s", stage, job.job_id, attempt, self.settings.attempts,
                 self.threads, job.paths.stderr)
        return job

    def outcome(self, run: Run, job: submitit.Job) -> str:
        """``done``, ``retry`` or ``failed``, recorded with the exit status or the job's error."""
        error = job.exception()
        status = None if error is not None else job.result()
        entry = self.state[self.stages[run]]
        if status == 0:
            verdict = "done"
        elif status == USER_ERROR or entry["attempt"] >= self.settings.attempts:
            verdict = "failed"
        else:
            verdict = "retry"
        reason = f"exit status {status}" if error is None else str(error).strip().splitlines()[0]
        self.record(run, state="running" if verdict == "retry" else verdict, reason=None if status == 0 else reason)
        if verdict != "done":
            log.warning("%s: %s (%s); log %s", self.stages[run], "submitting again" if verdict == "retry" else "failed", reason, entry["log"])
        return verdict

    def launch(self, wait: bool) -> None:
        local = self.settings.executor == "local"
        if not wait and local:
            raise ParamsError("launch --no-wait needs launch.executor: slurm (local jobs end with the launcher)")
        if not local and shutil.which("srun") is None:
            raise LaunchError("launch.executor slurm: this machine has no srun; launch from a SLURM login node, or use local")
        log.info("bringing the runs' inputs up to date: dvc repro %s", " ".join(UPSTREAM))
        dvc("repro", *UPSTREAM)
        runs = stale_runs(self.stages)
        log.info("%d runs to run, %s executor", len(runs), self.settings.executor)
        running: dict[Run, tuple[submitit.Job, int | None]] = {}  # run -> (job, its local slot)
        queue = []
        for run in runs:  # a SLURM job recorded as running is watched (or its end taken), never submitted twice
            if not local and self.state.get(self.stages[run], {}).get("state") == "running":
                running[run] = (self.job(run), None)
            else:
                self.record(run, state="pending", attempt=0, reason=None)
                queue.append(run)
        capacity = len(self.slots) if local else len(runs)
        progress = tqdm(total=len(runs), desc="runs", unit="run")
        failed = []
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
            if finished:
                dvc("commit", "--force", *[self.stages[run] for run in finished])
                log.info("recorded in dvc.lock: %s", ", ".join(self.stages[run] for run in finished))
            time.sleep(POLL_SECONDS if running else 0)
        progress.close()
        failed = [run for run in runs if run in failed]  # in the matrix's order
        if failed:
            described = [f"{self.stages[run]} ({self.state[self.stages[run]]['reason']}, log {self.state[self.stages[run]]['log']})" for run in failed]
            raise LaunchError(f"{len(failed)} of {len(runs)} runs failed: " + "; ".join(described))
        print(f"{len(runs)} runs done and recorded; `dvc repro` now runs what follows them (report, explain, notebooks)")

    def table(self) -> pd.DataFrame:
        """pending / running / done / failed per run, with its attempts, job and log."""
        stale = set(stale_runs(self.stages))
        rows = []
        for run, stage in self.stages.items():
            entry = self.state.get(stage, {})
            state = "done" if run not in stale else entry.get("state") if entry.get("state") in ("running", "failed") else "pending"
            rows.append({"run": stage, "state": state,
                         "attempts": entry.get("attempt", 0), "job": entry.get("job", ""), "log": entry.get("log", ""),
                         "reason": entry.get("reason") or ""})
        return pd.DataFrame(rows)


def launch(study: Settings, params_path: str = "params.yaml", overrides: list[str] = (), show: bool = False, wait: bool = True) -> None:
    """The ``launch`` command (see the module's docstring)."""
    check_arguments(params_path, list(overrides))
    launcher = Launcher(study)
    if show:
        print(launcher.table().to_string(index=False))
        return
    busy = "another launch ({holder}) is driving these runs (lock {lock}); wait for it, or see --status"
    with exclusive_lock(launcher.folder / ".lock", busy):
        launcher.launch(wait)
