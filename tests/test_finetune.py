"""Fine-tuning on corrected label images: pairing, reading, tiling with a held-out part, the
loop itself on a tiny model, the CLI and the finetune stage. Bad input: test_bad_inputs.py."""

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from pycocotools import mask as mask_utils

from livecellseg.config import TileConfig, parse_params, parse_section
from livecellseg.errors import DataError
from livecellseg.finetune import (
    Correction,
    label_annotations,
    label_key,
    pair_corrections,
    prepare,
    read_labels,
)
from livecellseg.images import write_gray, write_labels
from tests.helpers import ROOT, save_tiny_checkpoint, small_image

PARAMS = ["--params", str(ROOT / "params.yaml")]


def labels_of(polys, shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    for i, poly in enumerate(polys, start=1):
        rle = mask_utils.merge(
            mask_utils.frPyObjects([np.asarray(poly, float).ravel().tolist()], *shape)
        )
        labels[mask_utils.decode(rle).astype(bool)] = i
    return labels


def corrected(d: Path, name: str, seed: int, width: int = 176, height: int = 130) -> Correction:
    image, polys = small_image(seed, width, height)
    d.mkdir(parents=True, exist_ok=True)
    write_gray(d / f"{name}.tif", image)
    write_labels(d / f"{name}_labels.tif", labels_of(polys, image.shape))
    return Correction(d / f"{name}.tif", d / f"{name}_labels.tif")


def test_label_names_give_their_image_name():
    for name in ("A_labels.tif", "A_masks.png", "A_cp_masks.tif", "A_label.tif", "A.tif"):
        assert label_key(Path(name)) == "A", name
    assert label_key(Path("_labels.tif")) == "_labels"  # nothing left: not a suffix


def test_pairs_by_name_across_folders(tmp_path):
    imgs = [tmp_path / "i" / "b.tif", tmp_path / "i" / "a.png"]
    labs = [tmp_path / "l" / "a.tif", tmp_path / "l" / "b_labels.tif"]
    pairs = pair_corrections(imgs, labs)
    assert [(p.image.name, p.labels.name) for p in pairs] == [
        ("a.png", "a.tif"),
        ("b.tif", "b_labels.tif"),
    ]


def test_every_unpaired_file_is_one_line(tmp_path):
    imgs = [tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "x" / "a.png"]
    labs = [tmp_path / "a_labels.tif", tmp_path / "c_labels.tif", tmp_path / "a_masks.tif"]
    with pytest.raises(DataError) as e:
        pair_corrections(imgs, labs)
    lines = str(e.value).splitlines()
    assert len(lines) == 4, lines
    assert any("a second image named a" in ln for ln in lines)
    assert any("c_labels.tif: matches no image" in ln for ln in lines)
    assert any("a second label image" in ln for ln in lines)
    assert any("b.tif: no label image for it" in ln for ln in lines)
    with pytest.raises(DataError, match="no corrected images given"):
        pair_corrections([], [])


def test_labels_are_read_as_integer_cells(tmp_path):
    lab = np.zeros((6, 8), np.uint8)
    lab[1:3, 1:3], lab[4, 5:] = 3, 7
    tifffile.imwrite(tmp_path / "l.tif", lab)
    got = read_labels(tmp_path / "l.tif", (6, 8))
    assert got.dtype == np.int64 and np.array_equal(got, lab)
    tifffile.imwrite(tmp_path / "f.tif", lab.astype(np.float32))  # integral floats: fine
    assert np.array_equal(read_labels(tmp_path / "f.tif", (6, 8)), lab)


@pytest.mark.parametrize(
    ("case", "array", "message"),
    [
        ("other size", np.ones((5, 8), np.uint16), "labels are 8x5 px, its image is 8x6"),
        ("probabilities", np.full((6, 8), 0.5, np.float32), "labels must be integer cell ids"),
        ("empty", np.zeros((6, 8), np.uint16), "no cell is labelled"),
        ("rgb", np.ones((6, 8, 3), np.uint8), "one 2-D plane of cell ids"),
        ("negative", np.full((6, 8), -1, np.int16), "negative label values"),
    ],
)
def test_bad_labels_are_one_line_naming_the_file(case, array, message, tmp_path):
    path = tmp_path / f"{case}.tif"
    tifffile.imwrite(path, array)
    with pytest.raises(DataError) as e:
        read_labels(path, (6, 8))
    assert message in str(e.value) and str(path) in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_each_label_becomes_one_annotation_of_its_pixels():
    lab = np.zeros((40, 30), np.int64)
    lab[2:6, 3:9], lab[10:18, 20:23] = 1, 4  # ids need not be consecutive
    lab[0, 29] = 0
    lab[0, 25:29], lab[30:33, 0:3] = 2, 6  # a 4-px fragment, and a 9-px one
    lab[36:40, 0:3] = 5  # 12 px: a cell
    lab[20:35, 10] = 7  # 15 px but 1 px wide: a sliver
    anns, fragments = label_annotations(lab, image_id=7, first_id=11)
    assert fragments == 3
    assert [a["id"] for a in anns] == [11, 12, 13]
    assert {a["image_id"] for a in anns} == {7}
    for a, value in zip(anns, (1, 4, 5), strict=True):
        assert np.array_equal(mask_utils.decode(a["segmentation"]).astype(bool), lab == value)
        assert a["area"] == (lab == value).sum()
        assert a["bbox"] == list(mask_utils.toBbox(a["segmentation"]))


TILE = TileConfig(grid=7, window=3, min_visible=0.3)


def test_one_image_is_held_out_in_space_without_overlap(tmp_path):
    c = corrected(tmp_path / "in", "img", seed=1, width=210, height=140)
    prep = prepare([c], TILE, tmp_path / "w", holdout=0.25, seed=0)
    train = json.loads((prep.tiles / "train.json").read_text())
    val = json.loads((prep.tiles / "val.json").read_text())
    assert (prep.train_tiles, prep.val_tiles) == (10, 3)  # tile rows 0-1; row 4, cols 0 2 4
    assert max(t["y0"] + t["height"] for t in train["images"]) <= min(
        t["y0"] for t in val["images"]
    )
    for split, doc in (("train", train), ("val", val)):
        ids = {t["id"] for t in doc["images"]}
        assert all(a["image_id"] in ids for a in doc["annotations"])
        assert all((prep.tiles / split / t["file_name"]).is_file() for t in doc["images"])
    assert val["annotations"] and train["annotations"]


def test_several_images_hold_out_whole_images(tmp_path):
    cs = [corrected(tmp_path / "in", f"img{i}", seed=i) for i in range(4)]
    prep = prepare(cs, TILE, tmp_path / "w", holdout=0.25, seed=3)
    assert len(prep.val) == 1 and len(prep.train) == 3
    assert set(prep.train) | set(prep.val) == {f"img{i}" for i in range(4)}
    assert (prep.train_tiles, prep.val_tiles) == (75, 9)  # held out: the 9 covering tiles
    again = prepare(cs, TILE, tmp_path / "w2", holdout=0.25, seed=3)
    assert again.val == prep.val  # seeded


@pytest.mark.parametrize(("grid", "window"), [(7, 3), (7, 1), (6, 3), (5, 5), (8, 4)])
def test_held_out_tiles_cover_every_pixel_once_over(grid, window):
    from livecellseg.finetune import cover_starts, covering_tiles
    from livecellseg.tiling import tile_windows

    starts = cover_starts(grid, window)
    assert starts[0] == 0 and starts[-1] == grid - window and starts == sorted(set(starts))
    wins = tile_windows(130, 176, grid, window)
    doc = {
        "images": [{"id": i, "row": w.row, "col": w.col} for i, w in enumerate(wins)],
        "annotations": [{"id": i, "image_id": i} for i in range(len(wins))],
    }
    kept = covering_tiles(doc, grid, window)
    assert len(kept["images"]) == len(starts) ** 2 and len(kept["annotations"]) == len(starts) ** 2
    seen = np.zeros((130, 176), int)
    for t in kept["images"]:
        w = wins[t["id"]]
        seen[w.y0 : w.y1, w.x0 : w.x1] += 1
    assert seen.min() >= 1  # every pixel validated
    if (grid, window) == (7, 3):  # the pipeline's tiling: 9 of its 25 tiles
        assert starts == [0, 2, 4] and seen.max() == 4


@pytest.mark.parametrize(
    ("tiles", "at_least", "k"), [(10, 40, 4), (25, 40, 2), (75, 40, 1), (10, 0, 1)]
)
def test_few_training_tiles_are_listed_again_to_fill_an_epoch(tiles, at_least, k):
    from livecellseg.finetune import repeat_tiles

    doc = {
        "images": [{"id": 100 + i, "file_name": f"t{i}.tif"} for i in range(tiles)],
        "annotations": [{"id": j, "image_id": 100 + j % 7, "area": j} for j in range(30)],
        "categories": [{"id": 1, "name": "cell"}],
    }
    out, got = repeat_tiles(doc, at_least)
    assert got == k and len(out["images"]) == k * tiles >= at_least
    assert (k - 1) * tiles < max(at_least, 1)  # the fewest copies that fill the epoch
    if k == 1:
        assert out is doc
        return
    ids = [t["id"] for t in out["images"]]
    assert len(set(ids)) == len(ids)  # each copy its own entry: its own flips and rotations
    assert len({a["id"] for a in out["annotations"]}) == len(out["annotations"]) == 30 * k
    files = {t["id"]: t["file_name"] for t in out["images"]}
    per_file = {}
    for a in out["annotations"]:
        per_file.setdefault(files[a["image_id"]], []).append(a["area"])
    for t in doc["images"]:  # every copy of a tile carries that tile's cells, no other's
        own = sorted(a["area"] for a in doc["annotations"] if a["image_id"] == t["id"])
        assert sorted(per_file.get(t["file_name"], [])) == sorted(own * k)


def tile_doc(n: int, cells: int, first_id: int = 1) -> dict:
    images = [{"id": first_id + i, "file_name": f"t{first_id + i}.tif"} for i in range(n)]
    return {
        "images": images,
        "annotations": [
            {"id": 500 + j, "image_id": first_id + j % n, "area": first_id + j % n}
            for j in range(cells)
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }


def test_replayed_tiles_come_with_their_own_cells():
    from livecellseg.finetune import replay_tiles

    doc, base = tile_doc(3, 5), tile_doc(20, 47, first_id=1)  # ids clash on purpose
    out = replay_tiles(doc, base, 6, seed=0)
    assert out["images"][:3] == doc["images"] and out["annotations"][:5] == doc["annotations"]
    added = out["images"][3:]
    assert len(added) == 6 and all(t["file_name"].startswith("replay/t") for t in added)
    assert len({t["id"] for t in out["images"]}) == 9
    assert len({a["id"] for a in out["annotations"]}) == len(out["annotations"])
    for t in added:  # each replayed tile carries its base tile's cells, no other's
        base_id = int(t["file_name"].removeprefix("replay/t").removesuffix(".tif"))
        got = [a["area"] for a in out["annotations"] if a["image_id"] == t["id"]]
        assert got and got == [base_id] * sum(a["image_id"] == base_id for a in base["annotations"])
    assert replay_tiles(doc, base, 6, seed=0) == out  # seeded
    assert replay_tiles(doc, base, 6, seed=1) != out
    assert len(replay_tiles(doc, base, 99, seed=0)["images"]) == 23  # at most all of base
    assert replay_tiles(doc, base, 0, seed=0) is doc


def tiny_training(raw: dict) -> dict:
    """params whose tiny checkpoint also trains and validates small: few proposals and RoIs,
    few detections per validated tile (an untrained model floods them)."""
    return raw | {
        "model": raw["model"]
        | {
            "rpn_pre_nms_top_n_train": 100,
            "rpn_post_nms_top_n_train": 50,
            "box_batch_size_per_image": 32,
        },
        "train": raw["train"] | {"val_detections_per_tile": 8, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def tiny_finetuned(tmp_path_factory, raw_params):
    """A tiny untrained checkpoint fine-tuned through the CLI on two corrected images."""
    from livecellseg.cli import main

    d = tmp_path_factory.mktemp("ft")
    ckpt = save_tiny_checkpoint(d / "custom.pt", tiny_training(raw_params))
    for i in range(2):
        corrected(d / "images", f"img{i}", seed=i)
    for p in (d / "images").glob("*_labels.tif"):
        (d / "labels").mkdir(exist_ok=True)
        p.rename(d / "labels" / p.name)
    args = ["finetune", str(d / "images"), "--labels", str(d / "labels")]
    args += ["--model", str(ckpt), "--out", str(d / "new.pt"), "--device", "cpu"]
    args += ["--epochs", "1", "--tiles-per-epoch", "4", *PARAMS]
    assert main(args) == 0
    return d, ckpt


def test_cli_fine_tunes_and_reports_before_and_after(tiny_finetuned, capsys):
    from livecellseg.checkpoint import load_checkpoint

    d, ckpt = tiny_finetuned
    report = json.loads((d / "new.json").read_text())
    assert report["images"] == 2 and len(report["val"]) == 1 and report["epochs"] == 1
    assert report["steps"] == 1  # 4 tiles, batch 4
    assert set(report["before"]) == set(report["after"]) == {"f1", "precision", "recall", "miou"}
    new, old = load_checkpoint(d / "new.pt"), load_checkpoint(ckpt)
    assert new["params"] == old["params"]  # the recorded settings are kept
    assert new["run"]["finetuned_from"]["checkpoint"] == "custom.pt"
    assert new["run"]["corrections"]["val"] == report["val"]
    assert "look" in new  # novelty described on the corrections
    changed = [k for k in old["model"] if not torch.equal(old["model"][k], new["model"][k])]
    assert changed  # it trained
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []


def test_the_finetuned_checkpoint_predicts(tiny_finetuned):
    from livecellseg.predict import Predictor

    d, _ = tiny_finetuned
    predictor, ckpt = Predictor.from_checkpoint(d / "new.pt", torch.device("cpu"))
    image = small_image(5)[0]
    seg = predictor.segment(image)
    assert seg.look is not None and ckpt["name"] == "custom"


def test_cli_replays_the_tiles_the_model_was_trained_on(raw_params, tmp_path, capsys):
    """--replay-tiles: finetune.replay of the epoch's tiles come from the model's own training
    tiles (here: the tiles of two other images), and the novelty look describes both."""
    from livecellseg.checkpoint import load_checkpoint
    from livecellseg.cli import main

    ckpt = save_tiny_checkpoint(tmp_path / "custom.pt", tiny_training(raw_params))
    base = prepare(
        [corrected(tmp_path / "base", f"b{i}", seed=10 + i) for i in range(2)],
        TILE,
        tmp_path / "trained_on",
        holdout=0.5,
        seed=0,
    )
    c = corrected(tmp_path / "in", "img", seed=1, width=210, height=140)
    args = ["finetune", str(c.image), "--labels", str(c.labels), "--model", str(ckpt)]
    args += ["--out", str(tmp_path / "new.pt"), "--device", "cpu", "--epochs", "1"]
    args += ["--tiles-per-epoch", "8", "--replay", "0.5", "--replay-tiles", str(base.tiles)]
    assert main([*args, *PARAMS]) == 0
    report = json.loads((tmp_path / "new.json").read_text())
    own = report["train_tiles"]
    assert own == 10  # one image: its first two rows of five tiles
    assert report["replay_tiles"] == own  # half of the listed tiles
    assert report["steps"] == 2  # 8 tiles of the 20 listed, batch 4
    look = load_checkpoint(tmp_path / "new.pt")["look"]
    assert look["tiles"][0] == own + report["replay_tiles"]
    (tmp_path / "new.pt").unlink()
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "in"), *PARAMS]) == 1  # not a tile output
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no train.json and train/ to replay" in err[0], err
    assert not (tmp_path / "new.pt").exists()  # checked before anything is written


def test_stage_without_corrections_says_so_and_writes_empty_outputs(raw_params, tmp_path, caplog):
    from stages.finetune import main

    (tmp_path / "corrections").mkdir()
    (tmp_path / "corrections" / "README.md").write_text("put images here")
    args = Namespace(
        corrections=tmp_path / "corrections",
        model=tmp_path / "missing.pt",  # not even read
        replay=tmp_path / "tiles",
        out=tmp_path / "models" / "finetuned",
        live=tmp_path / "metrics" / "finetune",
    )
    with caplog.at_level("INFO"):
        main(parse_params(raw_params), args)
    assert "nothing to fine-tune" in caplog.text
    assert list(args.out.iterdir()) == []
    assert json.loads((args.live / "metrics.json").read_text()) == {"corrections": 0}
    assert list((args.live / "plots").iterdir()) == []


@pytest.mark.slow
def test_stage_fine_tunes_what_data_corrections_holds(raw_params, tmp_path):
    from stages.finetune import main

    ckpt = save_tiny_checkpoint(tmp_path / "custom.pt", tiny_training(raw_params))
    for i in range(2):
        c = corrected(tmp_path / "corrections" / "images", f"img{i}", seed=i)
        (tmp_path / "corrections" / "labels").mkdir(exist_ok=True)
        c.labels.rename(tmp_path / "corrections" / "labels" / c.labels.name)
    raw = raw_params | {
        "finetune": raw_params["finetune"] | {"epochs": 2, "tiles_per_epoch": 4},
        "train": raw_params["train"] | {"device": "cpu"},
    }
    args = Namespace(
        corrections=tmp_path / "corrections",
        model=ckpt,
        replay=prepare(  # the tiles the model was trained on, as the tile stage writes them
            [corrected(tmp_path / "base", "b", seed=7)],
            TILE,
            tmp_path / "data",
            holdout=0.25,
            seed=0,
        ).tiles,
        out=tmp_path / "models" / "finetuned",
        live=tmp_path / "metrics" / "finetune",
    )
    main(parse_params(raw), args)
    assert sorted(p.name for p in args.out.iterdir()) == ["custom.json", "custom.pt"]
    assert json.loads((args.out / "custom.json").read_text())["replay_tiles"] > 0
    metrics = json.loads((args.live / "metrics.json").read_text())
    assert metrics["corrections"] == 2 and metrics["epochs_done"] == 2
    assert set(metrics["heldout_before"]) == {"f1", "precision", "recall", "miou"}
    curve = args.live / "plots" / "metrics" / "epoch" / "val_f1.tsv"
    assert len(curve.read_text().splitlines()) == 3  # header and 2 epochs


def test_finetune_section_is_validated(raw_params):
    from livecellseg.config import FinetuneConfig
    from livecellseg.errors import ConfigError

    ok = parse_section(FinetuneConfig, raw_params["finetune"], "finetune")
    assert ok.model in ("custom", "transfer")
    for key, bad in (
        ("holdout", 1.0),
        ("epochs", 0),
        ("model", "unet"),
        ("lr_ratio", 0),
        ("replay", 1.0),
        ("replay", -0.1),
    ):
        with pytest.raises(ConfigError, match=f"finetune.{key}"):
            parse_section(FinetuneConfig, raw_params["finetune"] | {key: bad}, "finetune")


def test_cli_prints_one_error_line_per_unpaired_file(raw_params, tmp_path, capsys):
    from livecellseg.cli import main

    a = corrected(tmp_path, "a", seed=1)
    b = corrected(tmp_path, "b", seed=2)
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", raw_params)
    args = ["finetune", str(a.image), "--labels", str(b.labels), "--model", str(ckpt), *PARAMS]
    assert main([*args, "--out", str(tmp_path / "o" / "new.pt")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(ln.startswith("error: ") for ln in err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["custom", "transfer"])
def test_the_budget_keeps_the_checkpoints_settings_and_scales_its_learning_rate(name, raw_params):
    from livecellseg.config import FinetuneConfig
    from livecellseg.finetune import finetune_config
    from livecellseg.settings import recorded_params

    params = parse_params(raw_params)
    ckpt = {"name": name, "params": recorded_params(name, params)}
    cfg = parse_section(FinetuneConfig, raw_params["finetune"], "finetune")
    fit = finetune_config(ckpt, cfg, iou_thresh=0.5, device="cpu", workers=0)
    (phase,) = fit.phases
    own = params.custom.lr if name == "custom" else params.model.lr
    assert phase.lr == pytest.approx(own * cfg.lr_ratio) and phase.epochs == cfg.epochs
    assert phase.optimizer == ("adamw" if name == "custom" else "sgd")
    assert fit.batch_size == getattr(params, name).batch_size
    assert fit.augmentation == raw_params["train"]["augment"]
    assert fit.val_score_thresh == params.train.val_score_thresh and fit.seed == params.seed
    assert fit.max_tiles_per_epoch == cfg.tiles_per_epoch and fit.max_val_tiles == 0


@pytest.mark.slow  # a second tiny fine-tuning
def test_a_transfer_checkpoint_fine_tunes_with_its_own_optimizer(raw_params, tmp_path):
    from livecellseg.checkpoint import load_checkpoint
    from livecellseg.cli import main

    ckpt = save_tiny_checkpoint(tmp_path / "transfer.pt", tiny_training(raw_params), "transfer")
    c = corrected(tmp_path / "in", "img", seed=3)
    args = ["finetune", str(c.image), "--labels", str(c.labels), "--model", str(ckpt)]
    args += ["--out", str(tmp_path / "t.pt"), "--epochs", "1", "--tiles-per-epoch", "2", *PARAMS]
    assert main(args) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["model"] == "transfer" and report["train_tiles"] == 10
    assert report["lr"] == pytest.approx(
        raw_params["model"]["lr"] * raw_params["finetune"]["lr_ratio"]
    )
    assert load_checkpoint(tmp_path / "t.pt")["name"] == "transfer"


def test_norm_statistics_stay_while_the_rest_trains():
    from livecellseg.finetune import norm_statistics_frozen

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU())
    bn = model[1]
    before = bn.running_mean.clone()
    with norm_statistics_frozen(model) as n:
        model.train()
        assert n == 1 and model.training and not bn.training
        model(torch.randn(4, 1, 8, 8) * 5 + 3).sum().backward()
        assert torch.equal(bn.running_mean, before)  # statistics kept
        assert bn.weight.grad is not None  # scale and shift still learn
    model.train()
    assert bn.training  # as before, once out
