"""Fault injection: everything a user or the machine can do to a run ends in a one-line error (or a
warning and a fresh start), leaves nothing half-written, and a rerun recovers.

One test per fault of the README's reliability table, on a tiny generated study of its own.
"""

import fnmatch
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, TINY_PARAMS, run_cli

DATASET = "tiny-streets"
TRAIN = ("train", "--dataset", DATASET, "--method", "pals", "--percent", "100", "--seed", "0")
EVALUATE = ("evaluate", *TRAIN[1:])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny study with its data, subsets and one trained run (``pals-100-0``, the reference weights)."""
    workspace = tmp_path_factory.mktemp("faults")
    (workspace / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    for args in (("generate", "--dataset", DATASET), ("subsets", "--dataset", DATASET), TRAIN):
        result = run_cli(workspace, *args)
        assert result.returncode == 0, result.stderr
    return workspace


def run_dir(workspace: Path) -> Path:
    return workspace / "runs" / DATASET / "pals-100-0"


def reference(workspace: Path) -> dict[str, bytes]:
    """The uninterrupted run's files (trained once by the fixture; retrained identically on demand)."""
    cache = workspace / "reference"
    if not cache.exists():
        shutil.copytree(run_dir(workspace), cache)
    return {path.name: path.read_bytes() for path in cache.iterdir()}


def fresh_run(workspace: Path) -> Path:
    folder = run_dir(workspace)
    reference(workspace)
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last
    return last


def no_temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


class WritesAMarker:
    """A pickle whose loading creates a file: what a crafted checkpoint would do with code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("stage", ["train", "evaluate", "explain"])
def test_a_crafted_pickle_never_runs(workspace, stage):
    marker = workspace / f"payload-ran-{stage}"
    folder = run_dir(workspace)
    target = folder / ("checkpoint.pt" if stage == "train" else "model.pt")
    backup = target.read_bytes()
    torch.save({"config": WritesAMarker(marker), "model": {}}, target)  # pickled with the payload
    args = {"train": TRAIN, "evaluate": EVALUATE, "explain": ("explain", "--dataset", DATASET, "--set", "explain.percent=100")}[stage]
    result = run_cli(workspace, *args)
    assert not marker.exists()
    if stage == "train":  # set aside with a warning, and a fresh start to the same weights
        assert result.returncode == 0, result.stderr
        assert f"WARNING {target.relative_to(workspace)}: not a valid checkpoint" in result.stderr
        assert (folder / "checkpoint.pt.corrupt").is_file()
        (folder / "checkpoint.pt.corrupt").unlink()
        assert (folder / "model.pt").read_bytes() == reference(workspace)["model.pt"]
    else:
        assert_one_line_error(result, f"{target.relative_to(workspace)}: not a valid checkpoint")
        target.write_bytes(backup)


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "no config key"])
def test_a_corrupt_checkpoint_is_set_aside_and_the_run_starts_afresh(workspace, damage):
    folder = fresh_run(workspace)
    folder.mkdir(parents=True)
    checkpoint = folder / "checkpoint.pt"
    whole = reference(workspace)["checkpoint.pt"]
    checkpoint.write_bytes({
        "truncated": whole[: len(whole) // 2], "random bytes": np.random.default_rng(0).bytes(4096), "empty": b"",
        "no config key": b"",
    }[damage])
    if damage == "no config key":
        torch.save({"iteration": 3, "model": {}}, checkpoint)
    result = run_cli(workspace, *TRAIN)
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "WARNING" in line)
    assert "runs/tiny-streets/pals-100-0/checkpoint.pt: not" in warning and "moved it to" in warning
    assert ("missing config" in warning) == (damage == "no config key")
    assert (folder / "checkpoint.pt.corrupt").is_file()
    for name in ("model.pt", "checkpoint.pt"):  # the same bytes as the uninterrupted run
        assert (folder / name).read_bytes() == reference(workspace)[name], name
    rerun = run_cli(workspace, *TRAIN)  # and the set-aside file never blocks a rerun
    assert rerun.returncode == 0 and "WARNING" not in rerun.stderr


@pytest.mark.parametrize("which", ["image", "label"])
@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_png_is_named_in_one_line(workspace, tmp_path, which, workers):
    copy = workspace / "data" / "broken"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(workspace / "data" / DATASET, copy)
    pattern = "leftImg8bit/train/*/*.png" if which == "image" else "gtFine/train/*/*_labelIds.png"
    broken = sorted(copy.glob(pattern))[0]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    result = run_cli(workspace, *TRAIN, "--set", "datasets.tiny-streets.root=data/broken", "--set", f"train.workers={workers}",
                     "--set", "train.iterations=12")
    assert_one_line_error(result, f"{broken.relative_to(workspace)}: cannot read the {which}")


def limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_while_saving_names_the_file_and_leaves_nothing_half_written(workspace):
    folder = fresh_run(workspace)
    result = run_cli(workspace, *TRAIN, preexec_fn=limit_file_size(64 * 1024))  # the checkpoint is ~5 MB
    assert_one_line_error(result, "cannot write runs/tiny-streets/pals-100-0/checkpoint.pt: File too large")
    assert not (folder / "checkpoint.pt").exists() and no_temporaries(folder) == []
    assert run_cli(workspace, *TRAIN).returncode == 0
    assert (folder / "model.pt").read_bytes() == reference(workspace)["model.pt"]


def test_a_nan_loss_is_a_one_line_error(workspace):
    fresh_run(workspace)
    result = run_cli(workspace, *TRAIN, "--set", "train.lr=1e30")
    assert_one_line_error(result, "error: loss became", "at iteration", "lower train.lr")


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    assert path.exists(), "the process ended before it could be interrupted"


def default_sigint() -> None:
    """In the child, before it runs: SIGINT as a terminal's Ctrl-C delivers it. A background job of a
    non-interactive shell ignores SIGINT, and its children inherit that; Python then never raises
    KeyboardInterrupt, so the tests' Ctrl-C would not reach the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def start_cli():
    """Starts ``python -m paper_repro`` in a session of its own with the default SIGINT disposition; at the end of
    the test, whatever its outcome, every one still running is killed with its children (a run left holding its
    lock would fail the tests after it)."""
    started = []

    def start(workspace: Path, *args: str) -> subprocess.Popen:
        env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
        process = subprocess.Popen([sys.executable, "-m", "paper_repro", *args], cwd=workspace, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=default_sigint)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


