"""Prediction on any images and the test servers' submission formats: the exported Cityscapes label
ids score, by the official evaluator, exactly as the project's own evaluation of the same run; VOC
palette PNGs decode to the same predictions; multi-scale and flip averaging by hand."""

import json
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torchvision import tv_tensors

from conftest import TINY_PARAMS, run_cli
from paper_repro.config import ParamsError, load_settings
from paper_repro.data.cityscapes import CityscapesSegmentation
from paper_repro.data.synthetic import generate_cityscapes_like, generate_voc_like
from paper_repro.data.transforms import eval_transforms
from paper_repro.data.voc import VOCSegmentation
from paper_repro.inference import class_probabilities
from paper_repro.models import build_model
from test_official_evaluation import assert_same_scores

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

RUN = ("--dataset", "tiny-streets", "--method", "ce", "--percent", "100", "--seed", "0")


@pytest.fixture(scope="module")
def trained(tiny_workspace, tmp_path_factory):
    """A copy of the tiny study with its ce run trained and evaluated on every validation image."""
    workspace = tmp_path_factory.mktemp("predict")
    for name in ("params.yaml", "data", "subsets"):
        (shutil.copytree if (tiny_workspace / name).is_dir() else shutil.copy)(tiny_workspace / name, workspace / name)
    for stage in ("train", "evaluate"):
        result = run_cli(workspace, stage, *RUN)
        assert result.returncode == 0, result.stderr
    return workspace


def test_cityscapes_submission_scores_as_the_projects_evaluation(trained):
    result = run_cli(trained, "predict", *RUN, "--split", "val", "--format", "cityscapes", "--out", "submission", "--archive")
    assert result.returncode == 0, result.stderr
    data = CityscapesSegmentation(trained / "data" / "tiny-streets", "val")
    exported = sorted((trained / "submission").glob("*.png"))
    assert [path.name for path in exported] == [f"{image_id}.png" for image_id in data.ids]  # <city>_<seq>_<frame>.png, one folder
    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    theirs = official.evaluateImgLists([str(path) for path in exported], [str(label) for _, label in data.files], args)
    metrics = json.loads((trained / "results" / "metrics" / "tiny-streets" / "ce-100-0.json").read_text())
    assert_same_scores(metrics["iou"], metrics["miou"], theirs)
    with zipfile.ZipFile(trained / "submission.zip") as packed:
        assert sorted(packed.namelist()) == [path.name for path in exported]


def test_a_test_split_without_labels_is_predicted(trained):
    root = trained / "data" / "tiny-streets"
    shutil.copytree(root / "leftImg8bit" / "val", root / "leftImg8bit" / "test")  # images only, as the real test split's labels are private
    result = run_cli(trained, "predict", *RUN, "--split", "test", "--format", "cityscapes", "--out", "test-submission")
    assert result.returncode == 0, result.stderr
    names = sorted(path.name for path in (trained / "test-submission").glob("*.png"))
    assert names == sorted(path.name.replace("_leftImg8bit", "") for path in (root / "leftImg8bit" / "test").glob("*/*.png"))
    label_ids = set(np.unique(np.concatenate([np.asarray(Image.open(trained / "test-submission" / name)).ravel() for name in names])).tolist())
    assert label_ids <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}  # the 19 evaluated label ids


