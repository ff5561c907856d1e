"""The scale check: a generated dataset drawn ``scale.factor`` times higher and wider, the runs it holds,
and how they are compared with the same runs at 1x."""

import copy
import json

import pytest
import pandas as pd
import yaml
from PIL import Image

from conftest import TINY_PARAMS, run_cli
from test_compare import write_metrics
from paper_repro.config import load_settings
from paper_repro.data import open_dataset
from paper_repro.layout import Layout, Run
from paper_repro.report import report
from paper_repro.settings import resolve
from paper_repro.errors import ParamsError

SCALE = {"factor": 2, "datasets": ["tiny-streets"], "methods": ["ce", "pals"], "percents": [50], "seeds": [0]}


def params_with(scale: dict | None = None, **sections) -> dict:
    params = copy.deepcopy(TINY_PARAMS) | sections
    params["scale"] = SCALE if scale is None else scale
    return params


def test_the_scaled_dataset_is_the_same_dataset_drawn_factor_times_larger():
    settings = resolve(params_with(), "params.yaml")
    base, scaled = settings.dataset("tiny-streets"), settings.dataset("tiny-streets-x2")
    assert scaled.root == "data/tiny-streets-x2" and scaled.scaled_from == "tiny-streets" and scaled.scale == 2
    assert scaled.generate == base.generate | {"height": 64, "width": 128}
    assert (scaled.base_size, scaled.crop) == (64, (64, 128))
    assert (scaled.kind, scaled.num_classes, scaled.scale_range, scaled.train) == (base.kind, base.num_classes, base.scale_range, base.train)
    assert settings.run(Run("tiny-streets-x2", "pals", 50, 0)).train == settings.run(Run("tiny-streets", "pals", 50, 0)).train
    assert settings.runs("tiny-streets-x2") == [Run("tiny-streets-x2", "ce", 50, 0), Run("tiny-streets-x2", "pals", 50, 0)]
    assert settings.runs()[-2:] == settings.runs("tiny-streets-x2")  # after the study's
    assert settings.scale.datasets == ("tiny-streets-x2",)


def test_no_scale_check_without_the_section_or_with_no_datasets():
    for params in (copy.deepcopy(TINY_PARAMS), params_with(SCALE | {"datasets": []})):
        settings = resolve(params, "params.yaml")
        assert settings.scale is None and set(settings.datasets) == {"tiny-streets"}


@pytest.mark.parametrize("scale, message", [
    (SCALE | {"factor": 1}, "scale.factor must be an integer >= 2, got 1"),
    (SCALE | {"datasets": "tiny-streets"}, "scale.datasets must be a list of dataset names (empty: no scale check), got 'tiny-streets'"),
    (SCALE | {"datasets": ["streets"]}, "scale.datasets names 'streets', which is not under study.datasets (tiny-streets)"),
    (SCALE | {"methods": ["ls"]}, "scale.methods names 'ls', which is not under study.methods or ablation.methods (ce, pals)"),
    (SCALE | {"percents": [30]}, "scale.percents names 30, which is not under study.percents (50, 100)"),
])
def test_a_wrong_scale_section_is_a_one_line_error_naming_its_key(scale, message):
    with pytest.raises(ParamsError) as error:
        resolve(params_with(scale), "params.yaml")
    assert str(error.value) == f"params.yaml: {message}"


def test_only_a_generated_dataset_with_a_run_at_1x_can_be_drawn_larger():
    real = copy.deepcopy(TINY_PARAMS)
    del real["datasets"]["tiny-streets"]["generate"]
    with pytest.raises(ParamsError, match="scale.datasets names 'tiny-streets', which has no generate: section"):
        resolve(real | {"scale": SCALE}, "params.yaml")
    sweep = params_with(SCALE | {"methods": ["ce", "ls"]})
    sweep["study"] = sweep["study"] | {"methods": ["ce", "pals"]}
    sweep["methods"]["ls"] = {"loss": "ls", "eps": 0.1}
    sweep["ablation"] = {"datasets": ["tiny-streets"], "methods": ["ls"], "percents": [100], "seeds": [0]}
    with pytest.raises(ParamsError, match="scale: ls at 50% seed 0 on tiny-streets is not a run of the study or the ablation"):
        resolve(sweep, "params.yaml")
    sweep["ablation"]["percents"] = [50]
    assert resolve(sweep, "params.yaml").runs("tiny-streets-x2")[-1] == Run("tiny-streets-x2", "ls", 50, 0)
    taken = params_with()
    taken["datasets"]["tiny-streets-x2"] = taken["datasets"]["tiny-streets"]
    with pytest.raises(ParamsError, match="would be named 'tiny-streets-x2', which datasets already holds"):
        resolve(taken, "params.yaml")


