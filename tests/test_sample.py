import json
import re

import numpy as np
import tifffile
from pycocotools import mask as mask_utils
from scipy import ndimage

from livecellseg.livecell import index_images
from livecellseg.sample import LOOKS, generate
from tests.conftest import make_livecell_root

NAME = re.compile(
    r"^(A172|BT474|BV2|Huh7|MCF7|SHSY5Y|SkBr3|SKOV3)_Phase_[A-H]\d+_\d_\d\dd\d\dh\d\dm_\d\.tif$"
)


def test_livecell_format(tmp_path):
    root = make_livecell_root(tmp_path, n_images=6, empty=1)
    paths = index_images(root)
    assert len(paths) == 6 and all(NAME.match(n) for n in paths)
    for p in paths.values():
        with tifffile.TiffFile(p) as tf:
            page = tf.pages[0]
            assert page.compression == tifffile.COMPRESSION.LZW
            img = page.asarray()
        assert img.shape == (520, 704) and img.dtype == np.uint8
        assert 110 < img.mean() < 145  # LIVECell's mean grey is ~128
    doc = json.loads((root / "annotations" / "livecell_coco_train.json").read_text())
    assert set(doc) >= {"images", "annotations", "categories"}
    assert doc["categories"] == [{"supercategory": "cell", "id": 1, "name": "cell"}]
    assert isinstance(doc["annotations"], dict)  # LIVECell's id -> annotation mapping
    ann = next(iter(doc["annotations"].values()))
    assert set(ann) == {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
    assert len(ann["segmentation"][0]) >= 6 and ann["iscrowd"] == 0


def test_deterministic_and_varied():
    def run(seed):
        return [
            (n, img.tobytes(), [p.tobytes() for p in polys])
            for n, _, img, polys in generate(
                n_images=3, empty_images=0, cell_lines=("BV2",), width=200, height=150, seed=seed
            )
        ]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_cells_are_visible_dense_and_some_images_empty():
    lines = tuple(LOOKS)
    items = list(
        generate(n_images=10, empty_images=2, cell_lines=lines, width=704, height=520, seed=0)
    )
    assert [len(p) for *_, p in items][-2:] == [0, 0]
    touching = 0
    for _, line, img, polys in items[:-2]:
        assert len(polys) >= 20
        rles = [
            mask_utils.merge(mask_utils.frPyObjects([p.ravel().tolist()], 520, 704)) for p in polys
        ]
        masks = mask_utils.decode(rles).astype(bool)  # (H, W, N)
        union = masks.any(-1)
        ring = ndimage.binary_dilation(union, iterations=3) & ~union
        far = ~ndimage.binary_dilation(union, iterations=8)
        # a cell's body is darker than the background and its halo brighter: learnable
        assert img[union].mean() < img[far].mean() - 10, line
        assert img[ring].mean() > img[far].mean() + 10, line
        touching += int((masks.sum(-1) > 1).sum() > 0)
    assert touching >= 4  # overlapping neighbours are common, as in LIVECell
