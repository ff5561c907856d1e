"""The ``generate`` stage: write the embedded benchmark's tree, or check a real dataset where it is.

For a dataset with a ``generate:`` section the kind's generator writes the tree at the
layout's data folder; a real dataset stays at its ``root`` and the stage records where it is
and what it holds. Either way the stage writes the image counts of both splits, exports the
first evaluation images and their labels for the figures, and measures how thin each class is
in the evaluation split (:func:`class_geometry`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from . import IGNORE_INDEX
from .atomic import atomic_folder, write_json, write_table
from .data import LabelledImages, class_names, open_dataset
from .data.synthetic import GENERATORS
from .errors import ParamsError
from .layout import Layout
from .settings import DatasetSettings, Settings

log = logging.getLogger(__name__)
FEATURE_STRIDE = 4  # the resolution of the features PALS aggregates over (both models' decoders)


def generate(settings: Settings, spec: DatasetSettings, layout: Layout = Layout()) -> dict:
    """Write (or check) the dataset ``spec`` describes; returns the summary it records."""
    dataset, folder = spec.name, layout.data(spec.name)
    if spec.generate:
        if Path(spec.root) != folder:
            raise ParamsError(f"datasets.{dataset}.root must be {folder} for a generated dataset, got {spec.root}")
        log.info("generating %s into %s", dataset, folder)
        GENERATORS[spec.kind](folder, **spec.generate)
    splits = {split: len(open_dataset(spec, split)) for split in (spec.train_split, spec.eval_split)}
    summary = {"dataset": dataset, "kind": spec.kind, "root": spec.root, "images": splits}
    if not spec.generate:  # a real dataset stays where it is; the stage records where and what
        write_json(summary, folder / "source.json")
    evaluation = open_dataset(spec, spec.eval_split)
    samples = export_samples(evaluation, settings.evaluate.figure_images, dataset, layout)
    log.info("%s: measuring the classes' regions in %d evaluation labels", dataset, len(evaluation))
    write_table(class_geometry(evaluation, class_names(spec)), layout.class_geometry(dataset))
    write_json(summary | {"samples": samples}, layout.data_summary(dataset))
    log.info("%s: %s", dataset, json.dumps(splits))
    return summary


def export_samples(data: LabelledImages, count: int, dataset: str, layout: Layout) -> list[str]:
    """Copy the first ``count`` images (RGB PNG) and train-id labels of ``data`` for the figures; returns their ids."""
    ids = data.ids[:count]
    with atomic_folder(layout.samples(dataset)) as staging:
        for index, image_id in enumerate(ids):
            image_path, label_path = (staging / path.name for path in layout.sample(dataset, image_id))
            Image.fromarray(data.read_rgb(index)).save(image_path)
            Image.fromarray(data.load_label(index)).save(label_path)
    return ids


def region_widths(labels: np.ndarray, class_index: int) -> np.ndarray:
    """The width in pixels of each region of one class in one label map (8-connected pixels of the
    class): the diameter of its largest inscribed disc, ``2 d - 1`` for the largest distance ``d`` from
    one of its pixels to the nearest pixel of another label (or ignored); exact for odd-width strips."""
    mask = labels == class_index
    regions, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros(0)
    distance = ndimage.distance_transform_edt(mask)
    return 2 * np.asarray(ndimage.maximum(distance, regions, index=np.arange(1, count + 1))) - 1


def class_geometry(data: LabelledImages, names: list[str]) -> pd.DataFrame:
    """Per class over ``data``: its share of the labelled pixels, its number of regions and their
    median width in pixels and in stride-4 feature pixels (how thin the class is where PALS aggregates)."""
    pixels = np.zeros(len(names), dtype=np.int64)
    widths: list[list[np.ndarray]] = [[] for _ in names]
    for index in range(len(data)):
        labels = data.load_label(index)
        pixels += np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=len(names))[: len(names)]
        for class_index in np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[: len(names)]):
            widths[class_index].append(region_widths(labels, class_index))
    rows = []
    for class_index, name in enumerate(names):
        found = np.concatenate(widths[class_index]) if widths[class_index] else np.zeros(0)
        median = float(np.median(found)) if len(found) else np.nan
        rows.append({"class": name, "pixel_share": pixels[class_index] / max(pixels.sum(), 1), "regions": len(found),
                     "median_width": median, "median_width_features": median / FEATURE_STRIDE})
    return pd.DataFrame.from_records(rows).round(6)