def test_the_scaled_dataset_has_the_same_images_twice_as_large_and_the_same_subsets(tmp_path, monkeypatch):
    """generate and subsets as the pipeline runs them: the generator's seeds at twice the size (scenes of the same
    distribution; the draws depend on the size, so not the 1x scenes pixel for pixel), the same ids and subsets."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_with()))
    for dataset in ("tiny-streets", "tiny-streets-x2"):
        for stage in ("generate", "subsets"):
            result = run_cli(tmp_path, stage, "--dataset", dataset)
            assert result.returncode == 0, result.stderr
    monkeypatch.chdir(tmp_path)  # where the datasets' roots lie
    settings, layout = load_settings("params.yaml"), Layout(".")
    small, large = (open_dataset(settings.dataset(name), "val") for name in ("tiny-streets", "tiny-streets-x2"))
    assert small.ids == large.ids
    for index in range(len(small)):
        low, high = small[index][1].numpy(), large[index][1].numpy()
        assert high.shape == (2 * low.shape[0], 2 * low.shape[1])
    manifests = sorted(path.relative_to(layout.manifests("tiny-streets")) for path in layout.manifests("tiny-streets").rglob("*.txt"))
    assert manifests == sorted(path.relative_to(layout.manifests("tiny-streets-x2")) for path in layout.manifests("tiny-streets-x2").rglob("*.txt"))
    for manifest in manifests:
        assert (layout.manifests("tiny-streets-x2") / manifest).read_text() == (layout.manifests("tiny-streets") / manifest).read_text()


def test_the_runs_stage_trains_and_evaluates_the_scale_check_on_the_larger_dataset(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_with()))
    for stage in ("generate", "subsets", "runs"):
        result = run_cli(tmp_path, stage, "--dataset", "tiny-streets-x2")
        assert result.returncode == 0, result.stderr
    layout = Layout(tmp_path)
    for method in ("ce", "pals"):
        run = Run("tiny-streets-x2", method, 50, 0)
        metrics = json.loads(layout.metrics(run).read_text())
        assert metrics["targets"] and set(metrics["targets"]) <= set(metrics["iou"])  # its targets measured on its training images
        predicted = next(layout.predictions(run).glob("*.png"))
        assert Image.open(predicted).size == (128, 64)  # evaluated at the larger size
    assert not layout.metrics(Run("tiny-streets", "ce", 50, 0)).exists()  # the 1x runs belong to their own stage


def test_report_sets_the_scale_check_beside_the_same_runs_at_1x(tmp_path):
    """Hand-written metrics: pals - ce is 3, 2, 3 at 1x and 0, 0.5, 0.5 at 2x, so the change from 1x to 2x is
    -3, -1.5, -2.5: mean -7/3, sample sd 0.763763, t(0.975, 2) = 4.302653, half-width 1.897290."""
    params = params_with(study=TINY_PARAMS["study"] | {"percents": [50], "seeds": [0, 1, 2]})
    params["scale"] = SCALE | {"seeds": [0, 1, 2]}
    settings = resolve(params, "test parameters")
    mious = {("tiny-streets", "ce"): [40.0, 44.0, 50.0], ("tiny-streets", "pals"): [43.0, 46.0, 53.0],
             ("tiny-streets-x2", "ce"): [45.0, 49.0, 55.0], ("tiny-streets-x2", "pals"): [45.0, 49.5, 55.5]}
    write_metrics(tmp_path, {Run(dataset, method, 50, seed): values[seed] for (dataset, method), values in mious.items() for seed in range(3)})
    report(settings, Layout(tmp_path))
    table = pd.read_csv(Layout(tmp_path).table("scale")).set_index(["scale", "method"])
    assert table.loc[(1, "ce"), ["dataset", "drawn_from", "miou_mean"]].tolist() == ["tiny-streets", "tiny-streets", pytest.approx(134 / 3, abs=1e-4)]
    assert table.loc[(2, "ce"), ["dataset", "drawn_from", "miou_mean"]].tolist() == ["tiny-streets-x2", "tiny-streets", pytest.approx(149 / 3, abs=1e-4)]
    assert table.loc[(1, "pals"), "miou_delta_vs_ce"] == pytest.approx(8 / 3, abs=1e-4) and table.loc[(1, "pals"), "miou_resolved"]
    assert table.loc[(2, "pals"), "miou_delta_vs_ce"] == pytest.approx(1 / 3, abs=1e-4) and not table.loc[(2, "pals"), "miou_resolved"]
    [change] = pd.read_csv(Layout(tmp_path).table("scale_change")).to_dict("records")
    assert change | {"miou_difference": round(change["miou_difference"], 4)} == {
        "drawn_from": "tiny-streets", "scale": 2, "method": "pals", "percent": 50, "miou_difference": -2.3333,
        "miou_ci_low": pytest.approx(-7 / 3 - 1.897290, abs=1e-4), "miou_ci_high": pytest.approx(-7 / 3 + 1.897290, abs=1e-4),
        "miou_pairs": 3, "miou_p": pytest.approx(change["miou_p"]), "miou_resolved": True}
    assert change["miou_p"] == pytest.approx(0.0339, abs=1e-4)  # t = -5.2915 on 2 degrees of freedom: p = 1 - |t| / sqrt(t^2 + 2)
    main = pd.read_csv(Layout(tmp_path).table("main"))
    assert set(main["dataset"]) == {"tiny-streets"}  # the study's table holds the study alone


def test_report_times_each_run_group_from_its_training_logs(tmp_path):
    """Hand-written logs: the median of data + step seconds per run, averaged over seeds."""
    params = params_with(SCALE | {"seeds": [0, 1]}, study=TINY_PARAMS["study"] | {"percents": [50], "seeds": [0, 1]})
    settings = resolve(params, "test parameters")
    runs = [Run(dataset, method, 50, seed) for dataset in ("tiny-streets", "tiny-streets-x2") for method in ("ce", "pals") for seed in (0, 1)]
    write_metrics(tmp_path, {run: 50.0 for run in runs})
    layout = Layout(tmp_path)
    for run in runs:  # a run's iterations take 0.1, 0.2, 0.6 s (median 0.2), at 2x 0.5, 0.5, 2.0 s (median 0.5), the second seed 0.1 s more each
        steps = [0.1, 0.2, 0.6] if run.dataset == "tiny-streets" else [0.5, 0.5, 2.0]
        log_table = pd.DataFrame({"iteration": [1, 2, 3], "loss": 1.0, "lr": 0.01, "threads": [1, 1, 2],
                                  "data_seconds": 0.05 + 0.1 * run.seed, "step_seconds": [step - 0.05 for step in steps]})
        layout.log(run).parent.mkdir(parents=True, exist_ok=True)
        log_table.to_csv(layout.log(run), index=False)
    report(settings, layout)
    table = pd.read_csv(layout.table("timing")).set_index(["dataset", "method"])
    assert table.loc[("tiny-streets", "ce"), "seconds_per_iteration"] == pytest.approx(0.25)
    assert table.loc[("tiny-streets-x2", "pals"), "seconds_per_iteration"] == pytest.approx(0.55)
    assert table.loc[("tiny-streets-x2", "pals"), "training_seconds"] == pytest.approx(3.15)  # 3.0 and 3.3
    assert table.loc[("tiny-streets", "pals"), ["iterations", "threads", "seeds"]].tolist() == [3, 1, 2]
