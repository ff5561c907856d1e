"""Dataset loaders on small trees fabricated here, in the real Cityscapes and VOC formats."""

import numpy as np
import pytest
import torch
from PIL import Image

from paper_repro.data import cityscapes, voc
from paper_repro.data.cityscapes import CityscapesSegmentation, label_ids_to_train_ids
from paper_repro.data.common import DataError
from paper_repro.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms
from paper_repro.data.voc import VOCSegmentation, save_palette_png

# The official evaluation classes (docs/method.md, section 4): label id -> train id, in order.
OFFICIAL_TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
OFFICIAL_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]


def test_label_id_table_matches_the_official_list():
    train_ids = label_ids_to_train_ids(np.arange(34, dtype=np.uint8))
    expected = np.full(34, 255)
    expected[OFFICIAL_TRAIN_LABEL_IDS] = np.arange(19)
    assert train_ids.tolist() == expected.tolist()
    assert cityscapes.CLASSES == OFFICIAL_NAMES
    assert cityscapes.NUM_CLASSES == 19


def test_label_id_mapping_keeps_tensor_type_and_shape():
    labels = torch.tensor([[7, 26], [0, 33]])
    mapped = label_ids_to_train_ids(labels)
    assert isinstance(mapped, torch.Tensor) and mapped.dtype == torch.long
    assert mapped.tolist() == [[0, 13], [255, 18]]


def test_label_id_mapping_rejects_undefined_ids():
    with pytest.raises(ValueError, match=r"0..33.*\[40\]"):
        label_ids_to_train_ids(np.array([7, 40]))


def write_cityscapes_tree(root, split="train", label_maps=None, city="testcity"):
    """Fabricate ``root/leftImg8bit`` and ``root/gtFine`` with the given label-id maps."""
    rng = np.random.default_rng(0)
    paths = []
    for index, label_ids in enumerate(label_maps):
        stem = f"{city}_{index:06d}_000019"
        image_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        label_path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*label_ids.shape, 3), dtype=np.uint8)).save(image_path)
        Image.fromarray(label_ids.astype(np.uint8)).save(label_path)
        paths.append((stem, image_path, label_path))
    return paths


def test_cityscapes_loader_maps_label_ids_to_train_ids(tmp_path):
    first = np.array([[7, 8, 26, 0], [23, 23, 1, 33]], dtype=np.uint8)
    second = np.array([[11, 11, 11, 11], [24, 25, 32, 6]], dtype=np.uint8)
    write_cityscapes_tree(tmp_path, "val", [first, second])
    dataset = CityscapesSegmentation(tmp_path, "val")
    assert len(dataset) == 2
    assert dataset.ids == ["testcity_000000_000019", "testcity_000001_000019"]
    image, mask = dataset[0]
    assert image.shape == (3, 2, 4) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert mask.dtype == torch.long
    assert mask.tolist() == [[0, 1, 13, 255], [10, 10, 255, 18]]
    assert dataset[1][1].tolist() == [[2, 2, 2, 2], [11, 12, 17, 255]]


def test_cityscapes_loader_selects_ids(tmp_path):
    maps = [np.full((2, 3), label, dtype=np.uint8) for label in (7, 8, 11)]
    write_cityscapes_tree(tmp_path, "train", maps)
    dataset = CityscapesSegmentation(tmp_path, "train", ids=["testcity_000002_000019"])
    assert len(dataset) == 1 and dataset[0][1].unique().tolist() == [2]
    with pytest.raises(DataError, match="not in the split"):
        CityscapesSegmentation(tmp_path, "train", ids=["nowhere_000000_000000"])


def test_cityscapes_missing_label_file_is_named(tmp_path):
    [(stem, _, label_path)] = write_cityscapes_tree(tmp_path, "train", [np.full((2, 2), 7, np.uint8)])
    label_path.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing file .*{stem}_gtFine_labelIds.png"):
        CityscapesSegmentation(tmp_path, "train")


def test_cityscapes_missing_split_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing folder .*leftImg8bit/val"):
        CityscapesSegmentation(tmp_path, "val")


def test_cityscapes_label_size_mismatch_is_named(tmp_path):
    [(stem, image_path, label_path)] = write_cityscapes_tree(tmp_path, "train", [np.full((4, 6), 7, np.uint8)])
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(label_path)
    dataset = CityscapesSegmentation(tmp_path, "train")
    with pytest.raises(ValueError, match=f"{stem}_gtFine_labelIds.png: label size 5x4 differs from image .* size 6x4"):
        dataset[0]


def test_cityscapes_undefined_label_value_is_named(tmp_path):
    [(stem, _, _)] = write_cityscapes_tree(tmp_path, "train", [np.array([[7, 40], [50, 8]], np.uint8)])
    with pytest.raises(ValueError, match=rf"{stem}_gtFine_labelIds.png: label values \[40, 50\] are not defined"):
        CityscapesSegmentation(tmp_path, "train")[0]


def test_colour_label_png_is_rejected(tmp_path):
    [(_, _, label_path)] = write_cityscapes_tree(tmp_path, "train", [np.full((2, 2), 7, np.uint8)])
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(label_path)
    with pytest.raises(ValueError, match="expected a single-channel label PNG .* got mode RGB"):
        CityscapesSegmentation(tmp_path, "train")[0]


def test_voc_palette_matches_the_official_colours():
    palette = voc.voc_palette()
    colour = lambda index: tuple(palette[3 * index : 3 * index + 3])  # noqa: E731
    assert colour(0) == (0, 0, 0)
    assert colour(1) == (128, 0, 0)  # aeroplane
    assert colour(2) == (0, 128, 0)  # bicycle
    assert colour(3) == (128, 128, 0)  # bird
    assert colour(15) == (192, 128, 128)  # person
    assert colour(20) == (0, 64, 128)  # tvmonitor
    assert colour(255) == (224, 224, 192)  # boundary / ignore


