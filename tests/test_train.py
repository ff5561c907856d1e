"""Training: seeded batches, kill-and-resume to identical weights, DDP on gloo with 2 processes."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

from conftest import ROOT, run_cli
from paper_repro.train import SeededBatches


def test_seeded_batches_visit_every_sample_once_per_epoch():
    batches = list(SeededBatches(size=10, batch_size=5, seed=3, start=0, total=4))
    indices = [index for batch in batches for index, _ in batch]
    assert sorted(indices[:10]) == list(range(10)) and sorted(indices[10:]) == list(range(10))
    assert indices[:10] != indices[10:]  # a new order each epoch
    seeds = [seed for batch in batches for _, seed in batch]
    assert len(set(seeds)) == len(seeds)  # every sample draw has its own augmentation seed


def test_seeded_batches_resume_mid_stream_and_split_across_ranks():
    full = list(SeededBatches(size=7, batch_size=2, seed=0, start=0, total=9))
    assert list(SeededBatches(size=7, batch_size=2, seed=0, start=4, total=9)) == full[4:]
    single = list(SeededBatches(size=7, batch_size=4, seed=0, start=0, total=5))
    ranks = [list(SeededBatches(size=7, batch_size=2, seed=0, start=0, total=5, rank=r, world=2)) for r in (0, 1)]
    for step in range(5):  # the two ranks together take exactly the single process's global batch
        assert ranks[0][step] + ranks[1][step] == single[step]
    assert list(SeededBatches(size=7, batch_size=2, seed=1, start=0, total=9)) != full


def train_args(run_seed=0):
    return ["train", "--dataset", "tiny-streets", "--method", "pals", "--percent", "100", "--seed", str(run_seed)]


def weights(workspace, run):
    return torch.load(workspace / "runs" / "tiny-streets" / run / "model.pt", weights_only=False)["model"]


def kill_after_first_checkpoint(workspace, run, args):
    """Start ``python -m paper_repro *args`` and SIGKILL it once ``run`` has written a checkpoint; the checkpoint's iteration."""
    checkpoint = workspace / "runs" / "tiny-streets" / run / "checkpoint.pt"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "paper_repro", *args], cwd=workspace, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    return torch.load(checkpoint, weights_only=False)["iteration"]


def test_killed_run_resumes_to_exactly_the_uninterrupted_weights(tiny_workspace):
    iterations = ["--set", "train.iterations=60", "--set", "train.checkpoint_every=5"]
    reference = run_cli(tiny_workspace, *train_args(), *iterations)
    assert reference.returncode == 0, reference.stderr
    expected = weights(tiny_workspace, "pals-100-0")
    expected_log = (tiny_workspace / "results" / "logs" / "tiny-streets" / "pals-100-0.csv").read_text()

    # the same run again from scratch, killed (SIGKILL) once it has written a checkpoint
    run_dir = tiny_workspace / "runs" / "tiny-streets" / "pals-100-0"
    for path in run_dir.iterdir():
        path.unlink()
    stopped_at = kill_after_first_checkpoint(tiny_workspace, "pals-100-0", (*train_args(), *iterations))
    assert not (run_dir / "model.pt").exists()
    assert 5 <= stopped_at < 60

    resumed = run_cli(tiny_workspace, *train_args(), *iterations)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming runs/tiny-streets/pals-100-0 from iteration {stopped_at}" in resumed.stderr
    actual = weights(tiny_workspace, "pals-100-0")
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name
    resumed_log = (tiny_workspace / "results" / "logs" / "tiny-streets" / "pals-100-0.csv").read_text()
    losses = lambda text: [line.split(",")[:3] for line in text.splitlines()]  # noqa: E731  (not timings)
    assert losses(resumed_log) == losses(expected_log)