@pytest.fixture
def sigint_ignored():
    """This process ignores SIGINT while the test starts its commands, as a background job does."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_says_the_run_resumes_and_exits_130(workspace, start_cli, sigint_ignored):
    """Also when the tests run as a background job (SIGINT ignored here): the command gets the user's Ctrl-C."""
    folder = fresh_run(workspace)
    slow = ("--set", "train.iterations=200", "--set", "train.checkpoint_every=5")
    process = start_cli(workspace, *TRAIN, *slow)
    wait_for(folder / "checkpoint.pt", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert_one_line_error(subprocess.CompletedProcess(process.args, process.returncode, "", stderr),
                          "interrupted", "run the same command again to resume from the last checkpoint", code=130)
    resumed = run_cli(workspace, *TRAIN, *slow)
    assert resumed.returncode == 0 and "resuming runs/tiny-streets/pals-100-0 from iteration" in resumed.stderr


def test_numbers_are_read_as_people_write_them(workspace):
    assert run_cli(workspace, *TRAIN).returncode == 0  # the run with lr 0.01, complete
    (workspace / "numbers.yaml").write_text((workspace / "params.yaml").read_text().replace("lr: 0.01", "lr: 1e-2"))
    assert "lr: 1e-2" in (workspace / "numbers.yaml").read_text()
    for args in (("--params", "numbers.yaml"), ("--set", "train.lr=1e-2")):
        result = run_cli(workspace, *TRAIN, *args)
        assert result.returncode == 0, result.stderr
        assert "resuming runs/tiny-streets/pals-100-0 from iteration 6" in result.stderr  # 1e-2 is the number 0.01


def test_a_second_training_of_the_same_run_fails_at_once_naming_the_holder(workspace, start_cli, sigint_ignored):
    folder = fresh_run(workspace)
    slow = ("--set", "train.iterations=5000", "--set", "train.checkpoint_every=1000")
    first = start_cli(workspace, *TRAIN, *slow)
    wait_for(folder.parent / ".pals-100-0.lock", first)
    deadline = time.time() + 60
    while "process" not in (folder.parent / ".pals-100-0.lock").read_text() and time.time() < deadline:
        time.sleep(0.01)
    began = time.time()
    second = run_cli(workspace, *TRAIN, *slow)
    assert time.time() - began < 30
    assert_one_line_error(second, "runs/tiny-streets/pals-100-0 is being trained by process", f"process {first.pid} on")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert first.returncode == 130


def ignored_by_git_and_dvc(path: Path) -> bool:
    for ignore_file in (".gitignore", ".dvcignore"):
        patterns = [line for line in (ROOT / ignore_file).read_text().splitlines() if line and not line.startswith("#")]
        if not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
            return False
    return True


def test_a_killed_generate_leaves_staging_that_git_and_dvc_ignore_and_the_next_run_removes(workspace, start_cli):
    process = start_cli(workspace, "generate", "--dataset", DATASET, "--set", "datasets.tiny-streets.generate.n_val=400")
    deadline = time.time() + 120
    while not list((workspace / "data").glob("*.tmp")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    leftovers = list((workspace / "data").glob("*.tmp"))
    assert leftovers and all(ignored_by_git_and_dvc(path) for path in leftovers)
    assert run_cli(workspace, "generate", "--dataset", DATASET).returncode == 0
    assert list((workspace / "data").glob("*.tmp")) == []


def test_an_evaluation_removes_the_staging_a_killed_one_left(workspace):
    assert run_cli(workspace, *TRAIN).returncode == 0
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = workspace / "results" / "predictions" / DATASET / f"pals-100-0.{int(ended.stdout)}.tmp"  # a dead process's
    leftover.mkdir(parents=True)
    (leftover / "half.png").write_bytes(b"\x89PNG")
    assert ignored_by_git_and_dvc(leftover)
    assert run_cli(workspace, *EVALUATE).returncode == 0
    assert not leftover.exists()


def test_a_killed_notebook_stage_leaves_no_half_executed_notebook(tmp_path, start_cli):
    import nbformat

    shutil.copy(ROOT / "params.yaml", tmp_path)
    (tmp_path / "notebooks_src").mkdir()
    (tmp_path / "notebooks").mkdir()
    slow = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('started', flush=True)"),
                                           nbformat.v4.new_code_cell("import time\ntime.sleep(120)")])
    slow.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(slow, tmp_path / "notebooks_src" / "slow.ipynb")
    process = start_cli(tmp_path, "notebook", "--name", "slow")
    time.sleep(10)  # the kernel is in the sleeping cell
    os.killpg(process.pid, signal.SIGKILL)  # the stage and its kernel
    process.communicate()
    assert list((tmp_path / "notebooks").iterdir()) == []


