"""Nested label-percent subsets and their manifests."""

from fractions import Fraction

import pytest

from paper_repro.subsets import nested_subsets, read_manifest, subset_size, write_manifest

PERCENTS = (10, 30, 50, 100)
IDS = [f"img_{i:04d}" for i in range(97)]


@pytest.mark.parametrize("total", [1, 2, 7, 97, 2975])
def test_sizes_are_within_one_of_the_percent_and_at_least_one(total):
    ids = [f"x{i}" for i in range(total)]
    for percent, subset in nested_subsets(ids, PERCENTS, seed=0).items():
        assert abs(len(subset) - percent * total / 100) <= 1
        assert len(subset) >= 1 and len(set(subset)) == len(subset) and set(subset) <= set(ids)


def test_sizes_round_half_up_exactly():
    # 29% of 50 is 14.5 exactly, which floating point computes as 14.499999999999998
    assert 0.29 * 50 + 0.5 < 15
    assert subset_size(29, 50) == 15
    for percent in range(1, 101):  # against exact rational arithmetic
        for total in (1, 7, 50, 80, 200, 1464, 2975, 10582):
            exact = Fraction(percent * total, 100) + Fraction(1, 2)
            assert subset_size(percent, total) == max(1, exact.numerator // exact.denominator), (percent, total)


def test_smaller_percents_lie_inside_larger_ones():
    for seed in range(5):
        subsets = nested_subsets(IDS, PERCENTS, seed)
        for small, large in zip(PERCENTS, PERCENTS[1:]):
            assert set(subsets[small]) < set(subsets[large])
        assert subsets[100] == sorted(IDS)


def test_deterministic_per_seed_and_independent_of_input_order():
    assert nested_subsets(IDS, PERCENTS, 4) == nested_subsets(list(reversed(IDS)), PERCENTS, 4)


def test_different_seeds_draw_different_subsets():
    draws = {tuple(nested_subsets(IDS, [10], seed)[10]) for seed in range(5)}
    assert len(draws) == 5


@pytest.mark.parametrize("percent", [0, -10, 150, 0.5, "50", True])
def test_percent_outside_integer_percents_is_rejected(percent):
    with pytest.raises(ValueError, match=r"integer percents in \(0, 100\]"):
        nested_subsets(IDS, [50, percent], 0)


def test_duplicate_or_empty_ids_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        nested_subsets(["a", "a", "b"], [50], 0)
    with pytest.raises(ValueError, match="empty"):
        nested_subsets([], [50], 0)


def test_manifest_round_trip(tmp_path):
    path = tmp_path / "subsets" / "train_10.txt"
    write_manifest(["b", "a"], path)
    assert path.read_text() == "b\na\n"
    assert read_manifest(path) == ["b", "a"]
    assert [p.name for p in path.parent.iterdir()] == ["train_10.txt"]  # no temporary file left
    with pytest.raises(FileNotFoundError, match="missing subset manifest .*other.txt"):
        read_manifest(tmp_path / "other.txt")
