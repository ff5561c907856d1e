"""Atomic writes: every output is built under a temporary name and renamed into place when complete,
so an interrupted or failed stage never leaves a half-written file or folder behind.

Temporary names are unique (two writers of one target never collide) and lie beside the
target (the rename stays on one filesystem); they end in ``.tmp``, which git and DVC ignore. The data is flushed to disk before the rename and the folder after it, so
a power cut leaves the old file or the new one. A write that fails for a reason of the machine
(no space left, permission denied, a read-only disk) raises :class:`WriteError`, whose message
names the path. Every stage writes its files through the writers here.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InUse, WriteError


@contextmanager
def exclusive_lock(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (released when the process ends, however it ends). If
    another process holds it, fail at once with :class:`InUse`: ``busy`` formatted with ``holder``
    (the process and machine it wrote into the file) and ``lock`` (the path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise InUse(busy.format(holder=handle.read().strip() or "another process", lock=path)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {platform.node()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# What the machine, not the code, makes a write fail with.
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


@contextmanager
def _naming_failures(path: Path, machine_only: bool = False) -> Iterator[None]:
    """Turn an ``OSError`` (with ``machine_only``, one the machine causes) into a :class:`WriteError` naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        if machine_only and error.errno not in MACHINE_ERRNOS:
            raise
        raise WriteError(error.errno, f"cannot write {path}: {error.strerror or error}") from error


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``path`` to fill; it replaces ``path`` (and all its
    old content) on success and is removed on failure. Staging folders that a killed process left
    beside ``path`` are removed first."""
    path = Path(path)
    staging = None
    try:
        with _naming_failures(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            for leftover in path.parent.glob(f"{path.name}.*.tmp"):
                pid = leftover.name.removeprefix(f"{path.name}.").removesuffix(".tmp")
                if leftover.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
                    shutil.rmtree(leftover, ignore_errors=True)
            staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
        with _naming_failures(path, machine_only=True):  # the caller's writes into the staging folder
            yield staging
        with _naming_failures(path):
            for folder, _, files in os.walk(staging):
                for name in files:
                    _fsync(Path(folder) / name)
                _fsync(Path(folder))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(staging, path)
            _fsync(path.parent)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to a unique temporary sibling of ``path``, flush it to disk and rename it to ``path``."""
    path = Path(path)
    temporary = None
    try:
        with _naming_failures(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
            temporary = Path(name)
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            _fsync(path.parent)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def write_text(text: str, path: str | Path) -> None:
    write_bytes(text.encode(), path)


def write_json(payload: Any, path: str | Path) -> None:
    write_text(json.dumps(payload, indent=2) + "\n", path)


def write_table(table, path: str | Path) -> None:
    """A pandas DataFrame as CSV, without its index."""
    write_text(table.to_csv(index=False), path)


def write_rows(rows: Iterable[dict], fields: Iterable[str], path: str | Path) -> None:
    """Dicts as CSV rows under a header of ``fields``."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    write_text(buffer.getvalue(), path)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save``, serialised in memory first so that a failing disk raises an ``OSError``
    (torch's own file writer reports it as an unrelated ``RuntimeError``)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(buffer.getbuffer(), path)


def save_npz(path: str | Path, **arrays: Any) -> None:
    """``numpy.savez_compressed``."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(buffer.getbuffer(), path)


def save_figure(figure, path: str | Path) -> None:
    """A matplotlib figure as PNG (120 dpi, tight bounding box)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_bytes(buffer.getvalue(), path)
