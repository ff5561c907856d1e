"""How thin each class is: region widths and the class table by hand."""

import numpy as np
import pytest

from paper_repro.generate import FEATURE_STRIDE, class_geometry, region_widths


def strip_and_line() -> np.ndarray:
    labels = np.zeros((7, 9), dtype=np.uint8)
    labels[1:4, :] = 1  # a 3-pixel-wide strip across the image
    labels[5:7, 4] = 1  # a 1-pixel-wide line, not touching the strip
    labels[0, 0] = 255  # ignored: another label for the widths, no pixel for the shares
    return labels


def test_region_widths_are_the_diameters_of_the_largest_inscribed_discs():
    assert sorted(region_widths(strip_and_line(), 1).tolist()) == [1.0, 3.0]
    assert region_widths(strip_and_line(), 2).tolist() == []
    square = np.zeros((9, 9), dtype=np.uint8)
    square[2:7, 2:7] = 3  # 5 x 5
    assert region_widths(square, 3).tolist() == [5.0]


class Labels:
    def __init__(self, *labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def load_label(self, index):
        return self.labels[index]


def test_class_geometry_by_hand():
    square = np.zeros((7, 9), dtype=np.uint8)
    square[1:6, 2:7] = 2
    table = class_geometry(Labels(strip_and_line(), square), ["background", "strip", "square"]).set_index("class")
    # pixels: background 7*9 - 27 - 2 - 1 (ignored) = 33 and 63 - 25 = 38; strip 29; square 25; 125 in all
    assert table["pixel_share"].tolist() == pytest.approx([71 / 125, 29 / 125, 25 / 125], abs=1e-6)
    assert table.loc["strip", "regions"] == 2 and table.loc["strip", "median_width"] == 2.0  # widths 1 and 3
    assert table.loc["square", "median_width"] == 5.0
    assert table.loc["square", "median_width_features"] == 5.0 / FEATURE_STRIDE
