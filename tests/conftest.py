"""A tiny study workspace (generated data, subsets, parameters) shared by the pipeline tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

TINY_PARAMS = {
    "study": {"datasets": ["tiny-streets"], "methods": ["ce", "pals"], "percents": [50, 100], "seeds": [0]},
    "datasets": {
        "tiny-streets": {
            "kind": "cityscapes", "root": "data/tiny-streets", "num_classes": 19,
            "train_split": "train", "eval_split": "val",
            "generate": {"n_train": 8, "n_val": 3, "height": 32, "width": 64, "seed": 0},
            "base_size": 32, "scale_range": [0.75, 1.25], "crop": [32, 64],
        }
    },
    "methods": {"ce": {"loss": "ce"}, "ls": {"loss": "ls", "eps": 0.1}, "pals": {"loss": "pals", "alpha": 0.5, "tau": 0.1, "T": 1.0}},
    "explain": {"method": "pals", "percent": 50, "seed": 0, "pixels": 3},
    "pretrain": {"images": 16, "held_out": 8, "size": [32, 32], "seed": 0, "typical_look": 0.5, "iterations": 3, "batch_size": 4,
                 "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001, "poly_power": 0.9},
    "model": {"name": "deeplabv3plus_small", "pretrained_backbone": False},
    "train": {"iterations": 6, "batch_size": 2, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001,
              "poly_power": 0.9, "checkpoint_every": 2, "workers": 0, "cache_decoded": True, "amp": "off",
              "runs_at_once": 2},
    "evaluate": {"figure_images": 2, "calibration_bins": 15, "boundary_width": 2, "scales": [1.0], "flip": False, "batch_size": 2},
    "scale": {"factor": 2, "datasets": []},  # no scale check (dvc.yaml's scaled stages read the section)
}


def run_cli(workspace: Path, *args: str, env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m paper_repro ...`` in ``workspace`` on one thread, as the pipeline runs it."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"} | (env_extra or {})
    return subprocess.run([sys.executable, "-m", "paper_repro", *args], cwd=workspace, env=env, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """A workspace with ``params.yaml``, the generated tiny dataset and its subsets."""
    workspace = tmp_path_factory.mktemp("study")
    (workspace / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    for stage in ("generate", "subsets"):
        result = run_cli(workspace, stage, "--dataset", "tiny-streets")
        assert result.returncode == 0, result.stderr
    return workspace
