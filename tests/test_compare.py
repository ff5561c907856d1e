"""A rerun's results against a reference copy, and the report's schedule table, on hand-written metrics."""

import json

import pandas as pd
import pytest
import yaml

from conftest import TINY_PARAMS, run_cli
from paper_repro.compare import compare
from paper_repro.layout import Layout, Run
from paper_repro.report import report
from paper_repro.settings import resolve

PARAMS = TINY_PARAMS | {"study": TINY_PARAMS["study"] | {"percents": [50], "seeds": [0, 1, 2]},
                        "schedule": {"factor": 4, "datasets": ["tiny-streets"], "methods": ["ce", "pals"], "percents": [50], "seeds": [0, 1, 2]}}
SETTINGS = resolve(PARAMS, "test parameters")
CE = [40.0, 44.0, 50.0]


def write_metrics(root, mious: dict[Run, float]) -> None:
    layout = Layout(root)
    for run, miou in mious.items():
        layout.metrics(run).parent.mkdir(parents=True, exist_ok=True)
        regions = {region: {"miou": miou - shift, "pixel_accuracy": 90.0, "pixels": 10} for region, shift in (("boundary", 20), ("interior", 0))}
        layout.metrics(run).write_text(json.dumps({"miou": miou, "pixel_accuracy": 90.0, "ece": 5.0, "iou": {"road": miou}} | regions))


def study(pals: list[float], longer_pals: list[float]) -> dict[Run, float]:
    """ce and pals at 50%, each also at 4x the schedule (ce 4x: 5 points above ce)."""
    mious = {}
    for seed in range(3):
        mious |= {Run("tiny-streets", "ce", 50, seed): CE[seed], Run("tiny-streets", "pals", 50, seed): pals[seed],
                  Run("tiny-streets", "ce", 50, seed, 4): CE[seed] + 5, Run("tiny-streets", "pals", 50, seed, 4): longer_pals[seed]}
    return mious


def test_compare_gives_each_runs_difference_and_whether_each_verdict_holds(tmp_path, capsys):
    reference, rerun = tmp_path / "reference", tmp_path / "rerun"
    write_metrics(reference, study(pals=[43.0, 46.0, 53.0], longer_pals=[45.0, 49.5, 55.5]))  # better at 1x, unresolved at 4x
    write_metrics(rerun, study(pals=[43.5, 46.0, 52.5], longer_pals=[49.0, 53.0, 59.0]))      # better at 1x and at 4x
    per_run, per_cell = compare(SETTINGS, reference, tmp_path / "compare.csv", Layout(rerun))
    assert len(per_run) == 12
    row = per_run.set_index(["method", "schedule", "seed"]).loc[("pals", 1, 0)]
    assert row["difference"] == 0.5 and row["seed_std"] == pytest.approx(pd.Series([43.0, 46.0, 53.0]).std(), abs=1e-4)
    cells = per_cell.set_index(["method", "schedule"])
    assert cells.loc[("pals", 1), ["verdict", "verdict_reference", "holds"]].tolist() == ["better", "better", True]
    assert cells.loc[("pals", 4), ["verdict", "verdict_reference", "holds"]].tolist() == ["better", "unresolved", False]
    assert "2 verdicts (paired 95% interval to ce): 1 hold, 1 change" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "compare.csv")["holds"].tolist() == [True, False]
    assert len(pd.read_csv(tmp_path / "compare_runs.csv")) == 12


def test_compare_names_a_reference_without_the_runs(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    write_metrics(tmp_path, study(pals=[43.0, 46.0, 53.0], longer_pals=[45.0, 49.0, 55.0]))
    result = run_cli(tmp_path, "compare", str(tmp_path / "elsewhere"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: missing metrics {tmp_path / 'elsewhere/results/metrics/tiny-streets/ce-50-0.json'}; "
                                      "run its dataset's runs stage (train, then evaluate) first")


def test_report_sets_the_longer_schedule_beside_the_study_runs(tmp_path):
    write_metrics(tmp_path, study(pals=[43.0, 46.0, 53.0], longer_pals=[45.0, 49.5, 55.5]))
    report(SETTINGS, Layout(tmp_path))
    table = pd.read_csv(Layout(tmp_path).table("schedule")).set_index(["method", "schedule"])
    assert table.loc[("ce", 4), "miou_mean"] == pytest.approx(sum(CE) / 3 + 5)
    assert table.loc[("pals", 1), "miou_delta_vs_ce"] == pytest.approx(8 / 3, abs=1e-4)  # differences 3, 2, 3
    assert table.loc[("pals", 4), "miou_delta_vs_ce"] == pytest.approx(1 / 3, abs=1e-4)  # 0, 0.5, 0.5
    assert bool(table.loc[("pals", 1), "miou_resolved"]) and not bool(table.loc[("pals", 4), "miou_resolved"])
    main = pd.read_csv(Layout(tmp_path).table("main"))
    assert set(main["schedule"]) == {1} and len(main) == 2  # the study alone
    boundary = pd.read_csv(Layout(tmp_path).table("boundary")).set_index("method")
    assert boundary.loc["ce", "boundary_miou_mean"] == pytest.approx(sum(CE) / 3 - 20, abs=1e-4)