def test_voc_palette_png_round_trip(tmp_path):
    labels = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.uint8)
    save_palette_png(labels, tmp_path / "label.png")
    with Image.open(tmp_path / "label.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image), labels)
        assert image.getpalette()[3 * 15 : 3 * 16] == [192, 128, 128]


def write_voc_tree(root, splits):
    """Fabricate ``root/VOCdevkit/VOC2012`` with ``{split: {image_id: class-index map}}``."""
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, items in splits.items():
        for image_id, labels in items.items():
            Image.fromarray(rng.integers(0, 255, (*labels.shape, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg")
            save_palette_png(labels, base / "SegmentationClass" / f"{image_id}.png")
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in items))
    return base


def test_voc_loader_reads_palette_indices_and_keeps_255(tmp_path):
    labels = np.array([[0, 0, 15, 15], [255, 3, 3, 20]], dtype=np.uint8)
    write_voc_tree(tmp_path, {"train": {"2007_000032": labels, "2007_000039": labels[:, ::-1].copy()}, "val": {"2007_000033": labels}})
    dataset = VOCSegmentation(tmp_path, "train")
    assert dataset.ids == ["2007_000032", "2007_000039"]
    image, mask = dataset[0]
    assert image.shape == (3, 2, 4) and mask.dtype == torch.long
    assert mask.tolist() == labels.tolist()
    assert len(VOCSegmentation(tmp_path, "train", ids=["2007_000039"])) == 1


def test_voc_undefined_class_index_is_named(tmp_path):
    write_voc_tree(tmp_path, {"train": {"bad_000001": np.array([[0, 30]], dtype=np.uint8)}})
    with pytest.raises(ValueError, match=r"bad_000001.png: label values \[30\] are not defined"):
        VOCSegmentation(tmp_path, "train")[0]


def test_voc_missing_split_list_and_image_are_named(tmp_path):
    base = write_voc_tree(tmp_path, {"train": {"a_000001": np.zeros((2, 2), np.uint8)}})
    with pytest.raises(FileNotFoundError, match="missing split list .*Segmentation/val.txt"):
        VOCSegmentation(tmp_path, "val")
    (base / "JPEGImages" / "a_000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="missing file .*a_000001.jpg"):
        VOCSegmentation(tmp_path, "train")


def test_train_crop_pads_masks_with_ignore_never_zero(tmp_path):
    labels = np.zeros((6, 8), dtype=np.uint8)  # all background: any 0 outside the image would be wrong
    write_voc_tree(tmp_path, {"train": {"pad_000001": labels}})
    transforms = train_transforms(crop_size=(10, 12), base_size=6, scale_range=(1.0, 1.0))
    image, mask = VOCSegmentation(tmp_path, "train", transforms=transforms)[0]
    assert mask.shape == (10, 12) and image.shape == (3, 10, 12)
    assert (mask == 0).sum() == 6 * 8
    assert (mask == 255).sum() == 10 * 12 - 6 * 8
    padded_value = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    padded = (mask == 255).unsqueeze(0).expand_as(image)
    torch.testing.assert_close(image[padded].reshape(3, -1), padded_value[:, None].expand(3, int((mask == 255).sum())))


def test_train_transforms_move_image_and_mask_together(tmp_path):
    labels = np.zeros((16, 16), dtype=np.uint8)
    labels[:, :8] = 15  # left half person
    base = write_voc_tree(tmp_path, {"train": {"flip_000001": labels}})
    picture = np.zeros((16, 16, 3), np.uint8)
    picture[:, :8] = 255  # left half white
    Image.fromarray(picture).save(base / "JPEGImages" / "flip_000001.jpg", quality=100)
    dataset = VOCSegmentation(tmp_path, "train", transforms=train_transforms((12, 12), 16, (0.75, 1.5)))
    torch.manual_seed(0)
    for _ in range(10):
        image, mask = dataset[0]
        bright = image.mean(0) > 0
        inside = mask != 255
        # away from the jpeg-blurred edge, white pixels are exactly the person pixels
        agree = (bright == (mask == 15)) | ~inside
        assert agree.float().mean() > 0.9


def test_eval_transforms_keep_full_resolution(tmp_path):
    write_voc_tree(tmp_path, {"val": {"full_000001": np.zeros((7, 9), np.uint8)}})
    image, mask = VOCSegmentation(tmp_path, "val", transforms=eval_transforms())[0]
    assert image.shape == (3, 7, 9) and mask.shape == (7, 9)


def test_keep_decoded_reads_each_file_once_and_yields_the_same_samples(tmp_path):
    maps = [np.array([[7, 8], [26, 24]], dtype=np.uint8), np.array([[11, 23], [0, 7]], dtype=np.uint8)]
    paths = write_cityscapes_tree(tmp_path, "train", maps)
    plain = CityscapesSegmentation(tmp_path, "train", transforms=train_transforms((2, 2), 2, (1.0, 1.0)))
    cached = CityscapesSegmentation(tmp_path, "train", transforms=train_transforms((2, 2), 2, (1.0, 1.0))).keep_decoded()
    first = []
    for index in range(2):
        torch.manual_seed(index)
        expected = plain[index]
        torch.manual_seed(index)
        got = cached[index]
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        first.append(got)
    for _, image_path, label_path in paths:  # from now on only the memory copy can serve them
        image_path.unlink()
        label_path.unlink()
    for index in range(2):
        torch.manual_seed(index)
        again = cached[index]
        assert torch.equal(again[0], first[index][0]) and torch.equal(again[1], first[index][1])
    with pytest.raises(DataError, match=f"{paths[0][1]}: cannot read the image"):
        plain[0]
