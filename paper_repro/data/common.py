"""A segmentation dataset over (image file, label file) pairs with strict label checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError

UNDEFINED = -1  # marks label values a dataset does not define in a lookup table


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn a failure to decode ``path`` (truncated, not an image, unreadable) into a :class:`DataError` naming it."""
    try:
        yield
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for broken files
        raise DataError(f"{path}: cannot read the {what} ({error})") from error


def label_lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry table from stored label value to train id, ``UNDEFINED`` where none is given."""
    table = np.full(256, UNDEFINED, dtype=np.int16)
    for stored, train_id in mapping.items():
        table[stored] = train_id
    return table


class LabelledImages(Dataset):
    """Yields ``(image float [3, H, W], mask long [H, W])`` from listed image and label files.

    The label file is read as a single-channel PNG (grey or palette) and mapped through
    ``lookup`` to train ids (``IGNORE_INDEX`` = no class). A label whose size differs from its image, a label
    value the dataset does not define and a missing file are errors that name the file.
    ``transforms`` is called as ``transforms(tv_tensors.Image, tv_tensors.Mask)``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, str | Path, str | Path]],
        lookup: np.ndarray,
        ids: Sequence[str] | None = None,
        transforms: Callable | None = None,
        description: str = "dataset",
    ) -> None:
        by_id = {sample_id: (Path(image), Path(label)) for sample_id, image, label in samples}
        if not by_id:
            raise DataError(f"{description}: the split holds no images")
        if ids is None:
            ids = sorted(by_id)
        else:
            ids = list(ids)
            unknown = [sample_id for sample_id in ids if sample_id not in by_id]
            if unknown:
                raise DataError(f"{description}: {len(unknown)} requested ids are not in the split, e.g. {unknown[:3]}")
        for sample_id in ids:
            for path in by_id[sample_id]:
                if not path.is_file():
                    raise FileNotFoundError(f"{description}: missing file {path} (image id {sample_id})")
        self.ids = ids
        self.files = [by_id[sample_id] for sample_id in ids]
        self.lookup = lookup
        self.transforms = transforms
        self.description = description
        self._decoded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # see keep_decoded

    def __len__(self) -> int:
        return len(self.ids)

    def load_label(self, index: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Train ids ``[H, W]`` (uint8, ``IGNORE_INDEX`` = no class) of sample ``index``, checked against its image.

        ``image_size`` (width, height) spares reopening an image the caller has already read.
        """
        image_path, label_path = self.files[index]
        with reading(label_path, "label"), Image.open(label_path) as label_image:
            if label_image.mode not in ("L", "P"):
                raise DataError(f"{label_path}: expected a single-channel label PNG (mode L or P), got mode {label_image.mode}")
            stored = np.asarray(label_image)
        if image_size is None:
            with reading(image_path, "image"), Image.open(image_path) as image:
                image_size = image.size
        if image_size != (stored.shape[1], stored.shape[0]):
            raise DataError(
                f"{label_path}: label size {stored.shape[1]}x{stored.shape[0]} differs from "
                f"image {image_path} size {image_size[0]}x{image_size[1]}"
            )
        train_ids = self.lookup[stored]
        if (train_ids == UNDEFINED).any():
            bad = sorted(np.unique(stored[train_ids == UNDEFINED]).tolist())
            raise DataError(f"{label_path}: label values {bad} are not defined for {self.description}")
        return train_ids.astype(np.uint8)

    def read_rgb(self, index: int) -> np.ndarray:
        """The stored image of sample ``index`` as RGB ``[H, W, 3]`` uint8, untransformed."""
        with reading(self.files[index][0], "image"), Image.open(self.files[index][0]) as picture:
            return np.asarray(picture.convert("RGB"))

    def keep_decoded(self) -> LabelledImages:
        """Keep every decoded image and label in memory after its first read (for a small dataset
        read many times: the embedded benchmark; not for full Cityscapes, which would need ~18 GB)."""
        self._decoded = {}
        return self

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._decoded is not None and index in self._decoded:
            return self._decoded[index]
        with reading(self.files[index][0], "image"), Image.open(self.files[index][0]) as picture:
            image = TF.pil_to_tensor(picture.convert("RGB"))
            size = picture.size
        decoded = image, torch.from_numpy(self.load_label(index, size))
        if self._decoded is not None:
            self._decoded[index] = decoded
        return decoded

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._decode(index)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)  # transforms never write in place
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        if not image.is_floating_point():
            image = TF.to_dtype(image, torch.float32, scale=True)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()
