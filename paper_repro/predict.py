"""The ``predict`` command: a trained run on any images, and the official test-server submissions.

Inputs are image files, folders of them, glob patterns, or every image of a dataset's split
(``--split``, the real Cityscapes ``test`` split included, whose labels are private). Every image
goes through the network whole, at its own size, exactly as ``evaluate`` does
(:func:`paper_repro.inference.class_probabilities`, with ``evaluate.scales`` and ``evaluate.flip``,
in ``train.amp`` autocast on CUDA). Formats (``FORMATS``):

* ``maps``: per image ``<id>_labels.png`` (train ids), ``<id>_overlay.png`` (the image blended
  with the dataset kind's class colours) and, with ``confidence``, ``<id>_confidence.png`` (the
  top class's probability x 255);
* ``cityscapes``: per image ``<city>_<seq>_<frame>.png`` holding official *label ids* (train ids
  mapped back through the official table), all in one folder, as the Cityscapes server and
  ``evalPixelLevelSemanticLabeling`` read them;
* ``voc``: per image ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``, palette PNGs of
  class indices, the layout the PASCAL VOC server expects.

The output folder appears only once every image is written (an earlier folder of the same name
that ``predict`` wrote is replaced; any other is refused), with ``predict.json`` recording what
was predicted; ``archive`` also packs it (``<out>.zip``, or ``<out>.tar.gz`` for VOC). An image
that cannot be read is named in one line and skipped; the command then ends with an error.
"""

from __future__ import annotations

import glob
import logging
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from .atomic import atomic_folder, write_json
from .data import KINDS, class_colours
from .data.cityscapes import TRAIN_ID_TO_LABEL_ID
from .data.cityscapes import image_id as cityscapes_image_id
from .data.transforms import eval_transforms
from .data.voc import save_palette_png
from .errors import DataError, ParamsError
from .evaluate import load_model
from .inference import class_probabilities
from .runtime import autocast_dtype
from .runtime import device as compute_device
from .settings import DatasetSettings, Settings

log = logging.getLogger(__name__)
FORMATS = ("maps", "cityscapes", "voc")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SUMMARY = "predict.json"  # marks a folder predict wrote


def image_files(inputs: list[str]) -> list[tuple[str, Path]]:
    """``(image id, file)`` for files, folders (their images, sorted) and glob patterns, in the order given."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{item}: no such image, folder or matching file")
            found += matches
    return [(cityscapes_image_id(path) if path.name.endswith("_leftImg8bit.png") else path.stem, path) for path in found]


def read_image(path: Path) -> torch.Tensor:
    """``[3, H, W]`` uint8; a :class:`DataError` naming the file if it cannot be read as an image."""
    try:
        with Image.open(path) as picture:
            return TF.pil_to_tensor(picture.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot read the image ({error})") from error


def overlay(image: np.ndarray, labels: np.ndarray, kind: str) -> np.ndarray:
    """The image ``[H, W, 3]`` blended half and half with the class colours of ``labels``."""
    return ((image.astype(np.uint16) + class_colours(kind)[labels]) // 2).astype(np.uint8)


def write_prediction(staging: Path, image_id: str, image: torch.Tensor, probs: torch.Tensor, spec: DatasetSettings,
                     output: str, confidence: bool) -> None:
    """Write one image's prediction in ``output`` format under ``staging``."""
    top, labels = probs.max(0)
    labels = labels.byte().cpu().numpy()
    if output == "cityscapes":
        files = {staging / f"{image_id}.png": TRAIN_ID_TO_LABEL_ID[labels]}
    elif output == "voc":
        path = staging / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls" / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_palette_png(labels, path)
        return
    else:
        files = {staging / f"{image_id}_labels.png": labels,
                 staging / f"{image_id}_overlay.png": overlay(image.permute(1, 2, 0).numpy(), labels, spec.kind)}
        if confidence:
            files[staging / f"{image_id}_confidence.png"] = (255 * top).round().byte().cpu().numpy()
    for path, array in files.items():
        Image.fromarray(array).save(path)


def check_output_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMMARY).is_file())):
        raise ParamsError(f"--out {out} exists and was not written by predict (no {SUMMARY}); name a new folder")


def archive(out: Path, output: str) -> Path:
    """``<out>.zip`` (``<out>.tar.gz`` for VOC) of the folder's submission files (not ``predict.json``), written whole."""
    files = sorted(path for path in out.rglob("*") if path.is_file() and path.name != SUMMARY)
    target = out.with_name(out.name + (".tar.gz" if output == "voc" else ".zip"))
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False) as handle:
        staging = Path(handle.name)
    try:
        if output == "voc":
            with tarfile.open(staging, "w:gz") as packed:
                for path in files:
                    packed.add(path, arcname=str(path.relative_to(out)))
        else:
            with zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED) as packed:
                for path in files:
                    packed.write(path, arcname=str(path.relative_to(out)))
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target


@torch.no_grad()
def predict(settings: Settings, spec: DatasetSettings, model_path: Path, inputs: list[str], split: str | None, out: Path,
            output: str = "maps", confidence: bool = False, pack: bool = False) -> dict:
    """Predict every input image (or every image of ``split``) with the model in ``model_path``; returns the summary it writes."""
    if output == "voc" and spec.kind != "voc" or output == "cityscapes" and spec.kind != "cityscapes":
        raise ParamsError(f"--format {output} needs a {output} dataset; datasets.{spec.name}.kind is {spec.kind}")
    check_output_folder(out)
    images = KINDS[spec.kind].images(spec.root, split) if split else image_files(inputs)
    if not images:
        raise DataError(f"no images to predict in {split or ' '.join(inputs)}")
    device = compute_device()
    model = load_model(model_path, settings.model, spec.num_classes, device)
    dtype, scales, flip = autocast_dtype(settings.train.amp, device), settings.evaluate.scales, settings.evaluate.flip
    normalise, skipped, written = eval_transforms(), [], 0
    with atomic_folder(out) as staging:
        for image_id, path in tqdm(images, desc=f"predict {model_path}", unit="image"):
            try:
                image = read_image(path)
            except DataError as error:
                log.error("%s; skipped", error)
                skipped.append(str(path))
                continue
            batch = normalise(tv_tensors.Image(image)).as_subclass(torch.Tensor)[None].to(device)
            probs = class_probabilities(model, batch, scales, flip, dtype)[0]
            write_prediction(staging, image_id, image, probs, spec, output, confidence)
            written += 1
        summary = {"model": str(model_path), "dataset": spec.name, "format": output, "split": split, "images": written,
                   "skipped": skipped, "scales": list(scales), "flip": flip}
        write_json(summary, staging / SUMMARY)
    if pack:
        log.info("packed %s", archive(out, output))
    log.info("%d images predicted into %s", written, out)
    if skipped:
        raise DataError(f"{len(skipped)} of {len(images)} images could not be read and were skipped: {', '.join(skipped)}")
    return summary
