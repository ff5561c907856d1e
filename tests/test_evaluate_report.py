"""Evaluation against an independent recomputation, and the report's statistics by hand."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run_cli
from paper_repro.data.cityscapes import CityscapesSegmentation
from paper_repro.data.transforms import eval_transforms
from paper_repro.inference import equal_size_batches
from paper_repro.explain import query_pixels
from paper_repro.models import build_model
from paper_repro.layout import Layout, Run
from paper_repro.report import comparisons, holm, paired_differences, per_class, summarise, target_margins
from scipy import stats


def test_evaluation_matches_an_independent_recomputation(tiny_workspace):
    args = ["--dataset", "tiny-streets", "--method", "ce", "--percent", "100", "--seed", "0"]
    assert run_cli(tiny_workspace, "train", *args).returncode == 0
    result = run_cli(tiny_workspace, "evaluate", *args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tiny_workspace / "results" / "metrics" / "tiny-streets" / "ce-100-0.json").read_text())

    # recompute with numpy: predict every validation image at full resolution, one confusion matrix
    state = torch.load(tiny_workspace / "runs" / "tiny-streets" / "ce-100-0" / "model.pt", weights_only=False)
    model = build_model("deeplabv3plus_small", 19)
    model.load_state_dict(state["model"])
    model.eval()
    data = CityscapesSegmentation(tiny_workspace / "data" / "tiny-streets", "val", transforms=eval_transforms())
    cm = np.zeros((19, 19), dtype=np.int64)
    predictions = {}
    with torch.no_grad():
        for index in range(len(data)):
            image, mask = data[index]
            prediction = model(image[None])["out"].argmax(1)[0].numpy()
            predictions[data.ids[index]] = prediction
            valid = mask.numpy() != 255
            np.add.at(cm, (mask.numpy()[valid], prediction[valid]), 1)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = np.diag(cm)[union > 0] / union[union > 0]
    assert metrics["miou"] == pytest.approx(100 * iou.mean(), abs=1e-3)
    assert metrics["pixel_accuracy"] == pytest.approx(100 * np.diag(cm).sum() / cm.sum(), abs=1e-3)
    assert metrics["images"] == 3 and metrics["split"] == "val"
    assert sum(metrics["reliability"]["count"]) == cm.sum()

    # the boundary band by loops: a labelled pixel with another label (or 255) in its (2w + 1)-square, the border no change
    width = metrics["boundary_width"]
    regions = {"boundary": np.zeros((19, 19), dtype=np.int64), "interior": np.zeros((19, 19), dtype=np.int64)}
    for index in range(len(data)):
        mask = data[index][1].numpy()
        height, breadth = mask.shape
        for y in range(height):
            for x in range(breadth):
                if mask[y, x] == 255:
                    continue
                window = mask[max(0, y - width): y + width + 1, max(0, x - width): x + width + 1]
                region = "boundary" if (window != mask[y, x]).any() else "interior"
                regions[region][mask[y, x], predictions[data.ids[index]][y, x]] += 1
    for region, matrix in regions.items():
        union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
        assert metrics[region]["miou"] == pytest.approx(100 * (np.diag(matrix)[union > 0] / union[union > 0]).mean(), abs=1e-3)
        assert metrics[region]["pixels"] == matrix.sum()
    assert regions["boundary"].sum() > 0 and regions["interior"].sum() > 0

    saved = sorted((tiny_workspace / "results" / "predictions" / "tiny-streets" / "ce-100-0").glob("*.png"))
    assert [p.stem for p in saved] == data.ids[:2]  # the first figure_images ids
    for path in saved:
        assert np.array_equal(np.asarray(Image.open(path)), predictions[path.stem])


def test_evaluation_batches_keep_order_and_break_where_the_image_size_changes():
    sizes = [(4, 6), (4, 6), (4, 6), (5, 6), (4, 6), (4, 6)]
    samples = [(torch.full((3, *size), float(index)), torch.full(size, index)) for index, size in enumerate(sizes)]
    batches = list(equal_size_batches(samples, batch_size=2))
    assert [indices for indices, _, _ in batches] == [[0, 1], [2], [3], [4, 5]]
    for indices, images, masks in batches:
        assert images.shape[0] == masks.shape[0] == len(indices)
        assert [int(image[0, 0, 0]) for image in images] == indices and [int(mask[0, 0]) for mask in masks] == indices
    assert [indices for indices, _, _ in equal_size_batches(samples, batch_size=1)] == [[i] for i in range(6)]


def test_summary_statistics_by_hand():
    runs = pd.DataFrame({
        "dataset": ["d"] * 6, "method": ["ce", "ce", "pals", "pals", "ce", "pals"],
        "percent": [10, 10, 10, 10, 100, 100], "schedule": 1, "seed": [0, 1, 0, 1, 0, 0],
        "miou": [40.0, 44.0, 43.0, 47.0, 60.0, 59.0],
    })
    table = summarise(runs, "miou").set_index(["method", "percent"])
    assert table.loc[("ce", 10), "miou_mean"] == 42.0
    assert table.loc[("ce", 10), "miou_std"] == round(np.sqrt(8.0), 4)  # sample std of 40, 44; tables keep 4 decimals
    assert table.loc[("pals", 10), "miou_delta_vs_ce"] == 3.0
    assert table.loc[("pals", 100), "miou_delta_vs_ce"] == -1.0
    assert table.loc[("pals", 100), "n"] == 1 and np.isnan(table.loc[("pals", 100), "miou_std"])


def test_paired_intervals_by_hand():
    # per-seed differences to ce: pals (3, 1, 2) -> mean 2, sd 1; ls (3, 3.5, 2.5) -> mean 3, sd 0.5
    t = 4.302652729911275  # the 0.975 quantile of Student's t with 2 degrees of freedom
    runs = pd.DataFrame({"dataset": ["d"] * 9, "method": ["ce"] * 3 + ["pals"] * 3 + ["ls"] * 3, "percent": [10] * 9, "schedule": 1,
                         "seed": [0, 1, 2] * 3, "miou": [40.0, 44.0, 50.0, 43.0, 45.0, 52.0, 43.0, 47.5, 52.5]})
    table = paired_differences(runs, "miou").set_index("method")
    assert table.loc["pals", "miou_ci_low"] == pytest.approx(2 - t / np.sqrt(3))
    assert table.loc["pals", "miou_ci_high"] == pytest.approx(2 + t / np.sqrt(3))
    assert not table.loc["pals", "miou_resolved"]  # the interval holds 0
    assert table.loc["ls", "miou_ci_low"] == pytest.approx(3 - t * 0.5 / np.sqrt(3))
    assert table.loc["ls", "miou_resolved"] and table.loc["ls", "miou_pairs"] == 3
    assert not table.loc["ce", "miou_resolved"] and table.loc["ce", "miou_ci_low"] == 0
    # the interval is around the difference of the means that summarise reports
    summary = summarise(runs, "miou").set_index("method")
    assert summary.loc["ls", "miou_delta_vs_ce"] == pytest.approx((table.loc["ls", "miou_ci_low"] + table.loc["ls", "miou_ci_high"]) / 2)
    # one seed: no interval, nothing resolved
    single = paired_differences(runs[runs.seed == 0], "miou").set_index("method")
    assert np.isnan(single.loc["pals", "miou_ci_low"]) and not single.loc["pals", "miou_resolved"]
    # the p-value is the paired t-test's, the mean the mean of the differences
    assert table.loc["pals", "miou_p"] == pytest.approx(stats.ttest_rel([43.0, 45.0, 52.0], [40.0, 44.0, 50.0]).pvalue)
    assert table.loc["pals", "miou_difference"] == pytest.approx(2.0)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running maximum 0.02, 0.03, 0.06, 0.06
    adjusted = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    assert adjusted[[0, 1, 2, 4]].tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[3])
    assert holm([0.6, 0.5]).tolist() == [1.0, 1.0]  # capped at 1


def test_comparisons_pair_every_variant_with_each_reference_and_adjust_the_whole_family():
    seeds = [0, 1, 2, 3]
    miou = {"ce": [40.0, 44.0, 50.0, 46.0], "pals": [43.0, 45.0, 52.0, 47.0], "a": [41.0, 44.5, 50.0, 47.0], "b": [30.0, 35.0, 41.0, 36.5]}
    runs = pd.DataFrame([{"dataset": "d", "method": method, "percent": 30, "schedule": 1, "seed": seed, "miou": value, "ece": 2.0 * value}
                         for method, values in miou.items() for seed, value in zip(seeds, values)])
    table = comparisons(runs, ("miou", "ece"), ("ce", "pals"))
    assert len(table) == 8 and set(table["method"]) == {"a", "b"} and set(table["comparisons"]) == {4}
    mious = table[table.metric == "miou"].set_index(["method", "reference"])
    raw = {(method, reference): stats.ttest_rel(miou[method], miou[reference]).pvalue for method in "ab" for reference in ("ce", "pals")}
    for key, p in raw.items():
        assert mious.loc[key, "p"] == pytest.approx(p, abs=1e-4)
        assert mious.loc[key, "difference"] == pytest.approx(np.mean(np.subtract(miou[key[0]], miou[key[1]])), abs=1e-4)
    expected = holm(list(raw.values()))
    assert [mious.loc[key, "p_holm"] for key in raw] == pytest.approx(expected, abs=1e-4)
    assert mious["resolved_holm"].tolist() == [value < 0.05 for value in mious["p_holm"]]
    assert mious.loc[("b", "ce"), "resolved"] and mious.loc[("b", "ce"), "resolved_holm"]


def test_per_class_lists_each_datasets_own_classes(tmp_path):
    """Two datasets with different class sets: no row of one dataset names a class of the other; a class
    without IoU in a run (absent from its evaluation split) stays, counted over the runs that define it."""
    layout = Layout(tmp_path)
    ious = {Run("streets", "ce", 10, 0): {"road": 80.0, "sky": None}, Run("streets", "ce", 10, 1): {"road": 70.0, "sky": 90.0},
            Run("objects", "ce", 10, 0): {"background": 60.0, "cat": 20.0, "dog": 30.0}}
    for run, iou in ious.items():
        layout.metrics(run).parent.mkdir(parents=True, exist_ok=True)
        layout.metrics(run).write_text(json.dumps({"miou": 0, "pixel_accuracy": 0, "ece": 0, "iou": iou}))
    table = per_class(list(ious), layout)
    assert table[["dataset", "class", "iou_mean", "n"]].values.tolist() == [
        ["streets", "road", 75.0, 2], ["streets", "sky", 90.0, 1],
        ["objects", "background", 60.0, 1], ["objects", "cat", 20.0, 1], ["objects", "dog", 30.0, 1]]


def test_target_margins_table_by_hand(tmp_path):
    """Per group and class: seed means of the recorded target statistics, the rival most seeds name, and the mean
    over seeds of the class's IoU minus ce's on the same seed; runs without recorded targets add nothing."""
    layout = Layout(tmp_path)

    def targets(margin, rival, q_elsewhere):
        return {"road": {"pixels": 10, "label_mass": 0.5 + margin / 2, "rival_mass": 0.5 - margin / 2, "rival": rival, "margin": margin,
                         "q_elsewhere": q_elsewhere}}
    recorded = {Run("streets", "ce", 30, 0): ({"road": 80.0}, targets(1.0, "sky", None)),
                Run("streets", "ce", 30, 1): ({"road": 70.0}, targets(1.0, "sky", None)),
                Run("streets", "pals", 30, 0): ({"road": 74.0}, targets(0.2, "sidewalk", 0.1)),
                Run("streets", "pals", 30, 1): ({"road": 60.0}, targets(0.4, "sidewalk", 0.3)),
                Run("streets", "pals", 30, 2): ({"road": 50.0}, None)}  # recorded before targets were: no row
    for run, (iou, margins) in recorded.items():
        layout.metrics(run).parent.mkdir(parents=True, exist_ok=True)
        layout.metrics(run).write_text(json.dumps({"miou": 0, "iou": iou} | ({"targets": margins} if margins else {})))
    table = target_margins(list(recorded), layout).set_index("method")
    assert table.loc["pals", ["margin", "label_mass", "q_elsewhere", "rival", "seeds"]].tolist() == [0.3, 0.65, 0.2, "sidewalk", 2]
    assert table.loc["pals", "iou_minus_ce"] == ((74 - 80) + (60 - 70)) / 2
    assert table.loc["ce", "margin"] == 1.0 and table.loc["ce", "iou_minus_ce"] == 0.0 and np.isnan(table.loc["ce", "q_elsewhere"])
    assert target_margins([Run("streets", "pals", 30, 2)], layout).empty


def test_summary_without_the_baseline_is_an_error_not_nan_deltas():
    runs = pd.DataFrame({"dataset": ["d", "d"], "method": ["ls", "pals"], "percent": [10, 10], "schedule": 1, "seed": [0, 0], "miou": [40.0, 41.0]})
    with pytest.raises(ValueError, match="no ce baseline"):
        summarise(runs, "miou")


def test_query_pixels_are_central_pixels_of_the_largest_classes():
    label = np.full((6, 8), 255, dtype=np.uint8)
    label[:, :5] = 3  # largest region: columns 0-4, centroid (2.5, 2)
    label[1:4, 6:8] = 7  # second region
    pixels = query_pixels(label, 3)
    assert len(pixels) == 2  # only two classes are labelled
    assert label[pixels[0]] == 3 and pixels[0][1] == 2 and pixels[0][0] in (2, 3)
    assert label[pixels[1]] == 7


def test_explain_writes_every_methods_target_and_affinity_rows(tiny_workspace):
    train = ["train", "--dataset", "tiny-streets", "--method", "pals", "--percent", "50", "--seed", "0"]
    assert run_cli(tiny_workspace, *train).returncode == 0
    # the study's ls method with its own eps (not a default of the explanation code), and a third method
    overrides = ["--set", "study.methods=[ce, ls, pals]", "--set", "methods.ls.eps=0.3"]
    result = run_cli(tiny_workspace, "explain", "--dataset", "tiny-streets", *overrides)
    assert result.returncode == 0, result.stderr
    saved = np.load(tiny_workspace / "results" / "explain" / "tiny-streets.npz")
    assert list(saved["methods"]) == ["ce", "ls", "pals"] and str(saved["run"]) == "pals-50-0"
    targets = dict(zip(saved["methods"], saved["targets"]))  # per method: [pixels, K]
    labels = saved["label"][saved["pixels"][:, 0], saved["pixels"][:, 1]]
    onehot = np.eye(19)[labels]
    np.testing.assert_allclose(targets["ce"], onehot)
    np.testing.assert_allclose(targets["ls"], 0.7 * onehot + 0.3 / 19, atol=1e-6)
    for target in targets.values():
        np.testing.assert_allclose(target.sum(1), 1.0, atol=1e-5)
    assert (targets["pals"][np.arange(len(labels)), labels] >= 0.5).all()  # alpha = 0.5 on the label
    np.testing.assert_allclose(saved["affinity"].sum((1, 2)), 1.0, atol=1e-5)
    assert float(saved["tau"]) == 0.1 and float(saved["alpha"]) == 0.5
    assert list(saved["descriptions"]) == ["ce", "ls: eps 0.3", "pals: alpha 0.5, tau 0.1, T 1"]


def test_sanity_bands_by_hand():
    """Published supervised baselines beside a real preset's ce: interpolation in log(percent) by hand."""
    import math

    from paper_repro.plots import sanity_bands

    params = {"datasets": {"cityscapes": {"kind": "cityscapes"}, "voc": {"kind": "voc"},
                           "synthetic-voc": {"kind": "voc", "generate": {"n_train": 8}}}}
    main = pd.DataFrame([
        {"dataset": "cityscapes", "method": "ce", "percent": 10, "miou_mean": 68.0, "miou_std": 1.0},
        {"dataset": "cityscapes", "method": "pals", "percent": 10, "miou_mean": 99.0, "miou_std": 1.0},
        {"dataset": "cityscapes", "method": "ce", "percent": 100, "miou_mean": 80.0, "miou_std": 1.0},
        {"dataset": "voc", "method": "ce", "percent": 100, "miou_mean": 73.0, "miou_std": 0.5},
        {"dataset": "synthetic-voc", "method": "ce", "percent": 100, "miou_mean": 50.0, "miou_std": 0.5},
    ])
    bands = sanity_bands(main, params).set_index(["dataset", "percent"])
    assert list(bands.index) == [("cityscapes", 10), ("cityscapes", 100), ("voc", 100)]  # ce only, generated data skipped
    t = math.log(10 / 6.25) / math.log(12.5 / 6.25)  # 10% between the 1/16 and 1/8 splits of 2975 images
    low, high = 65.7 + t * (72.5 - 65.7), 66.3 + t * (72.8 - 66.3)  # U2PL, UniMatch
    row = bands.loc[("cityscapes", 10)]
    assert row.band_low == pytest.approx(low, abs=0.02) and row.band_high == pytest.approx(high, abs=0.02)
    assert row.outside == pytest.approx(low - 68.0, abs=0.02)
    assert math.isnan(bands.loc[("cityscapes", 100)].band_low)  # no published Cityscapes split at 100%
    assert (bands.loc[("voc", 100)].band_low, bands.loc[("voc", 100)].band_high, bands.loc[("voc", 100)].outside) == (72.5, 73.5, 0.0)


