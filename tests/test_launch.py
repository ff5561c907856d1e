"""``python -m paper_repro launch`` on a tiny DVC study: parallel local jobs record what a serial
``dvc repro`` records; a killed job is submitted again and resumes to the same weights; a cell
with a data or parameter error fails once, naming its log; SLURM submissions are written
through submitit against stand-in ``sbatch`` / ``sacct`` commands."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, TINY_PARAMS
from paper_repro.atomic import exclusive_lock
from paper_repro.launch import run_arguments, run_key, stages_of
from paper_repro.layout import Layout, Run
from paper_repro.settings import resolve

LAUNCH = {"executor": "local", "workers": 2, "gpus_per_job": 0, "attempts": 3, "folder": "launch",
          "slurm": {"partition": None, "time_minutes": 60, "cpus_per_job": 2, "mem_gb": 4, "setup": ["echo job setup"]}}
PARAMS = TINY_PARAMS | {
    "methods": TINY_PARAMS["methods"] | {"pals_uniform": {"loss": "pals_uniform", "alpha": 0.5, "T": 1.0}},
    "ablation": {"datasets": ["tiny-streets"], "methods": ["pals_uniform"], "percents": [50], "seeds": [0]},
    "schedule": {"factor": 2, "datasets": ["tiny-streets"], "methods": ["ce"], "percents": [50], "seeds": [0]},
    "launch": LAUNCH,
}
ENV = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "DVC_NO_ANALYTICS": "1"}
STAGES = stages_of(resolve(PARAMS, "launch test parameters"))  # run -> its stage in dvc.yaml


def command(workspace: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=workspace, env=os.environ | ENV | (env_extra or {}),
                          capture_output=True, text=True)


def make_study(folder: Path, params: dict) -> Path:
    """A git + DVC workspace with this repository's pipeline (its notebooks aside) and ``params``."""
    folder.mkdir()
    shutil.copytree(ROOT / "paper_repro", folder / "paper_repro", ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    del stages["notebooks"]
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / ".gitignore").write_text("/launch/\n")
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    assert command(folder, "dvc", "init", "-q").returncode == 0
    return folder


def lock_entries(workspace: Path) -> dict:
    return yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]


def test_parallel_jobs_record_what_a_serial_repro_records(tmp_path):
    serial, parallel = make_study(tmp_path / "serial", PARAMS), make_study(tmp_path / "parallel", PARAMS)
    assert command(serial, "dvc", "repro").returncode == 0

    devices, threads, watching = [], set(), threading.Event()  # CUDA_VISIBLE_DEVICES of the runs at each moment, their threads

    def watch():
        while not watching.is_set():
            found = {pid: environment_value(pid, "CUDA_VISIBLE_DEVICES") for pid in processes_of(["paper_repro", "run"])}
            # a look at /proc is not one instant (on a loaded machine the scan may pause for seconds): the runs found
            # that are still there once it ends ran together then; one that ended meanwhile may have left its slot to a new one
            together = [pid for pid in found if (Path("/proc") / str(pid)).exists()]
            devices.append(sorted(found[pid] for pid in together if found[pid] is not None))
            threads.update(value for value in (environment_value(pid, "OMP_NUM_THREADS") for pid in found) if value is not None)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # one "GPU" per job: on this CPU-only machine the runs still run on the CPU, but each job's
    # CUDA_VISIBLE_DEVICES shows which slot it holds. A budget of 2 threads: 1 for each of the 2 jobs
    # at once, as the serial repro's one process had
    launched = command(parallel, "paper_repro", "launch", "--set", "launch.gpus_per_job=1", env_extra={"OMP_NUM_THREADS": "2"})
    watching.set()
    watcher.join()
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "6 runs done and recorded" in launched.stdout
    assert ["0", "1"] in devices  # two runs at once, on slots of their own
    assert threads == {"1"}
    assert all(len(moment) == len(set(moment)) and len(moment) <= 2 for moment in devices)
    assert {device for moment in devices for device in moment} == {"0", "1"}
    finished = command(parallel, "dvc", "repro")
    assert finished.returncode == 0, finished.stderr[-3000:]
    ran = {line.split("'")[1] for line in finished.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"report", "explain@tiny-streets"}  # every run was recorded; nothing upstream reran
    assert "Data and pipelines are up to date." in command(parallel, "dvc", "status").stdout

    layout = Layout(".")
    assert len(STAGES) == 6 and set(STAGES.values()) == {"runs@tiny-streets"}
    for run in STAGES:
        assert (parallel / layout.metrics(run)).read_bytes() == (serial / layout.metrics(run)).read_bytes()
        logs = [pd.read_csv(study / layout.log(run)) for study in (parallel, serial)]
        pd.testing.assert_frame_equal(*(log[["iteration", "loss", "lr", "threads"]] for log in logs))
        assert set(logs[0]["threads"]) == {1}
    # the recorded weights, predictions and metrics; the CSV logs also hold seconds per iteration
    outputs = [{entry["path"]: entry for entry in lock_entries(study)["runs@tiny-streets"]["outs"]} for study in (parallel, serial)]
    timed = str(layout.run_folders("tiny-streets").logs)
    assert outputs[0].keys() == outputs[1].keys() == {str(folder) for folder in layout.run_folders("tiny-streets")}
    assert all(outputs[0][path] == outputs[1][path] for path in outputs[0] if path != timed)
    assert (parallel / layout.table("main")).read_bytes() == (serial / layout.table("main")).read_bytes()

    status = command(parallel, "paper_repro", "launch", "--status")
    assert status.returncode == 0
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert sorted(row[0] for row in rows) == sorted(run_key(run) for run in STAGES)
    assert all(row[1:3] == ["done", "1"] for row in rows)


