"""The prepared GPU check (scripts/gpu_check.py): it measures nothing without CUDA, and its smoke run
drives the training loop's own step with the paper-scale model and a preset's settings."""

import importlib.util
import math
import os
import subprocess
import sys

import torch

from conftest import ROOT
from paper_repro.config import load_settings

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_measures_nothing(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a GPU machine
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no CUDA device is visible: the GPU check measures nothing here (run it on a GPU machine)"
    assert list(tmp_path.iterdir()) == []  # no bench report, no smoke report


def test_smoke_run_times_ce_and_pals_steps_of_the_paper_scale_model():
    settings = load_settings(ROOT / "presets" / "cityscapes.yaml")
    report = load_script().smoke_run(settings, "cityscapes", torch.device("cpu"), steps=1, size=[64, 64], batch=2)
    assert report["model"] == "deeplabv3plus_resnet101" and report["size"] == [64, 64] and report["batch"] == 2
    assert report["precision"] == "float32"  # the CPU runs float32, as training does there
    assert set(report["step_seconds"]) == {"ce", "pals"} and all(seconds > 0 for seconds in report["step_seconds"].values())
    assert math.isclose(report["pals_over_ce"], report["step_seconds"]["pals"] / report["step_seconds"]["ce"])
    assert report["peak_memory_mb"] is None


def test_the_reproducibility_part_trains_twice_in_each_mode_and_finds_cpu_reruns_identical(tmp_path):
    """On the CPU two runs with the same seed and threads are identical, in either mode: the part must say so
    (a run that drew other data or initial weights would not be)."""
    report = load_script().reproducibility(load_settings(ROOT / "params.yaml"), "synthetic-cityscapes", tmp_path, iterations=3, images=4)
    assert report["default"]["identical"] is True and report["deterministic"]["identical"] is True
    assert report["deterministic"]["warned"] == []  # nothing the CPU runs lacks a deterministic implementation
    assert len(report["default"]["seconds"]) == 2 and report["default"]["step_ms"] > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "default-1", "default-2", "deterministic-1", "deterministic-2"]


def test_weights_differing_in_one_value_are_not_identical():
    script = load_script()
    weights = {"a": torch.zeros(3), "b": torch.ones(2)}
    assert script.identical(weights, {key: value.clone() for key, value in weights.items()})
    changed = {"a": torch.tensor([0.0, 0.0, 1e-30]), "b": torch.ones(2)}
    assert not script.identical(weights, changed)
    assert not script.identical(weights, {"a": torch.zeros(3)})


def test_the_gpu_study_script_runs_every_stage_to_the_report_and_prints_the_half_widths(tmp_path):
    """``scripts/gpu_study.sh`` on a tiny preset (on the CPU here): the preset's parameters written into
    params.yaml, every stage run in dvc.yaml's order, the report's half-widths printed."""
    import shutil

    import yaml

    from conftest import TINY_PARAMS

    shutil.copytree(ROOT / "paper_repro", tmp_path / "paper_repro")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    (tmp_path / "params.yaml").write_text("# the default, replaced by the preset\n")
    params = TINY_PARAMS | {"pretrain": TINY_PARAMS["pretrain"] | {"iterations": 1}, "train": TINY_PARAMS["train"] | {"iterations": 2}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "scripts/gpu_study.sh", "tiny.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = [line.split("== ", 1)[1].split(":")[0] for line in result.stdout.splitlines() if line.startswith("== ") and ": " in line
              and line.rstrip().endswith(" s")]
    dataset = "--dataset tiny-streets"
    assert stages == [f"generate {dataset}", f"subsets {dataset}", "pretrain", f"runs {dataset}", "report"]
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["study"] == TINY_PARAMS["study"]
    lines = result.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.split()[:3] == ["dataset", "method", "percent"])
    assert "half_width" in lines[header].split()
    assert [line.split()[1:3] for line in lines[header + 1:]] == [["pals", "50"], ["pals", "100"]]  # every cell but ce's