def test_gains_over_the_baseline_are_held_to_holm_over_every_comparison_with_ce():
    """Grid and sweep claims against ce form one family: a raw p of 0.01 among four comparisons is adjusted to 0.04
    (a gain), a raw 0.02 in second place to 0.06 (none); ce's own rows, ls's schedule-x2 row and comparisons with
    pals are not claims against ce."""
    from paper_repro.plots import gains_over_baseline

    main = pd.DataFrame({"dataset": "d", "method": ["ce", "pals", "pals", "ls"], "percent": [10, 10, 30, 10], "schedule": [1, 1, 1, 2],
                         "miou_delta_vs_ce": [0.0, 2.0, -1.0, 5.0], "miou_ci_low": [0.0, 1.0, -2.0, 4.0], "miou_ci_high": [0.0, 3.0, 0.0, 6.0],
                         "miou_p": [1.0, 0.01, 0.2, 0.001]})
    comparisons = pd.DataFrame({"metric": ["miou", "miou", "miou", "ece"], "reference": ["ce", "ce", "pals", "ce"], "dataset": "d",
                                "method": ["v1", "v2", "v1", "v1"], "percent": 30, "difference": [1.5, 3.0, 9.0, -1.0],
                                "ci_low": [0.5, 0.1, 8.0, -2.0], "ci_high": [2.5, 5.0, 10.0, 0.0], "p": [0.02, 0.3, 0.0001, 0.01]})
    table = gains_over_baseline(main, comparisons).set_index(["method", "percent"])
    assert sorted(table.index) == [("pals", 10), ("pals", 30), ("v1", 30), ("v2", 30)]
    assert table.loc[("pals", 10), "p_holm"] == pytest.approx(0.04) and table.loc[("pals", 10), "gain"]
    assert table.loc[("v1", 30), "p_holm"] == pytest.approx(0.06) and not table.loc[("v1", 30), "gain"]
    assert not table.loc[("pals", 30), "gain"] and (table["comparisons"] == 4).all()
    alone = gains_over_baseline(main)  # no sweep: the main grid's claims form the family
    assert alone["method"].tolist() == ["pals", "pals"] and alone["p_holm"].tolist() == [0.02, 0.2]
