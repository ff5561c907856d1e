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
