import numpy as np
import pytest
from pycocotools import mask as mask_utils

from livecellseg.tiling import (
    clip_instances,
    grid_edges,
    owned_box,
    owner,
    ownership_map,
    tile_windows,
)

SIZES = [(520, 704), (222, 300), (100, 97), (77, 7)]


def test_grid_edges_livecell():
    assert grid_edges(704, 7).tolist() == [0, 100, 200, 300, 400, 500, 600, 704]
    assert grid_edges(520, 7).tolist() == [0, 74, 148, 222, 296, 370, 444, 520]
    with pytest.raises(ValueError):
        grid_edges(6, 7)


def test_windows_livecell():
    wins = tile_windows(520, 704, 7, 3)
    assert len(wins) == 25
    assert wins[0].shape == (222, 300)
    assert (wins[0].y0, wins[0].x0) == (0, 0)
    assert (wins[-1].y1, wins[-1].x1) == (520, 704)  # the remainder strip is in a tile
    assert wins[-1].shape == (224, 304)
    assert [w.x0 for w in wins[:5]] == [0, 100, 200, 300, 400]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_every_pixel_covered(h, w):
    cover = np.zeros((h, w), int)
    for win in tile_windows(h, w, 7, 3):
        cover[win.y0 : win.y1, win.x0 : win.x1] += 1
    assert cover.min() >= 1


@pytest.mark.parametrize(("h", "w"), SIZES)
@pytest.mark.parametrize(("grid", "window"), [(7, 3), (5, 3), (4, 1), (6, 6)])
def test_ownership_partitions_image_once(h, w, grid, window):
    wins = tile_windows(h, w, grid, window)
    count = np.zeros((h, w), int)
    label = np.full((h, w), -1)
    for t, win in enumerate(wins):
        box = owned_box(win, h, w, grid, window)
        # a tile owns only pixels it sees
        assert win.y0 <= box.y0 < box.y1 <= win.y1 and win.x0 <= box.x0 < box.x1 <= win.x1
        count[box.y0 : box.y1, box.x0 : box.x1] += 1
        label[box.y0 : box.y1, box.x0 : box.x1] = t
    assert (count == 1).all()
    assert (ownership_map(h, w, grid, window) == label).all()


def test_owner_rule():
    assert [owner(i, 7, 3) for i in range(7)] == [0, 0, 1, 2, 3, 4, 4]


def _random_polygon_mask(rng, h, w):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    t = np.sort(rng.uniform(0, 2 * np.pi, 12))
    r = rng.uniform(5, 60) * rng.uniform(0.5, 1.0, 12)
    poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
    return mask_utils.decode(rle).astype(bool)


def test_clipping_matches_brute_force():
    h, w = 520, 704
    rng = np.random.default_rng(0)
    full_masks = [m for m in (_random_polygon_mask(rng, h, w) for _ in range(60)) if m.any()]
    masks, boxes = [], []
    for m in full_masks:
        ys, xs = np.nonzero(m)
        masks.append(m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
        boxes.append((ys.min(), xs.min()))
    wins = tile_windows(h, w, 7, 3)
    per_tile, counts = clip_instances(masks, boxes, wins, min_visible=0.3)

    n_kept = n_clipped = n_dropped = 0
    for t, win in enumerate(wins):
        expected = {}
        for i, m in enumerate(full_masks):
            inside = m[win.y0 : win.y1, win.x0 : win.x1]
            area = int(inside.sum())
            if area == 0:
                continue
            if area >= 0.3 * m.sum():
                expected[i] = inside
                n_clipped += area < m.sum()
            else:
                n_dropped += 1
        got = {c.source: c for c in per_tile[t]}
        assert set(got) == set(expected)
        for i, inside in expected.items():
            assert got[i].area == int(inside.sum())
            assert (got[i].mask == inside).all()
            assert got[i].clipped == (inside.sum() < full_masks[i].sum())
        n_kept += len(expected)
    assert (counts.instances, counts.clipped, counts.dropped) == (n_kept, n_clipped, n_dropped)
    assert counts.clipped > 0 and counts.dropped > 0  # the case is not trivial


def test_lost_instance_is_counted():
    # a 10x400 bar is never >= 90% inside a 300-px-wide tile
    mask = np.ones((10, 400), bool)
    per_tile, counts = clip_instances([mask], [(100, 150)], tile_windows(520, 704, 7, 3), 0.9)
    assert counts.lost == 1 and counts.instances == 0
    assert all(not p for p in per_tile)


def test_instance_crops_equal_full_size_rasterisation():
    from livecellseg.coco import encode_mask, to_rle
    from livecellseg.tileset import instance_crops

    h, w = 120, 160
    rng = np.random.default_rng(1)
    anns = []
    for _ in range(40):  # many cross the image border
        cx, cy, r = rng.uniform(-10, w + 10), rng.uniform(-10, h + 10), rng.uniform(2, 30)
        t = np.sort(rng.uniform(0, 2 * np.pi, 9))
        rr = r * rng.uniform(0.4, 1.0, 9)
        anns.append(
            {
                "segmentation": [
                    np.round(
                        np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1).ravel(), 2
                    ).tolist()
                ]
            }
        )
    rle_mask = np.zeros((h, w), bool)
    rle_mask[30:50, 40:45] = True
    anns.append({"segmentation": encode_mask(rle_mask)})
    masks, boxes = instance_crops(anns, h, w)
    for ann, m, (y, x) in zip(anns, masks, boxes, strict=True):
        full = mask_utils.decode(to_rle(ann["segmentation"], h, w)).astype(bool)
        pasted = np.zeros((h, w), bool)
        pasted[y : y + m.shape[0], x : x + m.shape[1]] = m
        assert (pasted == full).all()


def test_parallel_tiling_gives_identical_output(tmp_path):
    import json

    from livecellseg.images import write_gray
    from livecellseg.sample import generate, polygon_annotation
    from livecellseg.tileset import tile_split

    images, anns = [], []
    for i, (name, _line, img, polys) in enumerate(
        generate(n_images=3, empty_images=1, cell_lines=("MCF7",), width=210, height=150, seed=0)
    ):
        write_gray(tmp_path / name, img)
        images.append({"id": i + 1, "file_name": name, "width": 210, "height": 150})
        anns += [polygon_annotation(len(anns) + 1, i + 1, p) for p in polys]
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    one = tile_split(doc, tmp_path, tmp_path / "w1", grid=7, window=3, min_visible=0.3)
    two = tile_split(doc, tmp_path, tmp_path / "w2", grid=7, window=3, min_visible=0.3, workers=2)
    assert json.dumps(one) == json.dumps(two)
    assert one[1]["tiles"] == 75 and one[1]["instances"] > 0
    assert len(list((tmp_path / "w1").iterdir())) == 75
    for p in (tmp_path / "w1").iterdir():
        assert p.read_bytes() == (tmp_path / "w2" / p.name).read_bytes()


def test_two_images_of_one_name_cannot_tile_over_each_other(tmp_path):
    from livecellseg.errors import DataError
    from livecellseg.tileset import tile_split

    img = {"id": 1, "file_name": "A172_Phase_C7_1_00d00h00m_1.tif", "width": 70, "height": 50}
    doc = {"images": [img, {**img, "id": 2, "file_name": img["file_name"] + "f"}]}
    doc |= {"annotations": [], "categories": []}
    with pytest.raises(DataError, match="1 image name.*occur twice.*A172_Phase_C7_1_00d00h00m_1"):
        tile_split(doc, tmp_path, tmp_path / "tiles", grid=7, window=3, min_visible=0.3)
    assert not (tmp_path / "tiles").exists()
