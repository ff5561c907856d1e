"""The ``subsets`` stage: seeded, nested label-percent subsets as plain-text manifests, and the
class coverage of each (docs/method.md, section 4)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import IGNORE_INDEX
from .atomic import write_table, write_text
from .errors import DataError
from .layout import Layout
from .settings import DatasetSettings, Settings

if TYPE_CHECKING:  # pandas is imported where it is used: training reads manifests without it
    import pandas as pd

log = logging.getLogger(__name__)


def subset_size(percent: int, total: int) -> int:
    """``percent`` % of ``total`` rounded half up in exact integer arithmetic, at least 1."""
    return max(1, (2 * percent * total + 100) // 200)


def nested_subsets(ids: Sequence[str], percents: Iterable[int], seed: int) -> dict[int, list[str]]:
    """``{percent: ids}`` where every smaller percent's subset lies inside every larger one.

    One seeded permutation of the (sorted, so input order does not matter) ids is drawn and
    each percent takes its first ``subset_size(percent, len(ids))`` entries, which makes the
    subsets nested by construction; each list is returned sorted.
    """
    percents = list(percents)
    for percent in percents:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 < percent <= 100:
            raise ValueError(f"label percents are integer percents in (0, 100], got {percent!r}")
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        raise ValueError(f"ids must be unique; {len(ids) - len(unique)} duplicates given")
    if not unique:
        raise ValueError("ids is empty: there is nothing to subsample")
    order = unique.copy()
    random.Random(seed).shuffle(order)
    return {percent: sorted(order[: subset_size(percent, len(order))]) for percent in percents}


def write_manifest(ids: Iterable[str], path: str | Path) -> None:
    """Write one id per line."""
    write_text("".join(f"{sample_id}\n" for sample_id in ids), path)


def read_manifest(path: str | Path) -> list[str]:
    """The ids of a manifest written by :func:`write_manifest`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing subset manifest {path}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"subset manifest {path} lists no ids")
    return ids


def class_pixel_counts(dataset, num_classes: int) -> np.ndarray:
    """``[len(dataset), num_classes]`` labelled-pixel counts per image (ignored pixels excluded)."""
    counts = np.zeros((len(dataset), num_classes), dtype=np.int64)
    for index in range(len(dataset)):
        labels = dataset.load_label(index)
        counts[index] = np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
    return counts


def subset_coverage(ids: Sequence[str], counts: np.ndarray, subsets: dict[int, list[str]], class_names: Sequence[str], seed: int) -> pd.DataFrame:
    """Per subset and class: images, labelled pixels and the class's share of the subset's pixels."""
    import pandas as pd

    row_of = {sample_id: row for row, sample_id in enumerate(ids)}
    records = []
    for percent, subset in subsets.items():
        pixels = counts[[row_of[i] for i in subset]].sum(0)
        for name, count in zip(class_names, pixels):
            records.append({"seed": seed, "percent": percent, "images": len(subset), "class": name,
                            "pixels": int(count), "share": round(float(count / max(pixels.sum(), 1)), 6)})
    return pd.DataFrame.from_records(records)


def make_subsets(settings: Settings, spec: DatasetSettings, layout: Layout = Layout()) -> None:
    """Write the manifests of every seed and label percent of the study, and their class coverage."""
    import pandas as pd

    from .data import class_names, open_dataset

    data = open_dataset(spec, spec.train_split)
    log.info("%s: reading %d training labels for class coverage", spec.name, len(data))
    counts = class_pixel_counts(data, spec.num_classes)
    coverage = []
    for seed in settings.study.seeds:
        subsets = nested_subsets(data.ids, settings.study.percents, seed)
        for percent, ids in subsets.items():
            write_manifest(ids, layout.manifest(spec.name, seed, percent))
        coverage.append(subset_coverage(data.ids, counts, subsets, class_names(spec), seed))
    write_table(pd.concat(coverage), layout.coverage(spec.name))
