"""Splitting images into train/val/test (pure functions): LIVECell's own split, or a seeded
split stratified by cell line, of images or of whole wells (a time-lapse's frames of one
position are near-duplicates: with one in train and the next in test, the test measures
memory)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from livecellseg.errors import DataError, LivecellsegError


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


def split_counts(n: int, fractions: dict[str, float], unit: str = "images") -> dict[str, int]:
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
            f"split: {n} {unit} are too few for fractions {fractions} (a split would be empty); "
            f"use at least {needed} {unit}: raise subset.n_images or sample.n_images"
            + (" or use split.by: image" if unit == "wells" else "")
        )
    for k, f in fractions.items():  # a split asked for gets at least one image
        if f > 0 and counts[k] == 0:
            counts[max(counts, key=counts.get)] -= 1
            counts[k] = 1
    return counts


def assign_splits(
    strata: Sequence[Hashable], fractions: dict[str, float], seed: int, unit: str = "images"
) -> dict[str, list[int]]:
    """Indices of each split: stratified by `strata`, seeded, disjoint, covering every item.

    The smaller splits (val, test) are taken first from the stratified order, so each of
    them gets the cell lines in proportion even when it holds only a few images.
    """
    counts = split_counts(len(strata), fractions, unit)
    order = stratified_order(strata, np.random.default_rng(seed))
    out: dict[str, list[int]] = {}
    start = 0
    for name in sorted(counts, key=lambda k: counts[k]):
        out[name] = sorted(order[start : start + counts[name]])
        start += counts[name]
    return {k: out[k] for k in fractions}


def assign_groups(
    groups: Sequence[Hashable],
    strata: Sequence[Hashable],
    fractions: dict[str, float],
    seed: int,
) -> dict[str, list[int]]:
    """`assign_splits` of whole groups (a group's items share a split; a group's stratum is
    its first item's): the fractions count groups, so the items per split follow the
    groups' sizes. Indices of the items of each split."""
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    keys = list(members)
    parts = assign_splits([strata[members[g][0]] for g in keys], fractions, seed, "wells")
    return {k: sorted(i for j in idx for i in members[keys[j]]) for k, idx in parts.items()}


def well_of(file_name: str) -> str:
    """The group of `split.by: well`: line and well of a LIVECell name ("A172 B2"); a name
    that is not LIVECell's is its own group."""
    from livecellseg.livecell import parse_name

    try:
        point = parse_name(file_name)
    except LivecellsegError:
        return file_name
    return f"{point.line} {point.well}"


def official_splits(
    images: Sequence[dict], source: str = "annotations.json"
) -> dict[str, list[int]]:
    """Indices of each split as LIVECell made them: the split of the file an image came
    from (`source_split`, set by subset). Every split must hold an image."""
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, img in enumerate(images):
        split = img.get("source_split")
        if split not in out:
            raise DataError(
                f"{source}: image {img.get('file_name')} has no LIVECell split (its annotation "
                "file is not livecell_coco_{train,val,test}.json); use split.mode: stratified"
            )
        out[split].append(i)
    empty = [k for k, v in out.items() if not v]
    if empty:
        raise DataError(
            f"{source}: no image of LIVECell's {'/'.join(empty)} split in the subset; add its "
            "file to subset.annotation_files, raise subset.n_images, or use split.mode: "
            "stratified"
        )
    return out


def check_unique_names(images: Sequence[dict], source: str) -> None:
    """One entry per file name: a picture listed twice would reach two splits (and its
    tiles would overwrite each other)."""
    seen: set[str] = set()
    for img in images:
        if img["file_name"] in seen:
            raise DataError(
                f"{source}: {img['file_name']} is listed twice; make it with the subset stage "
                "(it keeps one entry per file name) or remove the second entry"
            )
        seen.add(img["file_name"])
