"""The embedded benchmark's generators write real-format trees that the real loaders read."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from paper_repro.data.cityscapes import LABEL_ID_TO_TRAIN_ID, CityscapesSegmentation
from paper_repro.data import synthetic
from paper_repro.data.synthetic import generate_cityscapes_like, generate_voc_like
from paper_repro.data.voc import VOCSegmentation


@pytest.fixture(scope="module")
def street_tree(tmp_path_factory):
    return generate_cityscapes_like(tmp_path_factory.mktemp("cs") / "cityscapes", n_train=8, n_val=3, height=64, width=128, seed=3)


@pytest.fixture(scope="module")
def object_tree(tmp_path_factory):
    return generate_voc_like(tmp_path_factory.mktemp("voc") / "voc", n_train=8, n_val=3, height=64, width=80, seed=3)


def test_street_tree_has_the_cityscapes_layout(street_tree):
    images = sorted((street_tree / "leftImg8bit").rglob("*_leftImg8bit.png"))
    labels = sorted((street_tree / "gtFine").rglob("*_gtFine_labelIds.png"))
    assert len(images) == len(labels) == 11
    assert {p.parent.parent.name for p in images} == {"train", "val"}
    for image_path in images:
        stem = image_path.name.removesuffix("_leftImg8bit.png")
        city, sequence, frame = stem.split("_")
        assert image_path.parent.name == city and len(sequence) == len(frame) == 6
        label_path = street_tree / "gtFine" / image_path.parent.parent.name / city / f"{stem}_gtFine_labelIds.png"
        with Image.open(image_path) as image, Image.open(label_path) as label:
            assert image.mode == "RGB" and label.mode == "L" and image.size == label.size == (128, 64)
            assert set(np.unique(np.asarray(label)).tolist()) <= set(LABEL_ID_TO_TRAIN_ID)
    assert not street_tree.with_name(street_tree.name + ".tmp").exists()


def test_street_scenes_load_and_cover_many_classes(street_tree):
    train = CityscapesSegmentation(street_tree, "train")
    val = CityscapesSegmentation(street_tree, "val")
    assert len(train) == 8 and len(val) == 3
    classes = set()
    for index in range(len(train)):
        image, mask = train[index]
        assert image.shape == (3, 64, 128)
        classes |= set(mask.unique().tolist())
    assert len(classes - {255}) >= 12  # most of the 19 classes appear in a handful of scenes
    for always in (0, 1):  # road and sidewalk are in every street
        assert all((train[i][1] == always).any() for i in range(len(train)))
    assert sum((train[i][1] == 10).any() for i in range(len(train))) >= 6  # tall facades may hide the sky


def test_object_tree_has_the_voc_layout(object_tree):
    base = object_tree / "VOCdevkit" / "VOC2012"
    splits = {name: (base / "ImageSets" / "Segmentation" / f"{name}.txt").read_text().split() for name in ("train", "val", "trainval")}
    assert len(splits["train"]) == 8 and len(splits["val"]) == 3
    assert splits["trainval"] == splits["train"] + splits["val"] and not set(splits["train"]) & set(splits["val"])
    for image_id in splits["trainval"]:
        with Image.open(base / "JPEGImages" / f"{image_id}.jpg") as image, Image.open(base / "SegmentationClass" / f"{image_id}.png") as label:
            assert image.format == "JPEG" and label.mode == "P" and image.size == label.size == (80, 64)
            values = set(np.unique(np.asarray(label)).tolist())
            assert values <= set(range(21)) | {255}
            assert 255 in values and len(values - {0, 255}) >= 1  # an object with its boundary band


def test_voc_boundary_band_separates_different_labels(object_tree):
    mask = VOCSegmentation(object_tree, "train")[0][1].numpy()
    # no two 4-neighbours carry different labels unless one of them is the 255 band
    for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:, :], mask[:-1, :])):
        touching = (a != b) & (a != 255) & (b != 255)
        assert not touching.any()


def test_object_scenes_load_and_cover_many_classes(object_tree):
    train = VOCSegmentation(object_tree, "train")
    classes = set()
    for index in range(len(train)):
        classes |= set(train[index][1].unique().tolist())
    assert len(classes - {0, 255}) >= 6


@pytest.mark.parametrize("generate", [generate_cityscapes_like, generate_voc_like])
def test_generators_are_deterministic_per_seed(tmp_path, generate):
    def arrays(root):
        return [np.asarray(Image.open(p)) for p in sorted(root.rglob("*")) if p.suffix in (".png", ".jpg")]

    first = arrays(generate(tmp_path / "a", n_train=3, n_val=1, height=32, width=48, seed=7))
    again = arrays(generate(tmp_path / "b", n_train=3, n_val=1, height=32, width=48, seed=7))
    other = arrays(generate(tmp_path / "c", n_train=3, n_val=1, height=32, width=48, seed=8))
    assert len(first) == 8 and all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))


def test_colour_alone_does_not_identify_a_class(street_tree):
    # The same class gets very different colours across instances: the per-image mean colour
    # of a class (building, sky) varies far more than lighting and sensor noise would make it.
    means = []
    for index in range(8):
        image, mask = CityscapesSegmentation(street_tree, "train")[index]
        for train_id in (2, 10):  # building, sky
            if (mask == train_id).sum() > 20:
                means.append(image[:, mask == train_id].mean(1).numpy())
    assert np.std(np.array(means), axis=0).mean() > 0.1


def test_regenerating_replaces_the_tree(tmp_path):
    root = generate_voc_like(tmp_path / "voc", n_train=2, n_val=1, height=32, width=32, seed=0)
    (root / "stale.txt").write_text("left over")
    generate_voc_like(root, n_train=2, n_val=1, height=32, width=32, seed=0)
    assert not (root / "stale.txt").exists()


@pytest.mark.parametrize("field,value,expected", [("n_train", 0, "a positive integer"), ("n_val", -1, "a positive integer"),
                                                  ("height", 8, "an integer >= 16"), ("width", 12.5, "an integer >= 16")])
def test_generator_rejects_bad_sizes(tmp_path, field, value, expected):
    sizes = {"n_train": 2, "n_val": 1, "height": 32, "width": 32} | {field: value}
    with pytest.raises(ValueError, match=f"{field} must be {expected}, got {value}"):
        generate_cityscapes_like(tmp_path / "x", seed=0, **sizes)
    assert not (tmp_path / "x").exists()


def test_typical_look_sets_how_often_a_class_wears_its_own_colour(tmp_path):
    def sky_colour_spread(typical_look):
        root = generate_cityscapes_like(tmp_path / str(typical_look), n_train=12, n_val=1, height=32, width=64, seed=3,
                                        typical_look=typical_look)
        data = CityscapesSegmentation(root, "train")
        means = [image[:, mask == 10].mean(1).numpy() for image, mask in (data[i] for i in range(len(data))) if (mask == 10).sum() > 20]
        return np.std(np.array(means), axis=0).mean()

    assert sky_colour_spread(1.0) < 0.75 * sky_colour_spread(0.0)  # lighting and colour cast vary in both


@pytest.mark.parametrize("generate", [generate_cityscapes_like, generate_voc_like])
def test_generator_rejects_a_typical_look_outside_0_1(tmp_path, generate):
    with pytest.raises(ValueError, match=r"typical_look must be a number in \[0, 1\], got 1.5"):
        generate(tmp_path / "x", n_train=2, n_val=1, height=32, width=32, seed=0, typical_look=1.5)
    assert not (tmp_path / "x").exists()


def drawn_digest(scenes) -> str:
    digest = hashlib.sha256()
    for image, labels in scenes:
        digest.update(np.ascontiguousarray(image).tobytes())
        digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def test_the_drawn_scenes_are_those_the_committed_study_was_generated_from():
    """SHA-256 of drawn street, object and pretraining source scenes (images and labels), recorded from the
    generator that wrote the committed study's data: a change to the drawing code that changes one pixel of
    the benchmark changes these (refactors must keep them; a deliberate change records new ones)."""
    streets = drawn_digest(synthetic.draw_street_scene(np.random.default_rng([0, 0, i]), 64, 128) for i in range(12))
    larger = drawn_digest(synthetic.draw_street_scene(np.random.default_rng([1, 1, i]), 128, 256) for i in range(4))
    objects = drawn_digest(synthetic.draw_object_scene(np.random.default_rng([0, 0, i]), 80, 80) for i in range(12))
    source = drawn_digest(synthetic.draw_source_image(0, "train", i, 64, 64, 0.5) for i in range(6))
    assert streets == "f468305e19bae5673a04e190a6eb3caeed7e4d74ccac507aa6f0aad185e4dec0"
    assert larger == "ff146645e3701fbb9ce8c46b2c307cea542fb1693fcad2c3e0b8ae3e86297cdd"
    assert objects == "2532ba500c1f72ada8ab416f56b6bbb0553c53137b7a494cc733ad00fda26343"
    assert source == "a4cd40d3dab6154cf5d21c617cc2977c035d3ec50c6a9e00d25405799aa6bfe3"
