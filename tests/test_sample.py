import dataclasses
import json
import re

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from scipy import ndimage

from livecellseg.livecell import index_images, parse_name
from livecellseg.sample import (
    LOOKS,
    MIN_CELL_PIXELS,
    PROCESS_BASE,
    Cell,
    Series,
    claim_pixels,
    dead_clumps,
    draw_cells,
    generate,
    grow_cells,
    grow_neurites,
    layout,
)
from tests.helpers import make_livecell_root

NAME = re.compile(
    r"^(A172|BT474|BV2|Huh7|MCF7|SHSY5Y|SkBr3|SKOV3)_Phase_[A-H]\d+_\d_\d\dd\d\dh\d\dm_\d\.tif$"
)


def test_livecell_format(tmp_path):
    # small pictures: the layout, names, JSON and TIFF format do not depend on the size (the
    # slow tests below render LIVECell's 704x520)
    root = make_livecell_root(tmp_path, n_images=6, empty=1, width=176, height=130)
    paths = index_images(root)
    assert len(paths) == 6 and all(NAME.match(n) for n in paths)
    for p in paths.values():
        with tifffile.TiffFile(p) as tf:
            page = tf.pages[0]
            assert page.compression == tifffile.COMPRESSION.LZW
            img = page.asarray()
        assert img.shape == (130, 176) and img.dtype == np.uint8
        assert 110 < img.mean() < 145  # LIVECell's mean grey is ~128
    doc = json.loads((root / "annotations" / "livecell_coco_train.json").read_text())
    assert set(doc) >= {"images", "annotations", "categories"}
    assert doc["categories"] == [{"supercategory": "cell", "id": 1, "name": "cell"}]
    assert isinstance(doc["annotations"], list)  # as LIVECell's bucket serves them
    img = doc["images"][0]
    assert set(img) == {"id", "file_name", "width", "height", "original_filename", "url"}
    assert img["url"].startswith("https://") and img["url"].endswith(img["file_name"])
    from pycocotools.coco import COCO  # loads with plain pycocotools, as LIVECell's do

    coco = COCO(str(root / "annotations" / "livecell_coco_train.json"))
    assert len(coco.getAnnIds()) == len(doc["annotations"])
    names = [i["file_name"] for i in doc["images"]]
    assert len(names) == len(set(names)) + 1  # one picture listed twice in train
    ann = doc["annotations"][0]
    assert set(ann) == {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
    assert len(ann["segmentation"][0]) >= 6 and ann["iscrowd"] == 0


def test_deterministic_and_varied():
    def run(seed, workers=1, hours=(0,)):
        return [
            (n, img.tobytes(), [p.tobytes() for p in polys])
            for n, _, img, polys in generate(
                n_images=3,
                empty_images=0,
                cell_lines=("BV2", "SHSY5Y"),
                width=200,
                height=150,
                seed=seed,
                workers=workers,
                hours=hours,
            )
        ]

    assert run(5) == run(5) == run(5, workers=2)  # parallel rendering changes nothing
    assert run(5) != run(6)
    assert run(5, hours=(0, 24)) == run(5, workers=2, hours=(0, 24)) != run(5)


def _masks(polys, height=520, width=704):
    rles = [
        mask_utils.merge(mask_utils.frPyObjects([p.ravel().tolist()], height, width)) for p in polys
    ]
    return mask_utils.decode(rles).astype(bool)  # (H, W, N)


@pytest.mark.slow  # renders many full-size images
def test_cells_are_visible_crowded_and_some_images_empty():
    lines = tuple(LOOKS)
    items = list(
        generate(n_images=10, empty_images=2, cell_lines=lines, width=704, height=520, seed=0)
    )
    assert [len(p) for *_, p in items][-2:] == [0, 0]
    overlapping = touching = 0
    for _, line, img, polys in items[:-2]:
        lo, hi = LOOKS[line].n_cells
        assert 0.5 * lo <= len(polys) <= hi, line  # a few border slivers are not cells
        masks = _masks(polys)
        assert masks.sum((0, 1)).min() >= MIN_CELL_PIXELS  # every polygon rasterises to a cell
        union = masks.any(-1)
        edge = ndimage.binary_dilation(union, iterations=2) & ~ndimage.binary_erosion(
            union, iterations=2
        )
        far = ~ndimage.binary_dilation(union, iterations=10)
        grad = np.hypot(*np.gradient(ndimage.gaussian_filter(img.astype(float), 0.7)))
        # phase contrast: a cell shows at its outline (edge and halo), not by mean grey
        assert grad[edge].mean() > 1.5 * grad[far].mean(), line
        overlapping += int((masks.sum(-1) > 1).any())
        grown = np.stack(
            [ndimage.binary_dilation(m, iterations=1) for m in masks.transpose(2, 0, 1)]
        )
        touching += int((grown.sum(0) > 1).sum() > 0)
    assert touching == 8 and overlapping >= 4  # as in LIVECell: crowded, some overlap


@pytest.mark.slow  # renders many full-size images
def test_density_mean_and_bv2_into_the_thousands():
    """Over the eight lines the mean drawn count is near LIVECell's ~300 cells per image (the
    other test checks that images hold about the count drawn); BV2 reaches over a thousand."""
    means = [(hi - lo) / np.log(hi / lo) for lo, hi in (look.n_cells for look in LOOKS.values())]
    assert 250 < np.mean(means) < 400, means  # the mean of a log-uniform draw
    bv2 = [
        len(polys)
        for *_, polys in generate(
            n_images=8,
            empty_images=0,
            cell_lines=("BV2",),
            width=704,
            height=520,
            seed=0,
            workers=2,
        )
    ]
    assert max(bv2) > 1000 and min(bv2) > 100, bv2


def test_processes_are_drawn_but_only_their_base_is_annotated():
    """LIVECell outlines a neuron's soma, lamella and the base of its processes; the rest of
    a process is drawn (a thin bright line) but is not part of the mask."""
    rng = np.random.default_rng(0)
    cell = Cell(60, 60, 9.0, 1.0, 0.0, np.zeros((3, 2)), False, False, 4)
    owner = claim_pixels([cell], [0], 120, 120)
    soma = owner == 0
    process = grow_neurites(rng, [cell], owner, np.full_like(owner, -1), length=40)
    from_soma = ndimage.distance_transform_edt(~soma)
    base = (owner == 0) & ~soma
    assert base.any() and from_soma[base].max() <= PROCESS_BASE + 2
    drawn = process > 0
    assert from_soma[drawn].max() > PROCESS_BASE + 15  # the process goes on, unannotated
    assert not (drawn & soma).any()  # a process is drawn outside its cell, not across it


def test_spread_cells_extensions_taper_are_annotated_and_carry_the_processes():
    """An SH-SY5Y cell spreads in extensions that narrow to a point; its mask takes them in,
    and its processes leave from their tips, not from anywhere on the outline."""
    arms = np.array([[0.0, 2.5, 0.4], [np.pi, 2.0, 0.4]])  # a spindle along x
    cell = Cell(100, 100, 8.0, 1.0, 0.0, np.zeros((3, 2)), False, False, 2, arms)
    owner = claim_pixels([cell], [0], 200, 200)
    cols = (owner == 0).sum(0)  # the mask's height at each x
    assert cols[100 + 8 + 16] > 0 and cols[100 - 8 - 12] > 0  # extensions well beyond r = 8
    tip = [cols[100 + 8 + k] for k in (2, 8, 14)]
    assert tip[0] > tip[1] > tip[2] > 0  # narrowing towards the tip
    assert (owner == 0).sum() > 1.3 * np.pi * 8**2  # more than the round cell would claim
    process = grow_neurites(np.random.default_rng(0), [cell], owner, np.full_like(owner, -1), 40)
    ys, xs = np.nonzero(process > 0.8)  # the strongest: where the processes leave the cell
    assert np.all(np.abs(ys - 100) < np.abs(xs - 100) + 3)  # along the spindle's axis


def test_membranes_are_thin_bright_lines_and_dead_clumps_are_not_annotated():
    (_, _, img, polys), *_ = generate(
        n_images=1, empty_images=0, cell_lines=("SHSY5Y",), width=352, height=260, seed=3
    )
    masks = _masks(polys, 260, 352)
    union = masks.any(-1)
    outline = union & ~ndimage.binary_erosion(union)
    inner = ndimage.binary_erosion(union, iterations=3)
    far = ~ndimage.binary_dilation(union, iterations=8)
    grey = img.astype(float)
    # the membrane: a bright line on the outline, brighter than both the medium and the
    # cell's inside (not a dark body with a halo)
    assert grey[outline].mean() > grey[far].mean() + 2 > grey[inner].mean() + 2

    look = LOOKS["SHSY5Y"]
    cells = draw_cells(rng := np.random.default_rng(1), look, 60, 260, 352)
    owner = claim_pixels(cells, list(range(len(cells))), 260, 352)
    none_on_top = np.full_like(owner, -1)
    dead = dead_clumps(rng, dataclasses.replace(look, dead=20.0), owner, none_on_top, len(cells))
    assert (dead > 0).sum() > 50  # drawn ...
    assert not ((dead > 0) & (owner != -1)).any()  # ... only where no annotated cell is


def test_layout_of_the_time_lapse_series():
    series = layout(11, 2, ("A172", "BV2"), (0.0, 24.0, 48.0), positions=2)
    assert series == [
        Series("A172", "B2", 1, (0.0, 24.0, 48.0), False),
        Series("BV2", "B2", 1, (0.0, 24.0, 48.0), False),
        Series("A172", "B2", 2, (0.0, 24.0, 48.0), False),  # a second position of the well
        Series("BV2", "H12", 1, (0.0, 24.0), True),  # the empty control well
    ]
    one = layout(5, 1, ("A172", "BV2"), (0.0,), positions=1)  # one time point: a well each
    assert [(s.line, s.well) for s in one] == [
        ("A172", "B2"), ("BV2", "B2"), ("A172", "C2"), ("BV2", "C2"), ("A172", "H12")
    ]  # fmt: skip


def test_time_lapse_frames_are_named_as_livecell_and_grow_at_the_lines_rate():
    items = list(
        generate(
            n_images=9,
            empty_images=1,
            cell_lines=("MCF7", "BV2"),
            width=352,
            height=260,
            seed=1,
            hours=(0, 24, 48, 72),
        )
    )
    points = [parse_name(name) for name, *_ in items]
    assert [(p.line, p.well, p.position, p.hours) for p in points[:4]] == [
        ("MCF7", "B2", "1_1", h) for h in (0.0, 24.0, 48.0, 72.0)
    ]
    assert points[4].line == "BV2" and points[8].well == "H12" and len(items[8][3]) == 0
    for line, frames in (("MCF7", items[:4]), ("BV2", items[4:8])):
        counts = np.array([len(polys) for *_, polys in frames])
        ratio = 2 ** (24 / LOOKS[line].doubling_h)
        assert np.allclose(counts[1:] / counts[:-1], ratio, rtol=0.1), (line, counts)


def test_cells_move_a_little_and_daughters_are_born_beside_them():
    look = LOOKS["A172"]
    rng = np.random.default_rng(0)
    cells = draw_cells(rng, look, 60, 520, 704)
    later = grow_cells(rng, look, cells, 90, 520, 704)
    assert len(later) == 90
    moved = np.array(
        [np.hypot(a.cy - b.cy, a.cx - b.cx) for a, b in zip(cells, later[:60], strict=True)]
    )
    radius = np.array([c.radius for c in cells])
    assert (moved > 0).all() and np.median(moved / radius) < 1.0  # the same cells, near by
    for d in later[60:]:
        gap = min(np.hypot(d.cy - c.cy, d.cx - c.cx) / c.radius for c in later[:60])
        assert gap <= 3.0 + 1e-9
    full = grow_cells(rng, look, later, 3000, 520, 704)  # no room for 3,000 A172 cells: it
    assert 500 < len(full) < 3000  # stops with the image full