def test_maps_of_any_images_and_an_unreadable_one_named_and_skipped(trained, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "street.jpg")
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(folder / "grey.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = run_cli(trained, "predict", *RUN, str(folder), "--out", "maps", "--confidence")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert len(errors) == 2 and "cannot read the image" in errors[0]
    assert result.stderr.strip().splitlines()[-1] == f"error: 1 of 3 images could not be read and were skipped: {folder / 'broken.png'}"
    out = trained / "maps"
    for stem, size in (("street", (50, 40)), ("grey", (30, 20))):
        labels = Image.open(out / f"{stem}_labels.png")
        assert labels.size == size and np.asarray(labels).max() < 19  # train ids at the image's own size
        assert Image.open(out / f"{stem}_overlay.png").mode == "RGB" and Image.open(out / f"{stem}_confidence.png").size == size
    assert json.loads((out / "predict.json").read_text())["skipped"] == [str(folder / "broken.png")]
    # the labels are the evaluation's predictions: the argmax of the same class probabilities
    settings = load_settings(trained / "params.yaml")
    model = build_model("deeplabv3plus_small", 19)
    model.load_state_dict(torch.load(trained / "runs" / "tiny-streets" / "ce-100-0" / "model.pt", weights_only=True)["model"])
    image = eval_transforms()(tv_tensors.Image(torch.from_numpy(np.array(Image.open(folder / "grey.png"))).permute(2, 0, 1)))
    expected = class_probabilities(model.eval(), image.as_subclass(torch.Tensor)[None], settings.evaluate.scales, settings.evaluate.flip).argmax(1)[0]
    assert np.array_equal(np.asarray(Image.open(out / "grey_labels.png")), expected.numpy())


def test_an_output_folder_predict_did_not_write_is_refused(trained):
    (trained / "notes").mkdir()
    (trained / "notes" / "keep.txt").write_text("mine")
    result = run_cli(trained, "predict", *RUN, "--split", "val", "--out", "notes")
    assert result.returncode == 2 and "--out notes exists and was not written by predict" in result.stderr
    assert (trained / "notes" / "keep.txt").read_text() == "mine"


def test_voc_submission_decodes_to_the_same_predictions(tmp_path):
    root = generate_voc_like(tmp_path / "voc", n_train=2, n_val=3, height=32, width=40, seed=0)
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_small", 21).eval()
    torch.save({"config": {}, "model": model.state_dict()}, tmp_path / "model.pt")
    params = TINY_PARAMS | {"datasets": {"objects": {"kind": "voc", "root": str(root), "num_classes": 21, "train_split": "train",
                                                     "eval_split": "val", "base_size": 32, "scale_range": [1.0, 1.0], "crop": [32, 32]}},
                            "study": TINY_PARAMS["study"] | {"datasets": ["objects"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_cli(tmp_path, "predict", "--dataset", "objects", "--model", "model.pt", "--split", "val", "--format", "voc",
                     "--out", "voc-submission", "--archive")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "voc-submission" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    data = VOCSegmentation(root, "val", transforms=eval_transforms())
    assert sorted(path.stem for path in folder.glob("*.png")) == data.ids
    for index, image_id in enumerate(data.ids):
        png = Image.open(folder / f"{image_id}.png")
        assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]  # the VOC colour map: class 1 is (128, 0, 0)
        expected = class_probabilities(model, data[index][0][None]).argmax(1)[0].numpy()
        assert np.array_equal(np.asarray(png), expected)
    with tarfile.open(tmp_path / "voc-submission.tar.gz") as packed:
        assert sorted(packed.getnames()) == sorted(f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in data.ids)


@pytest.fixture(scope="module")
def street_image(tmp_path_factory):
    root = generate_cityscapes_like(tmp_path_factory.mktemp("streets") / "s", n_train=1, n_val=1, height=32, width=64, seed=1)
    torch.manual_seed(0)
    return build_model("deeplabv3plus_small", 19).eval(), CityscapesSegmentation(root, "val", transforms=eval_transforms())[0][0][None]


def test_one_scale_without_flip_is_the_single_forward_pass(street_image):
    model, image = street_image
    with torch.no_grad():
        single = torch.softmax(model(image.contiguous(memory_format=torch.channels_last))["out"].float(), dim=1)
    assert torch.equal(class_probabilities(model, image), single)


def test_flip_averaging_is_exactly_flip_equivariant(street_image):
    model, image = street_image
    averaged = class_probabilities(model, image, flip=True)
    assert torch.equal(class_probabilities(model, image.flip(-1), flip=True), averaged.flip(-1))
    assert not torch.equal(averaged, class_probabilities(model, image))  # the mirror view changes the mean


def test_multi_scale_is_the_mean_of_each_scale_brought_back_to_the_image(street_image):
    model, image = street_image
    expected = []
    with torch.no_grad():
        for size in ((16, 32), (32, 64), (48, 96)):
            logits = model(F.interpolate(image, size=size, mode="bilinear", align_corners=False))["out"]
            expected.append(torch.softmax(F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False), dim=1))
    torch.testing.assert_close(class_probabilities(model, image, (0.5, 1.0, 1.5)), sum(expected) / 3, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value,message", [("[]", "evaluate.scales must be a non-empty list of distinct scales in (0, 4]"),
                                           ("[0, 1]", "got [0, 1]"), ("[1.0, 1.0]", "got [1.0, 1.0]"), ("1.0", "got 1.0")])
def test_a_scale_list_is_checked_when_the_parameters_are_read(tmp_path, value, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("(", r"\(").replace("]", r"\]").replace(")", r"\)")):
        load_settings(tmp_path / "params.yaml", [f"evaluate.scales={value}"])
