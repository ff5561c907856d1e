"""``python -m paper_repro launch``: the matrix's cells as parallel jobs, recorded in DVC.

A cell is one ``run@...`` or ``run_ablation@...`` stage of ``dvc.yaml`` (train, then evaluate,
``paper_repro/cell.py``). The launcher

1. brings the cells' inputs up to date with ``dvc repro generate subsets pretrain``;
2. takes the cells whose outputs ``dvc status`` reports missing or stale;
3. submits each as one submitit job running ``python -m paper_repro run ...`` (under ``torchrun``
   when ``launch.gpus_per_job`` > 1): with ``launch.executor: local`` at most ``launch.workers``
   at once on this machine, each on GPUs of its own; with ``slurm`` all at once via ``sbatch``;
4. submits again a job that ended any other way than with a one-line error (exit status 2): a
   kill, a preemption or a crash. The cell resumes from its checkpoint. After
   ``launch.attempts`` tries in all, or at once for exit status 2 (bad data or parameters), the
   cell is failed and its log named;
5. records each finished cell with ``dvc commit``, so that a final ``dvc repro`` runs only
   ``report``, ``explain`` and the notebooks.

Jobs' logs and the launcher's state lie under ``launch.folder``: ``<dataset>/<run>/`` per cell
(submitit's ``<job>_0_log.out`` and ``.err``) and ``state.json``. One launcher drives a folder at
a time (a second fails at once), and a cell whose job is still queued or running is never
submitted again. ``--no-wait`` (SLURM) submits and returns; a later ``launch`` picks the jobs up.
``--status`` prints the table of cells.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import submitit
from tqdm.auto import tqdm

from .atomic import exclusive_lock, write_json
from .errors import LaunchError, ParamsError
from .layout import Run, runs_of

log = logging.getLogger(__name__)

UPSTREAM = ("generate", "subsets", "pretrain")  # the stages whose outputs the cells read
USER_ERROR = 2  # the exit status of `python -m paper_repro` after a one-line error: running it again cannot help
POLL_SECONDS = 2.0
LOCAL_TIMEOUT_MINUTES = 7 * 24 * 60  # submitit's local jobs are killed after their timeout (default 2 minutes)


@dataclass(frozen=True)
class Cell:
    """One job: a run of the ``run`` stage's matrix (``run``) or of the ablation's (``run_ablation``)."""

    stage: str
    run: Run

    @property
    def name(self) -> str:
        """Its stage name in ``dvc.yaml``, e.g. ``run@synthetic-cityscapes-pals-10-0``."""
        return f"{self.stage}@{self.run.dataset}-{self.run.name}"

    def arguments(self) -> list[str]:
        run = self.run
        return ["run", "--dataset", run.dataset, "--method", run.method, "--fraction", str(run.percent), "--seed", str(run.seed)]


def cells_of(params: dict) -> list[Cell]:
    cells = [Cell("run", run) for run in runs_of(params, "study")]
    return cells + ([Cell("run_ablation", run) for run in runs_of(params, "ablation")] if "ablation" in params else [])


class CellJob(submitit.helpers.Checkpointable):
    """A cell inside its job: ``python -m paper_repro run ...`` in a child process, whose exit status
    is the job's result. Checkpointable: submitit requeues a SLURM job that is preempted or runs
    out of time, and the run resumes from its checkpoint."""

    def __call__(self, arguments: list[str], gpus: int, root: str) -> int:
        command = [sys.executable, "-m", "paper_repro", *arguments]
        if gpus > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *command[1:]]
        return subprocess.run(command, cwd=root, check=False).returncode


def dvc(*arguments: str) -> str:
    """Run a DVC command here; its output, or a :class:`LaunchError` with its last error line."""
    result = subprocess.run([sys.executable, "-m", "dvc", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise LaunchError(f"dvc {' '.join(arguments)} failed: {lines[-1]}")
    return result.stdout


def stale_cells(cells: list[Cell]) -> list[Cell]:
    """The cells whose stage ``dvc status`` reports changed: outputs missing, or inputs changed since they ran."""
    changed = json.loads(dvc("status", "--json", *sorted({cell.stage for cell in cells})) or "{}")
    return [cell for cell in cells if cell.name in changed]


def check_arguments(params_path: str, overrides: list[str]) -> None:
    """The cells must run with the parameters DVC records: ``params.yaml``, overridden in ``launch`` alone."""
    if Path(params_path) != Path("params.yaml"):
        raise ParamsError(f"launch runs the cells with params.yaml, which DVC records, not {params_path}: copy it there")
    for assignment in overrides:
        if not assignment.startswith("launch."):
            raise ParamsError(f"launch: --set {assignment} would run cells with parameters DVC does not record; "
                              "only launch.* may be overridden (edit params.yaml for the rest)")


class Launcher:
    """Submits, watches and records the cells of one parameter set (see the module's docstring)."""

    def __init__(self, params: dict) -> None:
        if "launch" not in params:
            raise ParamsError("params.yaml: no launch: section (see the one in the repository's params.yaml)")
        self.params, self.settings = params, params["launch"]
        self.folder = Path(self.settings["folder"])
        self.state_path = self.folder / "state.json"
        self.state: dict[str, dict] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        gpus = self.settings["gpus_per_job"]
        workers = self.settings["workers"]
        if workers == "auto":
            import torch

            workers = max(1, torch.cuda.device_count() // max(gpus, 1))
        # local GPUs per slot: the first `workers` groups of `gpus` devices (CUDA_VISIBLE_DEVICES of each job)
        self.slots = [tuple(range(slot * gpus, (slot + 1) * gpus)) for slot in range(workers)]

    def cell_folder(self, cell: Cell) -> Path:
        return self.folder / cell.run.dataset / cell.run.name

    def executor(self, cell: Cell, gpus: tuple[int, ...]) -> submitit.Executor:
        settings = self.settings
        if settings["executor"] == "local":
            executor = submitit.LocalExecutor(self.cell_folder(cell))
            executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MINUTES, gpus_per_node=len(gpus), visible_gpus=gpus)
            return executor
        slurm = settings["slurm"]
        executor = submitit.SlurmExecutor(self.cell_folder(cell), max_num_timeout=settings["attempts"])
        options = {"job_name": cell.name, "time": slurm["time_minutes"], "nodes": 1, "ntasks_per_node": 1,
                   "cpus_per_task": slurm["cpus_per_job"], "mem": f"{slurm['mem_gb']}GB", "setup": list(slurm["setup"])}
        if settings["gpus_per_job"]:
            options["gpus_per_node"] = settings["gpus_per_job"]
        if slurm["partition"]:
            options["partition"] = slurm["partition"]
        executor.update_parameters(**options)
        return executor

    def job(self, cell: Cell) -> submitit.Job:
        """The recorded job of ``cell`` (SLURM: its state survives the launcher)."""
        return submitit.SlurmJob(self.cell_folder(cell), self.state[cell.name]["job"])

    def record(self, cell: Cell, **entry) -> None:
        self.state[cell.name] = self.state.get(cell.name, {}) | entry
        write_json(self.state, self.state_path)

    def submit(self, cell: Cell, gpus: tuple[int, ...]) -> submitit.Job:
        attempt = self.state[cell.name]["attempt"] + 1
        job = self.executor(cell, gpus).submit(CellJob(), cell.arguments(), self.settings["gpus_per_job"], str(Path.cwd()))
        self.record(cell, state="running", job=job.job_id, attempt=attempt, log=str(job.paths.stderr))
        log.info("%s: job %s (attempt %d of %d); log %s", cell.name, job.job_id, attempt, self.settings["attempts"], job.paths.stderr)
        return job

    def outcome(self, cell: Cell, job: submitit.Job) -> str:
        """``done``, ``retry`` or ``failed``, recorded with the exit status or the job's error."""
        error = job.exception()
        status = None if error is not None else job.result()
        entry = self.state[cell.name]
        if status == 0:
            verdict = "done"
        elif status == USER_ERROR or entry["attempt"] >= self.settings["attempts"]:
            verdict = "failed"
        else:
            verdict = "retry"
        reason = f"exit status {status}" if error is None else str(error).strip().splitlines()[0]
        self.record(cell, state="running" if verdict == "retry" else verdict, reason=None if status == 0 else reason)
        if verdict != "done":
            log.warning("%s: %s (%s); log %s", cell.name, "submitting again" if verdict == "retry" else "failed", reason, entry["log"])
        return verdict

    def launch(self, wait: bool) -> None:
        local = self.settings["executor"] == "local"
        if not wait and local:
            raise ParamsError("launch --no-wait needs launch.executor: slurm (local jobs end with the launcher)")
        if not local and shutil.which("srun") is None:
            raise LaunchError("launch.executor slurm: this machine has no srun; launch from a SLURM login node, or use local")
        log.info("bringing the cells' inputs up to date: dvc repro %s", " ".join(UPSTREAM))
        dvc("repro", *UPSTREAM)
        cells = stale_cells(cells_of(self.params))
        log.info("%d cells to run, %s executor", len(cells), self.settings["executor"])
        running: dict[Cell, tuple[submitit.Job, int | None]] = {}  # cell -> (job, its local slot)
        queue = []
        for cell in cells:  # a SLURM job recorded as running is watched (or its end taken), never submitted twice
            if not local and self.state.get(cell.name, {}).get("state") == "running":
                running[cell] = (self.job(cell), None)
            else:
                self.record(cell, state="pending", attempt=0, reason=None)
                queue.append(cell)
        capacity = len(self.slots) if local else len(cells)
        progress = tqdm(total=len(cells), desc="cells", unit="cell")
        failed = []
        while queue or running:
            busy = {slot for _, slot in running.values()}
            free = [slot for slot in range(len(self.slots)) if slot not in busy] if local else [None] * len(queue)
            while queue and len(running) < capacity:
                cell, slot = queue.pop(0), free.pop(0)
                running[cell] = (self.submit(cell, self.slots[slot] if local else ()), slot)
            if not wait:
                print(f"{len(running)} cells queued or running on SLURM; `python -m paper_repro launch` again waits for them "
                      "and records them in DVC, `--status` shows them")
                return
            finished = []
            for cell, (job, _) in list(running.items()):
                if not job.done():
                    continue
                del running[cell]
                verdict = self.outcome(cell, job)
                if verdict == "retry":
                    queue.insert(0, cell)
                    continue
                progress.update()
                (finished if verdict == "done" else failed).append(cell)
            if finished:
                dvc("commit", "--force", *[cell.name for cell in finished])
                log.info("recorded in dvc.lock: %s", ", ".join(cell.name for cell in finished))
            time.sleep(POLL_SECONDS if running else 0)
        progress.close()
        failed = [cell for cell in cells if cell in failed]  # in the matrix's order
        if failed:
            raise LaunchError(f"{len(failed)} of {len(cells)} cells failed: "
                              + "; ".join(f"{cell.name} ({self.state[cell.name]['reason']}, log {self.state[cell.name]['log']})" for cell in failed))
        print(f"{len(cells)} cells done and recorded; `dvc repro` now runs what follows them (report, explain, notebooks)")

    def table(self) -> pd.DataFrame:
        """pending / running / done / failed per cell, with its attempts, job and log."""
        cells = cells_of(self.params)
        stale = {cell.name for cell in stale_cells(cells)}
        rows = []
        for cell in cells:
            entry = self.state.get(cell.name, {})
            state = "done" if cell.name not in stale else entry.get("state") if entry.get("state") in ("running", "failed") else "pending"
            rows.append({"cell": cell.name, "state": state,
                         "attempts": entry.get("attempt", 0), "job": entry.get("job", ""), "log": entry.get("log", ""),
                         "reason": entry.get("reason") or ""})
        return pd.DataFrame(rows)


def launch(params: dict, params_path: str = "params.yaml", overrides: list[str] = (), show: bool = False, wait: bool = True) -> None:
    """The ``launch`` command (see the module's docstring)."""
    check_arguments(params_path, list(overrides))
    launcher = Launcher(params)
    if show:
        print(launcher.table().to_string(index=False))
        return
    busy = "another launch ({holder}) is driving these cells (lock {lock}); wait for it, or see --status"
    with exclusive_lock(launcher.folder / ".lock", busy):
        launcher.launch(wait)