def test_checkpoint_of_other_parameters_is_not_resumed(tiny_workspace):
    first = run_cli(tiny_workspace, "train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "0")
    assert first.returncode == 0, first.stderr
    changed = run_cli(tiny_workspace, "train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "0",
                      "--set", "train.lr=0.02")
    assert changed.returncode == 0, changed.stderr
    assert "WARNING ignoring runs/tiny-streets/ce-50-0/checkpoint.pt: it was written with other parameters or data (train differ)" in changed.stderr
    assert "resuming runs/" not in changed.stderr


def test_resume_recognises_the_training_files_by_content(tiny_workspace):
    args = ("train", "--dataset", "tiny-streets", "--method", "ls", "--percent", "100", "--seed", "0")
    first = run_cli(tiny_workspace, *args)
    assert first.returncode == 0, first.stderr
    expected = weights(tiny_workspace, "ls-100-0")

    # the same files elsewhere with new modification times (a copy to another disk, a dvc checkout) resume
    copy = tiny_workspace / "data" / "tiny-copy"
    shutil.copytree(tiny_workspace / "data" / "tiny-streets", copy, copy_function=shutil.copyfile)
    moved = run_cli(tiny_workspace, *args, "--set", "datasets.tiny-streets.root=data/tiny-copy")
    assert moved.returncode == 0, moved.stderr
    assert "resuming runs/tiny-streets/ls-100-0 from iteration 6" in moved.stderr and "WARNING" not in moved.stderr
    actual = weights(tiny_workspace, "ls-100-0")
    assert all(torch.equal(actual[name], expected[name]) for name in expected)

    # one changed label pixel, with the file's modification time put back, starts afresh
    label = sorted(copy.glob("gtFine/train/*/*_labelIds.png"))[0]
    status = label.stat()
    pixels = np.asarray(Image.open(label)).copy()
    pixels[0, 0] = 7 if pixels[0, 0] != 7 else 8
    Image.fromarray(pixels).save(label)
    os.utime(label, ns=(status.st_atime_ns, status.st_mtime_ns))
    changed = run_cli(tiny_workspace, *args, "--set", "datasets.tiny-streets.root=data/tiny-copy")
    assert changed.returncode == 0, changed.stderr
    assert "WARNING ignoring" in changed.stderr and "(files differ)" in changed.stderr
    shutil.rmtree(copy)


def fresh_copy(tiny_workspace, folder):
    """The tiny study's parameters, data and subsets, and no run: a workspace of the test's own."""
    folder.mkdir(exist_ok=True)
    for name in ("params.yaml", "data", "subsets"):
        (shutil.copytree if (tiny_workspace / name).is_dir() else shutil.copy)(tiny_workspace / name, folder / name)
    return folder


def test_loading_and_saving_settings_do_not_change_the_weights(tiny_workspace, tmp_path):
    """``train.workers``, ``train.cache_decoded`` and ``train.checkpoint_every`` change no weight: a run
    trained with other values of them ends as the reference run, and so does a run killed mid-way and
    resumed with other values of them."""
    args = ("train", "--dataset", "tiny-streets", "--method", "ce", "--percent", "50", "--seed", "0", "--set", "train.iterations=60")
    other = ("--set", "train.workers=1", "--set", "train.cache_decoded=false", "--set", "train.checkpoint_every=7")
    reference = fresh_copy(tiny_workspace, tmp_path / "reference")
    assert run_cli(reference, *args, "--set", "train.checkpoint_every=5").returncode == 0
    expected = weights(reference, "ce-50-0")

    fresh = fresh_copy(tiny_workspace, tmp_path / "fresh")
    trained = run_cli(fresh, *args, *other)
    assert trained.returncode == 0 and "resuming" not in trained.stderr, trained.stderr

    resumed = fresh_copy(tiny_workspace, tmp_path / "resumed")
    stopped_at = kill_after_first_checkpoint(resumed, "ce-50-0", (*args, "--set", "train.checkpoint_every=5"))
    assert 5 <= stopped_at < 60
    again = run_cli(resumed, *args, *other)
    assert again.returncode == 0, again.stderr
    assert f"resuming runs/tiny-streets/ce-50-0 from iteration {stopped_at}" in again.stderr
    for workspace in (fresh, resumed):
        actual = weights(workspace, "ce-50-0")
        assert all(torch.equal(actual[name], expected[name]) for name in expected), workspace.name


def torchrun_train(workspace, args):
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m", "paper_repro", "train", *args]
    return subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)


