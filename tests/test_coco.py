import json

import numpy as np
import pytest

from livecellseg.coco import (
    check_images,
    clean_segmentation,
    encode_masks,
    iter_annotations,
    make_annotation_checker,
    read_header,
    rle_areas,
)
from livecellseg.errors import DataError

IMAGES = [{"id": 1, "file_name": "A172_Phase_A1_1_00d00h00m_1.tif", "width": 50, "height": 40}]
CATS = [{"id": 1, "name": "cell"}]
SQUARE = [[10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]]


def _ann(i, **kw):
    return {"id": i, "image_id": 1, "category_id": 1, "segmentation": SQUARE, "iscrowd": 0, **kw}


@pytest.mark.parametrize("form", ["list", "map"])
@pytest.mark.parametrize("annotations_first", [False, True])
def test_streams_both_livecell_and_coco_forms(tmp_path, form, annotations_first):
    anns = [_ann(1), _ann(2)]
    body = anns if form == "list" else {str(a["id"]): a for a in anns}
    keys = (
        ["annotations", "images", "categories"]
        if annotations_first
        else ["images", "categories", "annotations"]
    )
    doc = {k: {"images": IMAGES, "categories": CATS, "annotations": body}[k] for k in keys}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    images, cats, got_form = read_header(path)
    assert images == IMAGES and cats == CATS and got_form == form
    assert [a["id"] for a in iter_annotations(path, got_form)] == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"images": [{"id": 1, ', "malformed or truncated JSON"),
        ("[1, 2]", "top level is not a JSON object"),
        ('{"annotations": []}', "no 'images' list"),
        ("not json", "malformed or truncated JSON"),
    ],
)
def test_bad_json_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_header(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_annotations_raise(tmp_path):
    path = tmp_path / "t.json"
    text = json.dumps({"images": IMAGES, "categories": CATS, "annotations": [_ann(1), _ann(2)]})
    path.write_text(text[:-30])
    _, _, form = read_header(path)
    with pytest.raises(DataError, match="truncated"):
        list(iter_annotations(path, form))


def test_duplicate_image_ids(tmp_path):
    with pytest.raises(DataError, match="duplicate image id 1"):
        check_images(tmp_path / "x.json", IMAGES + IMAGES)
    with pytest.raises(DataError, match=r"images\[0\] lacks"):
        check_images(tmp_path / "x.json", [{"id": 1}])


@pytest.mark.parametrize(
    ("seg", "defect"),
    [
        ([], "empty_segmentation"),
        ([[1.0, 2.0, 3.0, 4.0]], "degenerate_polygon"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0]], "degenerate_polygon"),
        ([[1.0, float("nan"), 3.0, 4.0, 5.0, 6.0]], "degenerate_polygon"),
        ({"counts": 5}, "bad_rle"),
        (None, "empty_segmentation"),
    ],
)
def test_segmentation_defects(seg, defect):
    assert clean_segmentation(seg) == (None, defect)


def test_bad_rings_are_dropped_good_ones_kept():
    seg, defect = clean_segmentation([[1, 2, 3, 4], SQUARE[0]])
    assert defect is None and seg == SQUARE


def test_annotation_checker():
    check = make_annotation_checker({1: IMAGES[0]}, {1})
    clean, defect = check(_ann(7))
    assert defect is None
    assert clean["area"] == 100 and clean["bbox"] == [10.0, 10.0, 10.0, 10.0]
    assert check(_ann(8, image_id=99)) == (None, "unknown_image")
    assert check(_ann(8, category_id=5)) == (None, "unknown_category")
    assert check({"id": 3}) == (None, "malformed_annotation")
    line = [[10.0, 10.0, 20.0, 20.0, 30.0, 30.0]]  # collinear: no pixel
    assert check(_ann(9, segmentation=line)) == (None, "zero_area")
    outside = [[100.0, 100.0, 120.0, 100.0, 120.0, 120.0]]
    assert check(_ann(9, segmentation=outside)) == (None, "zero_area")


def test_load_as_rle_gives_the_same_masks(tmp_path):
    from pycocotools import mask as mask_utils

    from livecellseg.coco import to_rle
    from livecellseg.evaluation import load_as_rle

    ring = [10.0, 10.0, 30.0, 12.0, 25.0, 40.0]
    rle = mask_utils.frPyObjects([[5, 5, 9, 5, 9, 9, 5, 9]], 50, 60)[0]
    rle["counts"] = rle["counts"].decode()
    doc = {
        "images": [{"id": 7, "file_name": "a.tif", "width": 60, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [ring], "area": 1},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": rle, "area": 1},
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    got = load_as_rle(tmp_path / "a.json")
    assert got["images"] == doc["images"] and got["categories"] == doc["categories"]
    for mine, orig in zip(got["annotations"], doc["annotations"], strict=True):
        assert isinstance(mine["segmentation"]["counts"], str)
        a = mask_utils.decode(to_rle(mine["segmentation"], 50, 60))
        b = mask_utils.decode(to_rle(orig["segmentation"], 50, 60))
        assert (a == b).all() and a.sum() > 0
        assert {k: v for k, v in mine.items() if k != "segmentation"} == {
            k: v for k, v in orig.items() if k != "segmentation"
        }


def test_rle_areas_of_more_than_255_masks():
    # pycocotools' own area() overflows a uint8 scratch array past 255 RLEs (numpy 2);
    # a dense LIVECell image holds ~2,000 cells.
    masks = np.zeros((300, 20, 30), dtype=np.uint8)
    for i in range(300):
        masks[i, : 1 + i % 20, : 1 + i % 30] = 1
    areas = rle_areas(encode_masks(masks))
    assert areas.tolist() == [(1 + i % 20) * (1 + i % 30) for i in range(300)]
    assert rle_areas([]).shape == (0,)