def processes_of(words: list[str]) -> list[int]:
    """The pids of the processes whose command line holds every one of ``words``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue
        if all(word in arguments for word in words):
            pids.append(int(entry.name))
    return pids


def environment_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment of process ``pid`` (None if unset or gone)."""
    try:
        environment = (Path("/proc") / str(pid) / "environ").read_bytes().decode().split("\0")
    except (OSError, ValueError):
        return None
    return next((item.split("=", 1)[1] for item in environment if item.startswith(f"{name}=")), None)


def test_a_killed_job_is_submitted_again_and_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    params = PARAMS | {"study": PARAMS["study"] | {"methods": ["ce", "pals"], "percents": [50]},
                       "train": PARAMS["train"] | {"iterations": 150, "checkpoint_every": 10},
                       "launch": LAUNCH | {"workers": 1}}
    workspace = make_study(tmp_path / "study", params)
    run, layout = Run("tiny-streets", "ce", 50, 0), Layout(workspace)
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not layout.checkpoint(run).exists():
            time.sleep(0.01)
        pids = processes_of(["paper_repro", "run", "--dataset", run.dataset, "--method", run.method, "--percent", str(run.percent)])
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(torch.load(layout.checkpoint(run), weights_only=False)["iteration"])

    killer = threading.Thread(target=kill_after_first_checkpoint)
    killer.start()
    launched = command(workspace, "paper_repro", "launch")
    killer.join()
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert killed and killed[0] < 150, "the training was not killed mid-run"

    state = json.loads((workspace / "launch/state.json").read_text())
    key = run_key(run)
    assert state[key]["attempt"] == 2 and state[key]["state"] == "done"
    assert all(entry["attempt"] == 1 for name, entry in state.items() if name != key)
    assert "resuming" in Path(state[key]["log"]).read_text()

    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("params.yaml", "data", "subsets"):
        (shutil.copytree if (workspace / name).is_dir() else shutil.copy)(workspace / name, reference / name)
    trained = command(reference, "paper_repro", "train", "--dataset", run.dataset, "--method", run.method,
                      "--percent", str(run.percent), "--seed", str(run.seed))
    assert trained.returncode == 0, trained.stderr[-3000:]
    resumed = torch.load(layout.model(run), weights_only=True)["model"]
    uninterrupted = torch.load(Layout(reference).model(run), weights_only=True)["model"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)
    assert "Data and pipelines are up to date." in command(workspace, "dvc", "status", "runs").stdout


def test_a_forced_rerun_of_the_runs_stage_keeps_the_seconds_per_iteration_each_run_measured(tmp_path):
    """DVC deletes a stage's outputs before it runs the stage, except those that persist: the checkpoints
    and the CSV logs do, so runs resumed from their last checkpoint keep the timings of their training."""
    workspace = make_study(tmp_path / "study", PARAMS | {"study": PARAMS["study"] | {"percents": [50]}})
    first = command(workspace, "dvc", "repro", "runs@tiny-streets")
    assert first.returncode == 0, first.stderr[-3000:]
    logs = Layout(workspace).run_folders("tiny-streets").logs
    measured = {path.name: pd.read_csv(path) for path in logs.iterdir()}
    assert len(measured) == 4 and all((log["step_seconds"] > 0).all() for log in measured.values())
    again = command(workspace, "dvc", "repro", "--force", "--single-item", "runs@tiny-streets")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("resuming runs/tiny-streets/") == 4
    for name, log in measured.items():
        pd.testing.assert_frame_equal(pd.read_csv(logs / name), log)


def test_a_run_with_a_parameter_error_fails_once_and_names_its_log(tmp_path):
    params = PARAMS | {"train": PARAMS["train"] | {"lr": 1e30}}  # the loss becomes nan: `run` exits with a one-line error
    workspace = make_study(tmp_path / "study", params)
    launched = command(workspace, "paper_repro", "launch")
    assert launched.returncode == 2
    [message] = launched.stderr.strip().splitlines()[-1:]
    assert message.startswith("error: 6 of 6 runs failed: tiny-streets/ce-50-0 (exit status 2, log ")
    state = json.loads((workspace / "launch/state.json").read_text())
    assert all(entry["state"] == "failed" and entry["attempt"] == 1 for entry in state.values())
    for entry in state.values():
        assert entry["log"] in message and "error: loss became" in Path(entry["log"]).read_text()
    status = command(workspace, "paper_repro", "launch", "--status").stdout
    assert status.count(" failed ") == 6
    assert not (workspace / "dvc.lock").exists() or not any(name.startswith("run") for name in lock_entries(workspace))


