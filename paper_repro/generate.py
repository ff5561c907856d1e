"""The ``generate`` stage: write the embedded benchmark's tree, or check a real dataset where it is.

For a dataset with a ``generate:`` section the kind's generator writes the tree at the
layout's data folder; a real dataset stays at its ``root`` and the stage records where it is
and what it holds. Either way the stage writes the image counts of both splits and exports
the first evaluation images and their labels for the figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image

from .atomic import atomic_folder, write_json
from .data import LabelledImages, open_dataset
from .data.synthetic import GENERATORS
from .errors import ParamsError
from .layout import Layout
from .settings import DatasetSettings, Settings

log = logging.getLogger(__name__)


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
    samples = export_samples(open_dataset(spec, spec.eval_split), settings.evaluate.figure_images, dataset, layout)
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