def test_every_committed_notebook_completed_every_cell():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        notebook = yaml.safe_load(path.read_text())  # JSON is YAML
        assert notebook["metadata"]["papermill"]["exception"] in (None, False), path.name
        assert notebook["metadata"]["papermill"]["end_time"], path.name
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                assert cell["metadata"]["papermill"]["status"] == "completed", (path.name, cell["source"])
                assert isinstance(cell["execution_count"], int), (path.name, cell["source"])
                assert all(output["output_type"] != "error" for output in cell["outputs"]), path.name


def test_stray_or_partial_files_beside_the_metrics_change_no_table(workspace):
    study = ("--set", "study.percents=[100]", "--set", "explain.percent=100")  # two runs: ce and pals at 100%
    for method in ("ce", "pals"):
        args = ("--dataset", DATASET, "--method", method, "--percent", "100", "--seed", "0")
        assert run_cli(workspace, "train", *args).returncode == 0 and run_cli(workspace, "evaluate", *args).returncode == 0
    assert run_cli(workspace, "report", *study).returncode == 0
    tables = {path.name: path.read_bytes() for path in (workspace / "results" / "tables").iterdir()}
    metrics = workspace / "results" / "metrics" / DATASET
    (metrics / "ce-100-0.json.x1y2.tmp").write_text('{"miou": 1')  # a partial write
    shutil.copy(metrics / "ce-100-0.json", metrics / "ls-100-0.json")  # a run the parameters do not name
    assert run_cli(workspace, "report", *study).returncode == 0
    assert {path.name: path.read_bytes() for path in (workspace / "results" / "tables").iterdir()} == tables
    sources = " ".join((ROOT / "notebooks_src" / name).read_text() for name in os.listdir(ROOT / "notebooks_src"))
    assert ".glob(" not in sources  # notebooks read the runs the parameters name


def test_an_interrupted_evaluation_never_leaves_new_predictions_beside_old_metrics(workspace, monkeypatch):
    from paper_repro import evaluate as evaluation
    from paper_repro.config import load_settings
    from paper_repro.layout import Layout, Run

    assert run_cli(workspace, *TRAIN).returncode == 0 and run_cli(workspace, *EVALUATE).returncode == 0
    layout, run = Layout(workspace), Run(DATASET, "pals", 100, 0)
    assert layout.metrics(run).is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "write_json", interrupted)  # killed between the predictions and the metrics
    settings = load_settings(workspace / "params.yaml", [f"datasets.{DATASET}.root={workspace / 'data' / DATASET}"])
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(settings.run(run), layout)
    assert layout.predictions(run).is_dir() and not layout.metrics(run).exists()  # the stage reruns: DVC misses its metrics


def test_a_real_dataset_with_empty_splits_fails_in_generate(workspace):
    empty = workspace / "empty-cityscapes"
    for folder in ("leftImg8bit", "gtFine"):
        for split in ("train", "val"):
            (empty / folder / split).mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["datasets"]["real"] = params["datasets"][DATASET] | {"root": str(empty)}
    del params["datasets"]["real"]["generate"]
    (workspace / "real.yaml").write_text(yaml.safe_dump(params))
    result = run_cli(workspace, "generate", "--dataset", "real", "--params", "real.yaml")
    assert_one_line_error(result, f"Cityscapes train ({empty}): the split holds no images")
    assert not (workspace / "results" / "data" / "real.json").exists()


def test_retraining_to_identical_weights_leaves_the_run_folder_identical(workspace):
    folder = fresh_run(workspace)
    assert run_cli(workspace, *TRAIN).returncode == 0
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == reference(workspace)
