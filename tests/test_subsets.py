"""Nested label-fraction subsets and their manifests."""

import pytest

from paper_repro.data.subsets import nested_subsets, read_manifest, write_manifest

FRACTIONS = (0.1, 0.3, 0.5, 1.0)
IDS = [f"img_{i:04d}" for i in range(97)]


@pytest.mark.parametrize("total", [1, 2, 7, 97, 2975])
def test_sizes_are_within_one_of_the_fraction_and_at_least_one(total):
    ids = [f"x{i}" for i in range(total)]
    for fraction, subset in nested_subsets(ids, FRACTIONS, seed=0).items():
        assert abs(len(subset) - fraction * total) <= 1
        assert len(subset) >= 1 and len(set(subset)) == len(subset) and set(subset) <= set(ids)


def test_smaller_fractions_lie_inside_larger_ones():
    for seed in range(5):
        subsets = nested_subsets(IDS, FRACTIONS, seed)
        for small, large in zip(FRACTIONS, FRACTIONS[1:]):
            assert set(subsets[small]) < set(subsets[large])
        assert subsets[1.0] == sorted(IDS)


def test_deterministic_per_seed_and_independent_of_input_order():
    assert nested_subsets(IDS, FRACTIONS, 4) == nested_subsets(list(reversed(IDS)), FRACTIONS, 4)


def test_different_seeds_draw_different_subsets():
    draws = {tuple(nested_subsets(IDS, [0.1], seed)[0.1]) for seed in range(5)}
    assert len(draws) == 5


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, "0.5", True])
def test_fraction_outside_unit_interval_is_rejected(fraction):
    with pytest.raises(ValueError, match=r"label fraction must be in \(0, 1\]"):
        nested_subsets(IDS, [0.5, fraction], 0)


def test_duplicate_or_empty_ids_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        nested_subsets(["a", "a", "b"], [0.5], 0)
    with pytest.raises(ValueError, match="empty"):
        nested_subsets([], [0.5], 0)


def test_manifest_round_trip(tmp_path):
    path = tmp_path / "subsets" / "train_10.txt"
    write_manifest(["b", "a"], path)
    assert path.read_text() == "b\na\n"
    assert read_manifest(path) == ["b", "a"]
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="missing subset manifest .*other.txt"):
        read_manifest(tmp_path / "other.txt")