def test_distributed_data_parallel_on_gloo_with_two_processes(tiny_workspace, tmp_path):
    """Two processes train from iteration 0 even over a finished one-process run (its checkpoint took other
    batches), to the weights of a two-process run in a workspace of its own; rank 0 alone writes."""
    args = ("--dataset", "tiny-streets", "--method", "pals", "--percent", "50", "--seed", "0")
    workspace, reference = fresh_copy(tiny_workspace, tmp_path / "over-one-process"), fresh_copy(tiny_workspace, tmp_path / "reference")
    single = run_cli(workspace, "train", *args)
    assert single.returncode == 0, single.stderr
    one_process = weights(workspace, "pals-50-0")
    result = torchrun_train(workspace, args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 process(es)" in result.stderr and "resuming" not in result.stderr
    assert "ignoring runs/tiny-streets/pals-50-0/checkpoint.pt: it was written with other parameters or data (processes differ)" in result.stderr
    assert torchrun_train(reference, args).returncode == 0
    state, expected = (torch.load(folder / "runs" / "tiny-streets" / "pals-50-0" / "model.pt", weights_only=False) for folder in (workspace, reference))
    assert state["config"]["processes"] == 2
    assert all(torch.equal(state["model"][name], expected["model"][name]) for name in expected["model"])
    assert not all(torch.equal(state["model"][name], one_process[name]) for name in one_process)  # other batches, other weights
    rows = (workspace / "results" / "logs" / "tiny-streets" / "pals-50-0.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0] == "iteration,loss,lr,threads,data_seconds,step_seconds"  # rank 0 alone writes


def study_with_every_kind_of_run(tiny_workspace, folder):
    """The tiny study (ce and pals at 50 and 100%) with a sweep variant and a run at twice the schedule: 6 runs."""
    import yaml

    workspace = fresh_copy(tiny_workspace, folder)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["ablation"] = {"datasets": ["tiny-streets"], "methods": ["ls"], "percents": [50], "seeds": [0]}
    params["schedule"] = {"factor": 2, "datasets": ["tiny-streets"], "methods": ["ce"], "percents": [50], "seeds": [0]}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    return workspace


def test_the_runs_stage_trains_two_runs_at_a_time_to_the_results_of_one_after_another(tiny_workspace, tmp_path):
    """``runs`` trains and evaluates every run on a dataset (study, sweep, schedule sensitivity), longest first.
    Two worker processes sharing a 2-thread budget (1 thread each), each loading its batches in a loader
    process of its own (``train.workers``, as on a GPU), end with the weights, metrics and predictions of
    the same runs trained one after another on 1 thread, loading on the training thread."""
    from paper_repro.config import load_settings
    from paper_repro.layout import Layout

    together, alone = (study_with_every_kind_of_run(tiny_workspace, tmp_path / name) for name in ("together", "alone"))
    first = run_cli(together, "runs", "--dataset", "tiny-streets", "--set", "train.workers=1", env_extra={"OMP_NUM_THREADS": "2"})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "6 runs on tiny-streets, 2 at a time with 1 thread(s) each" in first.stderr
    second = run_cli(alone, "runs", "--dataset", "tiny-streets", "--set", "train.runs_at_once=1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "6 runs on tiny-streets, 1 at a time with 1 thread(s) each" in second.stderr
    started = [line for line in second.stderr.splitlines() if " training tiny-streets " in line]
    assert len(started) == 6 and "ce 50% seed 0: 4 images, 12 iterations" in started[0]  # the longest first

    runs = load_settings(together / "params.yaml").runs("tiny-streets")
    assert len(runs) == 6
    layout = Layout(".")
    for run in runs:
        assert (together / layout.metrics(run)).read_bytes() == (alone / layout.metrics(run)).read_bytes(), run.name
        expected = weights(alone, run.name)
        assert all(torch.equal(weights(together, run.name)[name], expected[name]) for name in expected), run.name
        predictions = sorted(path.name for path in (alone / layout.predictions(run)).iterdir())
        assert len(predictions) == 2
        assert all((together / layout.predictions(run) / name).read_bytes() == (alone / layout.predictions(run) / name).read_bytes()
                   for name in predictions)
        for workspace in (together, alone):
            assert set(np.loadtxt(workspace / layout.log(run), delimiter=",", skiprows=1, usecols=3)) == {1.0}  # the threads column


def test_the_runs_stage_removes_the_files_of_runs_no_longer_named_and_resumes_the_others(tiny_workspace, tmp_path):
    from paper_repro.config import load_settings
    from paper_repro.layout import Layout, Run

    workspace = study_with_every_kind_of_run(tiny_workspace, tmp_path / "study")
    assert run_cli(workspace, "runs", "--dataset", "tiny-streets").returncode == 0
    layout = Layout(workspace)
    runs = load_settings(workspace / "params.yaml").runs("tiny-streets")
    before = {run: layout.metrics(run).read_bytes() for run in runs}
    dropped = Run("tiny-streets", "ls", 100, 0)  # as a run the parameters named before
    for path in layout.run_files(dropped) - {layout.log(dropped), layout.metrics(dropped)}:
        path.mkdir(parents=True) if path.suffix != ".lock" else path.touch()
    (layout.model(dropped)).write_bytes(b"weights")
    for path in (layout.log(dropped), layout.metrics(dropped), layout.run_folders("other").metrics / "ce-10-0.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("1")
    again = run_cli(workspace, "runs", "--dataset", "tiny-streets")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not any(path.exists() for path in layout.run_files(dropped))
    assert (layout.run_folders("other").metrics / "ce-10-0.json").exists()  # another dataset's folders are not this stage's
    left = {path for folder in layout.run_folders("tiny-streets") for path in folder.iterdir()}
    assert left == set().union(*(layout.run_files(run) for run in runs))
    assert again.stderr.count("resuming runs/tiny-streets/") == 6 and "iterations of batch" in again.stderr
    assert {run: layout.metrics(run).read_bytes() for run in runs} == before


def test_a_run_that_fails_in_a_worker_ends_the_runs_stage_with_its_one_line_error(tiny_workspace, tmp_path):
    workspace = study_with_every_kind_of_run(tiny_workspace, tmp_path / "study")
    result = run_cli(workspace, "runs", "--dataset", "tiny-streets", "--set", "train.lr=1e30", env_extra={"OMP_NUM_THREADS": "2"})
    assert result.returncode == 2 and "2 at a time" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: loss became")
    assert "Traceback" not in result.stderr


def test_the_sgd_step_is_fused_on_cuda_only():
    """The device-selected branch, checked on the CPU: CUDA asks for the fused SGD kernel, the CPU keeps the default step
    (the one the committed results were made with)."""
    from paper_repro.train import sgd_kernel

    assert sgd_kernel(torch.device("cuda")) == {"fused": True} and sgd_kernel(torch.device("cuda", 1)) == {"fused": True}
    assert sgd_kernel(torch.device("cpu")) == {}
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, **sgd_kernel(torch.device("cpu")))
    assert not optimizer.defaults.get("fused")
