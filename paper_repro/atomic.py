"""Atomic writes: every output is built under a temporary name and renamed into place when complete,
so an interrupted or failed stage never leaves a half-written file or folder behind.

Every stage writes its files through the writers here (text, JSON, CSV tables and rows, torch
checkpoints, NumPy archives, figures).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (unique name, same suffix) to write; it replaces ``path``
    on success and is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``path`` to fill; it replaces ``path`` (and all its
    old content) on success and is removed on failure."""
    path = Path(path)
    staging = path.with_name(path.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(text: str, path: str | Path) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(text)


def write_json(payload: Any, path: str | Path) -> None:
    write_text(json.dumps(payload, indent=2) + "\n", path)


def write_table(table, path: str | Path) -> None:
    """A pandas DataFrame as CSV, without its index."""
    with atomic_file(path) as temporary:
        table.to_csv(temporary, index=False)


def write_rows(rows: Iterable[dict], fields: Iterable[str], path: str | Path) -> None:
    """Dicts as CSV rows under a header of ``fields``."""
    with atomic_file(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def save_torch(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_file(path) as temporary:
        torch.save(obj, temporary)


def save_npz(path: str | Path, **arrays: Any) -> None:
    """``numpy.savez_compressed``."""
    import numpy as np

    with atomic_file(path) as temporary:
        np.savez_compressed(temporary, **arrays)


def save_figure(figure, path: str | Path) -> None:
    """A matplotlib figure as PNG (120 dpi, tight bounding box)."""
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=120, bbox_inches="tight")
