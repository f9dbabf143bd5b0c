from collections import Counter

import numpy as np
import pytest

from livecellseg.errors import DataError
from livecellseg.split import assign_splits, split_counts, stratified_order

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _strata(sizes):
    return [line for line, n in sizes.items() for _ in range(n)]


def test_split_counts():
    assert split_counts(100, FRACTIONS) == {"train": 70, "val": 15, "test": 15}
    assert sum(split_counts(41, FRACTIONS).values()) == 41
    with pytest.raises(DataError, match="too few"):
        split_counts(2, FRACTIONS)
    assert split_counts(3, FRACTIONS) == {"train": 1, "val": 1, "test": 1}


def test_splits_are_disjoint_complete_and_stratified():
    sizes = {"A172": 40, "BV2": 20, "MCF7": 20, "SHSY5Y": 20}
    strata = _strata(sizes)
    parts = assign_splits(strata, FRACTIONS, seed=3)
    all_idx = sorted(i for p in parts.values() for i in p)
    assert all_idx == list(range(len(strata)))
    assert {k: len(v) for k, v in parts.items()} == {"train": 70, "val": 15, "test": 15}
    for name, frac in FRACTIONS.items():
        per_line = Counter(strata[i] for i in parts[name])
        for line, n in sizes.items():
            assert abs(per_line[line] - frac * n) <= 1, (name, line, per_line)


def test_split_is_seeded():
    strata = _strata({"A": 13, "B": 7, "C": 9})
    assert assign_splits(strata, FRACTIONS, 1) == assign_splits(strata, FRACTIONS, 1)
    assert assign_splits(strata, FRACTIONS, 1) != assign_splits(strata, FRACTIONS, 2)


def test_every_prefix_is_proportional():
    strata = _strata({"A": 30, "B": 10})
    order = stratified_order(strata, np.random.default_rng(0))
    for k in (4, 8, 20):
        n_a = sum(strata[i] == "A" for i in order[:k])
        assert abs(n_a - 0.75 * k) <= 1