FAKE_SBATCH = """#!/bin/bash
echo "$@" >> "$SLURM_CALLS"
echo "Submitted batch job $((4240 + $(wc -l < "$SLURM_CALLS")))"
"""
FAKE_SACCT = """#!/bin/bash
echo "JobID|State|NodeList"
while [ $# -gt 0 ]; do if [ "$1" = "-j" ]; then echo "$2|RUNNING|node1"; shift; fi; shift; done
"""


def test_slurm_jobs_carry_the_launch_parameters_and_are_never_submitted_twice(tmp_path):
    workspace = make_study(tmp_path / "study", PARAMS)
    bin_folder, calls = tmp_path / "bin", tmp_path / "sbatch-calls"
    bin_folder.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("sacct", FAKE_SACCT), ("srun", "#!/bin/bash\nexit 1\n")):
        (bin_folder / name).write_text(text)
        (bin_folder / name).chmod(0o755)
    env = {"PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}", "SLURM_CALLS": str(calls)}
    arguments = ["paper_repro", "launch", "--no-wait", "--set", "launch.executor=slurm", "--set", "launch.gpus_per_job=2",
                 "--set", "launch.slurm.partition=gpu"]

    first = command(workspace, *arguments, env_extra=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "6 runs queued or running on SLURM" in first.stdout
    assert len(calls.read_text().splitlines()) == 6
    state = json.loads((workspace / "launch/state.json").read_text())
    run = Run("tiny-streets", "pals", 100, 0)
    key = run_key(run)
    folder = workspace / "launch" / "tiny-streets" / "pals-100-0"
    script = (folder / f"{state[key]['job']}_submission.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --time=60", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --mem=4GB", "#SBATCH --job-name=tiny-streets/pals-100-0", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "echo job setup", f"#SBATCH --output={folder}/%j_0_log.out"):
        assert line in script.splitlines(), line
    submission = pickle.loads((folder / f"{state[key]['job']}_submitted.pkl").read_bytes())
    assert submission.args == (run_arguments(run), 2, str(workspace), 2)  # the job's threads: its CPUs
    assert run_arguments(run) == ["run", "--dataset", "tiny-streets", "--method", "pals", "--percent", "100", "--seed", "0"]
    longer = Run("tiny-streets", "ce", 50, 0, 2)
    assert STAGES[longer] == "runs@tiny-streets"
    assert run_arguments(longer) == ["run", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "0", "--schedule", "2"]

    again = command(workspace, *arguments, env_extra=env)  # every job is still queued or running
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(calls.read_text().splitlines()) == 6
    status = command(workspace, "paper_repro", "launch", "--status").stdout
    assert status.count(" running ") == 6


def test_a_second_launcher_fails_at_once_and_only_launch_parameters_may_be_overridden(tmp_path):
    workspace = make_study(tmp_path / "study", PARAMS)
    with exclusive_lock(workspace / "launch" / ".lock", "held by the test"):
        second = command(workspace, "paper_repro", "launch")
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith("error: another launch (process ")
    for arguments, expected in ((["--set", "train.lr=0.1"], "only launch.* may be overridden"),
                                (["--params", "other.yaml"], "launch runs with params.yaml"),
                                (["--set", "launch.executor=pbs"], "launch.executor must be local or slurm"),
                                (["--no-wait"], "launch --no-wait needs launch.executor: slurm"),
                                (["--set", "launch.executor=slurm"], "this machine has no srun")):
        if "--params" in arguments:
            shutil.copy(workspace / "params.yaml", workspace / "other.yaml")
        result = command(workspace, "paper_repro", "launch", *arguments)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not (workspace / "launch" / "state.json").exists()


@pytest.mark.parametrize("source", ["params.yaml", "presets/cityscapes.yaml", "presets/voc.yaml", "presets/embedded-gpu.yaml"])
def test_every_shipped_parameter_file_can_launch(source):
    """Every shipped file's launch section is valid, and launch finds one stage per run of its study, sweep, schedule and scale checks."""
    from paper_repro.config import load_settings
    from paper_repro.tool_settings import load_launch

    settings = load_settings(ROOT / source, ["launch.workers=2"])
    assert load_launch(ROOT / source, ["launch.workers=2"]).workers == 2
    stages = stages_of(settings)
    scaled = {f"runs-scaled@{settings.dataset(dataset).scaled_from}" for dataset in (settings.scale.datasets if settings.scale else ())}
    assert list(stages) == settings.runs() and set(stages.values()) == {f"runs@{dataset}" for dataset in settings.study.datasets} | scaled


def test_concurrent_jobs_share_the_thread_budget(monkeypatch):
    from paper_repro.runtime import thread_budget, threads_per_job

    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert thread_budget() == 8 and [threads_per_job(jobs) for jobs in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_budget() == len(os.sched_getaffinity(0))
