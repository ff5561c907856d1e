"""Seeded, nested label-fraction subsets written as plain-text manifests (DESIGN.md section 3)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_file

if TYPE_CHECKING:  # pandas is imported where it is used: training reads manifests without it
    import pandas as pd


def subset_size(fraction: float, total: int) -> int:
    """``fraction * total`` rounded half up, at least 1."""
    return max(1, math.floor(fraction * total + 0.5))


def nested_subsets(ids: Sequence[str], fractions: Iterable[float], seed: int) -> dict[float, list[str]]:
    """``{fraction: ids}`` where every smaller fraction's subset lies inside every larger one.

    One seeded permutation of the (sorted, so input order does not matter) ids is drawn and
    each fraction takes its first ``subset_size(fraction, len(ids))`` entries, which makes the
    subsets nested by construction; each list is returned sorted.
    """
    fractions = list(fractions)
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"label fraction must be in (0, 1], got {fraction!r}")
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        raise ValueError(f"ids must be unique; {len(ids) - len(unique)} duplicates given")
    if not unique:
        raise ValueError("ids is empty: there is nothing to subsample")
    order = unique.copy()
    random.Random(seed).shuffle(order)
    return {fraction: sorted(order[: subset_size(fraction, len(order))]) for fraction in fractions}


def write_manifest(ids: Iterable[str], path: str | Path) -> None:
    """Write one id per line, atomically (temporary file, then rename)."""
    with atomic_file(path) as temporary:
        temporary.write_text("".join(f"{sample_id}\n" for sample_id in ids))


def read_manifest(path: str | Path) -> list[str]:
    """The ids of a manifest written by :func:`write_manifest`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing subset manifest {path}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"subset manifest {path} lists no ids")
    return ids


def class_pixel_counts(dataset, num_classes: int) -> np.ndarray:
    """``[len(dataset), num_classes]`` labelled-pixel counts per image (255 excluded)."""
    counts = np.zeros((len(dataset), num_classes), dtype=np.int64)
    for index in range(len(dataset)):
        labels = dataset.load_label(index)
        counts[index] = np.bincount(labels[labels != 255].ravel(), minlength=num_classes)[:num_classes]
    return counts


def subset_coverage(ids: Sequence[str], counts: np.ndarray, subsets: dict[int, list[str]], class_names: Sequence[str], seed: int) -> pd.DataFrame:
    """Per subset and class: images, labelled pixels and the class's share of the subset's pixels."""
    row_of = {sample_id: row for row, sample_id in enumerate(ids)}
    records = []
    for percent, subset in subsets.items():
        pixels = counts[[row_of[i] for i in subset]].sum(0)
        for name, count in zip(class_names, pixels):
            records.append({"seed": seed, "percent": percent, "images": len(subset), "class": name,
                            "pixels": int(count), "share": round(float(count / max(pixels.sum(), 1)), 6)})
    import pandas as pd

    return pd.DataFrame.from_records(records)
