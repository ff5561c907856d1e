"""The GPU path's dtypes on the CPU: a few steps of the real training loop, and the evaluation, under
bf16 autocast (``train.amp: bf16``), so that a dtype mistake in the losses, the aggregation or the
metrics shows up on a machine without a GPU."""

import copy
import math
import shutil

import pytest
import torch

from conftest import TINY_PARAMS
from paper_repro import evaluate as evaluate_module
from paper_repro import train as train_module
from paper_repro.layout import Layout, Run
from paper_repro.settings import resolve

PARAMS = copy.deepcopy(TINY_PARAMS) | {"train": TINY_PARAMS["train"] | {"amp": "bf16", "iterations": 4, "checkpoint_every": 2}}
SETTINGS = resolve(PARAMS, "bf16 test parameters")


def run_study(workspace, monkeypatch, dtype):
    """Train ce, ls and pals with the training loop's autocast set to ``dtype`` (None: float32), and
    evaluate each under the same autocast; returns ``({method: log rows}, {method: metrics}, {method: dtypes seen by the loss})``."""
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(train_module, "autocast_dtype", lambda amp, device: dtype)
    seen = {}

    def recording_loss(settings, num_classes):
        criterion = loss_class(settings, num_classes)
        method = {"ce": "ce", "ls": "ls", "pals": "pals"}[settings.loss]

        def loss(logits, target, features, progress):
            seen.setdefault(method, set()).update({logits.dtype, features.dtype})
            value = criterion(logits, target, features, progress)
            seen[method].add(value.dtype)
            return value
        return loss

    loss_class = train_module.SmoothedTargetLoss
    monkeypatch.setattr(train_module, "SmoothedTargetLoss", recording_loss)
    layout, logs, metrics = Layout("."), {}, {}
    for method in ("ce", "ls", "pals"):
        run = SETTINGS.run(Run("tiny-streets", method, 100, 0))
        train_module.train(run, layout)
        logs[method] = torch.load(layout.checkpoint(run.run), weights_only=True)["log"]
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            metrics[method] = evaluate_module.evaluate(run, layout)
    return logs, metrics, seen


@pytest.fixture(scope="module")
def float32_study(tiny_workspace, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("float32")
    shutil.copytree(tiny_workspace, workspace, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_study(workspace, monkeypatch, None)


def test_training_and_evaluation_under_bf16_autocast(tiny_workspace, tmp_path, monkeypatch, float32_study):
    shutil.copytree(tiny_workspace, tmp_path, dirs_exist_ok=True)
    logs, metrics, seen = run_study(tmp_path, monkeypatch, torch.bfloat16)
    reference_logs, reference_metrics, reference_seen = float32_study
    for method in ("ce", "ls", "pals"):
        assert torch.bfloat16 in seen[method], f"{method}: the loss never saw bf16 logits or features"
        assert torch.float32 in seen[method], f"{method}: the loss should be computed in float32"  # the returned loss
        assert torch.bfloat16 not in reference_seen[method]
        losses = [row["loss"] for row in logs[method]]
        assert len(losses) == PARAMS["train"]["iterations"] and all(math.isfinite(loss) for loss in losses)
        # the same initialisation and first batch: bf16 rounding moves the first loss by well under 5%
        assert losses[0] == pytest.approx(reference_logs[method][0]["loss"], rel=0.05)
        result, reference = metrics[method], reference_metrics[method]
        for key in ("miou", "pixel_accuracy", "ece"):
            assert math.isfinite(result[key]) and 0 <= result[key] <= 100, (method, key, result[key])
        # every valid pixel lands in exactly one confidence bin, whatever the logits' dtype
        assert sum(result["reliability"]["count"]) == sum(reference["reliability"]["count"]) > 0
        assert sum(result["reliability"]["correct"]) <= sum(result["reliability"]["count"])
