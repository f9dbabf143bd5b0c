"""Stratified, seeded choice and splitting of images by cell line (pure functions)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from livecellseg.errors import DataError


def stratified_order(strata: Sequence[Hashable], rng: np.random.Generator) -> list[int]:
    """Indices ordered so that every prefix holds each stratum in proportion to its size.

    Within each stratum the items are shuffled; item k of a stratum of n gets the key
    (k + 0.5) / n (systematic stratified sampling), ties broken at random.
    """
    groups: dict[Hashable, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s, []).append(i)
    keyed = []
    for _, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        shuffled = rng.permutation(members)
        n = len(shuffled)
        keyed += [((k + 0.5) / n, rng.random(), int(i)) for k, i in enumerate(shuffled)]
    return [i for *_, i in sorted(keyed)]


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Images per split, by largest remainder; every split with a fraction > 0 gets one."""
    raw = {k: n * f for k, f in fractions.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    needed = sum(f > 0 for f in fractions.values())
    if n < needed:
        raise DataError(
            f"split: {n} images are too few for fractions {fractions} (a split would be empty); "
            f"use at least {needed} images: raise subset.n_images or sample.n_images"
        )
    for k, f in fractions.items():  # a split asked for gets at least one image
        if f > 0 and counts[k] == 0:
            counts[max(counts, key=counts.get)] -= 1
            counts[k] = 1
    return counts


def assign_splits(
    strata: Sequence[Hashable], fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """Indices of each split: stratified by `strata`, seeded, disjoint, covering every item.

    The smaller splits (val, test) are taken first from the stratified order, so each of
    them gets the cell lines in proportion even when it holds only a few images.
    """
    counts = split_counts(len(strata), fractions)
    order = stratified_order(strata, np.random.default_rng(seed))
    out: dict[str, list[int]] = {}
    start = 0
    for name in sorted(counts, key=lambda k: counts[k]):
        out[name] = sorted(order[start : start + counts[name]])
        start += counts[name]
    return {k: out[k] for k in fractions}
