"""Where every stage reads and writes: the one owner of the study's file layout.

Paths are relative to a repository root (``Layout(".")`` for the stages, which run at the
root as ``dvc.yaml`` runs them; ``Layout("..")`` for the notebooks, which run in
``notebooks/``). ``dvc.yaml`` declares the same paths, and ``tests/test_pipeline.py`` checks
that it does. A run is one (dataset, method, label percent, seed) of the study, at the dataset's
schedule or at a multiple of it. Every file of a run lies in one of its dataset's four run
folders (:meth:`Layout.run_folders`), the outputs of the dataset's ``runs`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


class RunFolders(NamedTuple):
    """The folders every run on one dataset writes into: the outputs of the dataset's ``runs`` stage."""

    runs: Path
    logs: Path
    metrics: Path
    predictions: Path


@dataclass(frozen=True)
class Run:
    """One run of the study: ``percent`` of the labelled training images, trained ``schedule`` times the
    dataset's iterations; ``name`` (``pals-10-0``, ``pals-30-0-x4``) is its name inside its dataset, as in ``dvc.yaml``."""

    dataset: str
    method: str
    percent: int
    seed: int
    schedule: int = 1

    @property
    def name(self) -> str:
        longer = f"-x{self.schedule}" if self.schedule != 1 else ""
        return f"{self.method}-{self.percent}-{self.seed}{longer}"


class Layout:
    """The study's files under ``root``."""

    def __init__(self, root: str | Path = ".") -> None:
        self.root = Path(root)
        self.results = self.root / "results"

    # generate
    def data(self, dataset: str) -> Path:
        """A generated dataset's tree, or a real one's ``source.json`` record."""
        return self.root / "data" / dataset

    def data_summary(self, dataset: str) -> Path:
        """Image counts per split and the ids of the exported samples."""
        return self.results / "data" / f"{dataset}.json"

    def class_geometry(self, dataset: str) -> Path:
        """Per class of the evaluation split: pixel share, regions and their median width (stride-4 feature pixels)."""
        return self.results / "data" / f"{dataset}_classes.csv"

    def samples(self, dataset: str) -> Path:
        """Images and train-id labels of the first evaluation ids, for the figures."""
        return self.results / "samples" / dataset

    def sample(self, dataset: str, image_id: str) -> tuple[Path, Path]:
        """``(RGB image, train-id label)`` PNGs of one exported evaluation image (the data summary lists their ids)."""
        return self.samples(dataset) / f"{image_id}_image.png", self.samples(dataset) / f"{image_id}_label.png"

    # subsets
    def manifest(self, dataset: str, seed: int, percent: int) -> Path:
        """The ids of one label percent, one per line."""
        return self.root / "subsets" / dataset / f"seed{seed}" / f"{percent}.txt"

    def manifests(self, dataset: str) -> Path:
        return self.root / "subsets" / dataset

    def coverage(self, dataset: str) -> Path:
        return self.results / "subsets" / f"{dataset}.csv"

    # pretrain
    def pretrained_backbone(self) -> Path:
        """The ``pretrain`` stage's backbone weights, loaded by ``deeplabv3plus_small`` with ``model.pretrained_backbone``."""
        return self.root / "pretrained" / "backbone.pt"

    def pretrain_log(self) -> Path:
        return self.results / "pretrain" / "log.csv"

    def pretrain_metrics(self) -> Path:
        """Held-out mean average precision of the source task."""
        return self.results / "pretrain" / "metrics.json"

    # train and evaluate: the runs stage
    def run_folders(self, dataset: str) -> RunFolders:
        return RunFolders(self.root / "runs" / dataset, self.results / "logs" / dataset, self.results / "metrics" / dataset,
                          self.results / "predictions" / dataset)

    def run_files(self, run: Run) -> set[Path]:
        """What one run writes in its dataset's run folders."""
        return {self.run_dir(run), self.run_lock(run), self.log(run), self.metrics(run), self.predictions(run)}

    def run_dir(self, run: Run) -> Path:
        """``checkpoint.pt`` (for resuming) and ``model.pt`` (the final weights)."""
        return self.run_folders(run.dataset).runs / run.name

    def checkpoint(self, run: Run) -> Path:
        return self.run_dir(run) / "checkpoint.pt"

    def model(self, run: Run) -> Path:
        return self.run_dir(run) / "model.pt"

    def run_lock(self, run: Run) -> Path:
        """Held while the run trains; beside the run folder, not in it (emptied when released)."""
        return self.run_dir(run).with_name(f".{run.name}.lock")

    def log(self, run: Run) -> Path:
        """Per-iteration loss, learning rate and timings."""
        return self.run_folders(run.dataset).logs / f"{run.name}.csv"

    # evaluate
    def metrics(self, run: Run) -> Path:
        return self.run_folders(run.dataset).metrics / f"{run.name}.json"

    def predictions(self, run: Run) -> Path:
        """Predicted train-id PNGs of the figure images."""
        return self.run_folders(run.dataset).predictions / run.name

    def prediction(self, run: Run, image_id: str) -> Path:
        return self.predictions(run) / f"{image_id}.png"

    # report, explain, notebooks, bench
    def table(self, name: str) -> Path:
        return self.results / "tables" / f"{name}.csv"

    def explanation(self, dataset: str) -> Path:
        return self.results / "explain" / f"{dataset}.npz"

    def notebook_source(self, notebook: str) -> Path:
        return self.root / "notebooks_src" / f"{notebook}.ipynb"

    def notebook(self, notebook: str) -> Path:
        """The executed notebook (its kernel runs in this folder)."""
        return self.root / "notebooks" / f"{notebook}.ipynb"

    def figure(self, notebook: str, name: str) -> Path:
        return self.results / "figures" / notebook / f"{name}.png"

    def bench(self, device_type: str) -> Path:
        return self.results / "bench" / f"bench_{device_type}.json"

    def bench_reports(self) -> dict[str, Path]:
        """``{device type: path}`` of every benchmark report present."""
        folder = self.results / "bench"
        reports = {path.stem.removeprefix("bench_"): path for path in sorted(folder.glob("bench_*.json"))}
        return {device: path for device, path in reports.items() if device.isalpha()}  # not a stray bench_cpu (1).json
