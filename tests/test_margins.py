"""The target margins against a hand-computed case, and as the runs stage records them."""

import json
import shutil

import pytest
import torch

from conftest import run_cli
from paper_repro.margins import TargetMargins

IGNORE = 255


def test_target_margins_by_hand():
    # one image, 2 x 3 pixels, classes a, b, c; the last pixel is ignored
    labels = torch.tensor([[[0, 0, 0], [1, 2, IGNORE]]])
    targets = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.1, 0.5], [0.5, 0.2, 0.3],   # label a: margins 0.3, -0.1, 0.2
                            [0.2, 0.5, 0.3], [0.45, 0.1, 0.45], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 2, 3)  # b: 0.2, c: 0.0
    q = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2],
                      [0.3, 0.4, 0.3], [0.5, 0.1, 0.4], [0.0, 1.0, 0.0]]).T.reshape(1, 3, 2, 3)
    margins = TargetMargins(3)
    margins.update(targets, labels, q)
    summary = margins.summary(["a", "b", "c"])
    assert summary["a"] == pytest.approx({"pixels": 3, "label_mass": 0.5, "rival_mass": (0.3 + 0.5 + 0.3) / 3, "rival": "c",
                                          "margin": (0.3 - 0.1 + 0.2) / 3, "q_elsewhere": 2 / 3}, abs=1e-6)
    assert summary["b"] == pytest.approx({"pixels": 1, "label_mass": 0.5, "rival_mass": 0.3, "rival": "c", "margin": 0.2,
                                          "q_elsewhere": 0.0}, abs=1e-6)
    assert summary["c"] == pytest.approx({"pixels": 1, "label_mass": 0.45, "rival_mass": 0.45, "rival": "a", "margin": 0.0,
                                          "q_elsewhere": 1.0}, abs=1e-6)
    without_q = TargetMargins(3)
    without_q.update(targets, labels)
    assert without_q.summary(["a", "b", "c"])["a"]["q_elsewhere"] is None


def test_one_hot_and_uniformly_smoothed_targets_have_the_margins_their_formulas_give():
    labels = torch.randint(0, 4, (2, 5, 5))
    onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    for eps, expected in ((0.0, 1.0), (0.2, 1 - 0.2)):  # ls: (1 - eps + eps/K) - eps/K
        margins = TargetMargins(4)
        margins.update((1 - eps) * onehot + eps / 4, labels)
        assert all(row["margin"] == pytest.approx(expected) for row in margins.summary(list("wxyz")).values())


def test_every_run_records_the_margins_of_its_own_targets(tiny_workspace, tmp_path):
    """The runs stage's evaluation writes each run's target margins per class beside its IoU: ce's are 1, pals's below."""
    for name in ("params.yaml", "data", "subsets"):  # the tiny study without any run: a workspace of this test's own
        (shutil.copytree if (tiny_workspace / name).is_dir() else shutil.copy)(tiny_workspace / name, tmp_path / name)
    args = ["--dataset", "tiny-streets", "--percent", "50", "--seed", "0"]
    recorded = {}
    for method in ("ce", "pals"):
        result = run_cli(tmp_path, "run", "--method", method, *args)
        assert result.returncode == 0, result.stderr[-2000:]
        recorded[method] = json.loads((tmp_path / "results" / "metrics" / "tiny-streets" / f"{method}-50-0.json").read_text())["targets"]
    assert recorded["ce"].keys() == recorded["pals"].keys() and len(recorded["ce"]) > 3
    assert all(row["margin"] == 1.0 and row["q_elsewhere"] is None for row in recorded["ce"].values())
    # alpha 0.5: the label keeps at least half, and a rival at most half, of each pixel's target
    assert all(0.5 <= row["label_mass"] <= 1 and 0 <= row["rival_mass"] <= 0.5 and row["margin"] < 1 for row in recorded["pals"].values())
    assert all(0 <= row["q_elsewhere"] <= 1 for row in recorded["pals"].values())
    assert {row["pixels"] for row in recorded["ce"].values()} == {row["pixels"] for row in recorded["pals"].values()}


def test_margin_correlations_by_hand():
    """Pearson's r of margin against IoU difference per method and over all methods, with Fisher's interval."""
    import math

    import numpy as np
    import pandas as pd

    from paper_repro.plots import margin_correlations

    margin = [0.9, 0.7, 0.5, 0.3, 0.1]
    rows = [{"dataset": "d", "percent": 30, "schedule": 1, "method": "pals", "class": f"c{i}", "margin": m, "iou_minus_ce": -10 * (1 - m) + noise}
            for i, (m, noise) in enumerate(zip(margin, [0.5, -0.5, 0.0, 0.5, -0.5]))]
    rows += [{"dataset": "d", "percent": 30, "schedule": 1, "method": "ce", "class": f"c{i}", "margin": 1.0, "iou_minus_ce": 0.0} for i in range(5)]
    table = margin_correlations(pd.DataFrame(rows)).set_index("method")
    assert list(table.index) == ["pals", "all"]  # ce is the reference, not a point
    x, y = np.array(margin), np.array([row["iou_minus_ce"] for row in rows[:5]])
    r = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    half = 1.959964 / math.sqrt(len(x) - 3)
    assert table.loc["pals", "r"] == pytest.approx(r, abs=1e-3) and table.loc["pals", "points"] == 5
    assert table.loc["pals", "ci_low"] == pytest.approx(math.tanh(math.atanh(r) - half), abs=1e-3)
    assert table.loc["pals", "ci_high"] == pytest.approx(math.tanh(math.atanh(r) + half), abs=1e-3)


def test_a_margin_the_same_for_every_class_has_no_correlation_and_no_warning():
    import warnings

    import pandas as pd

    from paper_repro.plots import margin_correlations

    rows = [{"dataset": "d", "percent": 30, "schedule": 1, "method": "ls", "class": f"c{i}", "margin": 0.9, "iou_minus_ce": float(i)}
            for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns on a constant input
        table = margin_correlations(pd.DataFrame(rows)).set_index("method")
    assert list(table.index) == ["ls", "all"] and table.loc["ls", "points"] == 5
    assert table[["r", "ci_low", "ci_high"]].isna().all().all()
