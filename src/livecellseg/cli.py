"""The `livecellseg` command: segment your own images, serve the app, explain a model.

livecellseg predict IMAGE_OR_DIR... --model models/custom.pt [--out DIR] [--score S] [--set KEY=V]
torchrun --nproc_per_node N -m livecellseg predict ...   (the images shared over N processes)
livecellseg app [--models models] [--host 127.0.0.1] [--port 7860]
livecellseg finetune IMAGE_OR_DIR... --labels LABELS_OR_DIR... --model CKPT --out NEW.pt
livecellseg growth IMAGE_OR_DIR... --model models/custom.pt [--out DIR] [--pattern RE]
livecellseg explain IMAGE --model models/custom.pt [--out DIR]
livecellseg export models/custom_last.pt custom_weights.pt
livecellseg get-livecell data/livecell [--base-url URL] [--keep-zip]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from livecellseg.errors import LivecellsegError

log = logging.getLogger("livecellseg")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[livecellseg] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the app's startup self-checks
    try:
        return args.run(args)
    except LivecellsegError as e:
        for line in str(e).splitlines():  # one line per file when several are at fault
            print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="livecellseg",
        description="Cell instance segmentation in phase-contrast images (LIVECell Mask R-CNNs).",
        epilog="Run `livecellseg COMMAND --help` for each command's options.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pr = sub.add_parser(
        "predict",
        help="segment images: label TIFF, COCO JSON and overlay PNG per image",
        description=(
            "Segment images with a trained model. For each image IMG writes IMG_labels.tif "
            "(uint16: 0 background, 1..N cells; opens in napari, Fiji, Cellpose), IMG_coco.json "
            "(COCO document: image, RLE masks with scores) and IMG_overlay.png (outlines in "
            "magenta), plus summary.csv (one row per image: cells, mean area, distance to the "
            "training data and whether it is unlike it). Directories are searched recursively "
            "and keep their layout under --out. Reads 8-bit TIFF/PNG/JPEG; RGB is converted to "
            "gray and other bit depths rescaled, with a warning. A file that cannot be read is "
            "reported and skipped; the exit code is 1 if any was. Rerunning skips the images "
            "already done; a run killed at any moment loses only the images in flight. "
            "Several processes: torchrun --nproc_per_node N -m livecellseg predict ..."
        ),
    )
    pr.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="IMAGE_OR_DIR",
        help="image files, or directories holding .tif/.tiff/.png/.jpg/.jpeg (recursively)",
    )
    pr.add_argument(
        "--model",
        type=Path,
        required=True,
        help="checkpoint from training, e.g. models/custom.pt or models/transfer.pt",
    )
    pr.add_argument(
        "--out",
        type=Path,
        default=Path("segmentations"),
        help="output directory (default: %(default)s)",
    )
    _postprocess_args(pr)
    pr.add_argument(
        "--overwrite",
        action="store_true",
        help="segment again the images whose outputs are already there",
    )
    pr.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes decoding images ahead of the model, per rank (default: %(default)s; "
        "0: in the main process)",
    )
    pr.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto: CUDA when present (default; under torchrun, the GPU of LOCAL_RANK)",
    )
    pr.set_defaults(run=_predict)

    ft = sub.add_parser(
        "finetune",
        help="fine-tune a model on your corrected label images (human in the loop)",
        description=(
            "Continue training a checkpoint on corrected images: each image IMG pairs with a "
            "label image IMG_labels.tif (what `predict` writes; edit it in napari or Fiji), "
            "IMG_masks/IMG_cp_masks (Cellpose) or IMG.tif in another folder: uint8/16/32, 0 "
            "background, 1..N cells. The images are tiled as the pipeline tiles, part is held "
            "out (params.yaml finetune.holdout; a single image: its last row of tiles), and the "
            "model trains for finetune.epochs with its recorded settings. Prints the held-out "
            "F1 before and after; writes NEW.pt (the best epoch on the held-out part) and "
            "NEW.json (the report). Every input is checked before anything is written."
        ),
    )
    ft.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="images corrected")
    ft.add_argument(
        "--labels",
        nargs="+",
        type=Path,
        required=True,
        metavar="LABELS_OR_DIR",
        help="their corrected label images, or directories of them (paired by name)",
    )
    ft.add_argument("--model", type=Path, required=True, help="checkpoint to start from")
    ft.add_argument("--out", type=Path, required=True, help="fine-tuned checkpoint to write")
    ft.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="where the budget is read from, its finetune section (default: %(default)s)",
    )
    ft.add_argument("--epochs", type=int, help="override finetune.epochs")
    ft.add_argument("--tiles-per-epoch", type=int, help="override finetune.tiles_per_epoch")
    ft.add_argument("--lr-ratio", type=float, help="override finetune.lr_ratio")
    ft.add_argument("--holdout", type=float, help="override finetune.holdout")
    ft.add_argument(
        "--replay-tiles",
        type=Path,
        metavar="TILES_DIR",
        help="the tile stage output the model was trained on (data/tiles: train.json, train/): "
        "finetune.replay of each epoch's tiles are drawn from it, so the model keeps the cells "
        "it knew (default: none, the corrections alone)",
    )
    ft.add_argument("--replay", type=float, help="override finetune.replay")
    ft.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ft.set_defaults(run=_finetune)

    gr = sub.add_parser(
        "growth",
        help="growth curves of time-lapse images: counts, confluence, doubling time per well",
        description=(
            "Segment time-lapse images named as LIVECell's (<line>_Phase_<well>_<field>_"
            "<DD>d<HH>h<MM>m_<crop>.tif, or --pattern) and follow each well over time. Writes "
            "growth.csv (per image: line, well, position, hours, cells, confluence %%, mean "
            "cell area), wells.csv (per well and time: mean and sd over positions), "
            "doubling.json (per well: doubling time, 95%% interval, R2 of the log-linear fit "
            "over the exponential phase, or why it is not estimable) and growth.png."
        ),
    )
    gr.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    gr.add_argument("--model", type=Path, required=True, help="trained checkpoint")
    gr.add_argument("--out", type=Path, default=Path("growth"), help="default: %(default)s")
    gr.add_argument(
        "--pattern",
        help="regular expression for other names, with named groups well and hours "
        "(or days, hours, minutes), optionally line, field, crop",
    )
    _postprocess_args(gr)
    gr.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    gr.set_defaults(run=_growth)

    ap = sub.add_parser(
        "app",
        help="the web app: upload an image, see and download its segmentation",
        description=(
            "A Gradio app: upload an image (or pick an example), choose a checkpoint from "
            "--models, move the score threshold, see the overlay, count, areas; download "
            "the label TIFF and COCO JSON; correct it (delete and add cells) and fine-tune the "
            "model on the corrections; explain the model's activations. Binds to "
            "127.0.0.1 unless --host says otherwise."
        ),
    )
    ap.add_argument(
        "--models",
        type=Path,
        default=Path("models"),
        help="directory of checkpoints (*.pt) to offer (default: %(default)s)",
    )
    ap.add_argument(
        "--examples",
        type=Path,
        default=Path("data/sample/images/livecell_test_images"),
        help="directory of example images (searched recursively; default: %(default)s)",
    )
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s; 0.0.0.0 exposes it to the network)",
    )
    ap.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    ap.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        help="largest accepted upload in MB (default: %(default)s)",
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="its finetune section is what the Correct tab's Fine-tune button uses "
        "(default: %(default)s)",
    )
    ap.add_argument(
        "--replay-tiles",
        type=Path,
        default=Path("data/tiles"),
        metavar="TILES_DIR",
        help="the tile stage output the models were trained on, of which fine-tuning replays "
        "finetune.replay of each epoch (default: %(default)s; absent: the corrections alone)",
    )
    ap.set_defaults(run=_app)

    ex = sub.add_parser(
        "explain",
        help="which parts of the model respond to an image: activation shares and feature maps",
        description=(
            "Run the model once on the whole image with forward hooks on the backbone stages "
            "(layer1..4), CBAM blocks (custom model), FPN levels, RPN, box head and mask head. "
            "Writes importance.json (each module's share of the mean absolute activation, in "
            "%%), one PNG of feature maps per module (mean over channels and the strongest "
            "channels) and the CBAM spatial-attention maps over the image."
        ),
    )
    ex.add_argument("image", type=Path, help="an image (TIFF, PNG, JPEG)")
    ex.add_argument("--model", type=Path, required=True, help="checkpoint, e.g. models/custom.pt")
    ex.add_argument(
        "--out",
        type=Path,
        default=Path("explanation"),
        help="output directory (default: %(default)s)",
    )
    ex.add_argument(
        "--top",
        type=int,
        default=6,
        help="strongest channels shown per module (default: %(default)s)",
    )
    ex.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ex.set_defaults(run=_explain)

    xp = sub.add_parser(
        "export",
        help="a weights-only copy of a checkpoint (no optimizer state; for sharing)",
        description=(
            "Write a checkpoint without optimizer, scheduler and scaler state (about a third "
            "of the size for the custom model). It predicts identically and loads anywhere a "
            "training checkpoint does; it cannot resume training. The best checkpoints "
            "(models/<model>.pt) are already written this way; use it on a *_last.pt."
        ),
    )
    xp.add_argument("checkpoint", type=Path, help="training checkpoint, e.g. models/custom_last.pt")
    xp.add_argument("out", type=Path, help="file to write")
    xp.set_defaults(run=_export)

    gl = sub.add_parser(
        "get-livecell",
        help="download real LIVECell (images.zip + COCO annotations) into a data root",
        description=(
            "Download LIVECell's images.zip and livecell_coco_{train,val,test}.json into OUT "
            "in LIVECell's layout: resumes an interrupted download, checks size and the "
            "server's MD5 ETag, refuses zip members that would land outside OUT. A rerun "
            "skips what is already there."
        ),
    )
    gl.add_argument("out", type=Path, metavar="OUT", help="data root to create, e.g. data/livecell")
    gl.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="the LIVECell_dataset_2021 URL (default: LIVECell's public bucket)",
    )
    gl.add_argument("--keep-zip", action="store_true", help="keep images.zip after unpacking")
    gl.set_defaults(run=_get_livecell)
    return p


def _postprocess_args(parser: argparse.ArgumentParser) -> None:
    """--score, --mode and --set: the post-processing, by default what the checkpoint
    recorded of params.yaml's `predict` section (the pipeline's settings at training)."""
    parser.add_argument(
        "--score",
        type=float,
        default=None,
        help="the operating threshold: a detection scoring above it is a cell (default: the "
        "checkpoint's predict.score_thresh, the one the pipeline's metrics and growth count at)",
    )
    parser.add_argument(
        "--mode",
        choices=("stitched", "whole"),
        default=None,
        help="stitched: overlapping tiles stitched back, the pipeline's way; whole: one pass "
        "on the full image (~3x faster on CPU); default: the checkpoint's predict.mode",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any other key of the checkpoint's predict section, e.g. --set "
        "min_owned=0.5 --set nms_thresh=0.6 (repeatable; see params.yaml)",
    )


def _overrides(args) -> dict:
    """The post-processing a command overrides: {predict key: value}."""
    import yaml

    out = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LivecellsegError(f"--set {item}: give KEY=VALUE, e.g. --set min_owned=0.5")
        out[key.strip().removeprefix("predict.")] = yaml.safe_load(value)
    if args.score is not None:
        if not 0 <= args.score <= 1:
            raise LivecellsegError(f"--score {args.score}: give a fraction in [0, 1]")
        out["score_thresh"] = args.score
    if args.mode:
        out["mode"] = args.mode
    return out


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files as given; directories expanded to their images (sorted, not recursive)."""
    from livecellseg.images import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                log.warning("%s: no %s files in this directory", item, "/".join(IMAGE_SUFFIXES))
            files.extend(found)
        else:
            files.append(item)  # a missing file is reported with the other failures
    return files


def _predict(args) -> int:
    from livecellseg.predict import Predictor
    from livecellseg.runtime import pick_device
    from livecellseg.screen import Identity, predict_screen, start_ranks, stop_ranks

    overrides = _overrides(args)
    local_rank, world = start_ranks()  # several processes under torchrun
    try:
        device = pick_device(args.device, local_rank)
        predictor, ckpt = Predictor.from_checkpoint(args.model, device, overrides=overrides)
        if predictor.training_look is None:
            log.warning(
                "%s records no description of its training data: images unlike it are not "
                "flagged (retrain it with this livecellseg)",
                args.model,
            )
        log.info(
            "%s model (%s, epoch %s), %s mode, score > %.2f, %s%s",
            ckpt["name"],
            args.model,
            ckpt.get("epoch"),
            predictor.settings.stitch.mode,
            predictor.score_thresh,
            device,
            f", {world} processes" if world > 1 else "",
        )
        tally, rows = predict_screen(
            args.inputs,
            args.out,
            predictor,
            Identity.of(args.model, predictor, ckpt["name"]),
            checkpoint=args.model,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    finally:
        stop_ranks()
    if rows:  # rank 0
        if len(rows) <= 20:
            _print_table(rows)
        print(
            f"{tally.done + tally.skipped} of {len(rows)} images segmented -> {args.out} "
            "(summary.csv)"
            + (f"; {tally.skipped} of them done before (skipped)" if tally.skipped else "")
            + (f"; {tally.failed} could not be read (see above)" if tally.failed else "")
            + (f"; {tally.unlike} unlike the training data" if tally.unlike else "")
        )
    return 1 if tally.failed else 0


def _growth(args) -> int:

    from tqdm import tqdm

    from livecellseg.growth import analyse, describe, parse_names, write_growth
    from livecellseg.predict import Predictor
    from livecellseg.runtime import pick_device

    files = collect_images(args.inputs)
    if not files:
        raise LivecellsegError(
            f"no images found in {' '.join(map(str, args.inputs))}; pass image files or "
            "directories holding them"
        )
    points = parse_names(files, args.pattern)  # before the model loads
    predictor, ckpt = Predictor.from_checkpoint(
        args.model, pick_device(args.device), overrides=_overrides(args)
    )
    mode = predictor.settings.stitch.mode
    log.info(
        "%s model on %d images, %s mode, score > %.2f -> %s",
        ckpt["name"],
        len(files),
        mode,
        predictor.score_thresh,
        args.out,
    )

    unlike, current = 0, [None]

    def progress(items):
        for item in tqdm(items, unit="img", desc="growth"):
            current[0] = item[0]  # the image being segmented
            yield item

    def cells(image):
        nonlocal unlike
        seg = predictor.segment(image, mode)
        if seg.look is not None and seg.look.unlike:
            unlike += 1
            log.warning(
                "%s: unlike the training data (distance %.1f > %.1f): its count may be wrong",
                current[0],
                seg.look.distance,
                predictor.training_look.threshold,
            )
        return seg.det.take(seg.det.above(predictor.score_thresh)).rles

    growth = analyse(files, points, cells, progress=progress)
    for reason in growth.skipped:
        log.error("skipped: %s", reason)
    write_growth(growth, args.out)
    for name, fit in growth.fits.items():
        print(describe(name, fit))
    print(
        f"{len(growth.rows)} of {len(files)} images -> {args.out}"
        + (f"; {len(growth.skipped)} skipped (see above)" if growth.skipped else "")
        + (f"; {unlike} unlike the training data (see above)" if unlike else "")
    )
    return 1 if growth.skipped else 0


def finetune_settings(args):
    """The finetune section of --params with the command's overrides, and evaluate.iou_thresh."""
    from dataclasses import asdict

    from livecellseg.config import FinetuneConfig, load_params, parse_section

    params = load_params(args.params)
    overrides = {
        key: value
        for key in ("epochs", "tiles_per_epoch", "lr_ratio", "holdout", "replay")
        if (value := getattr(args, key)) is not None
    }
    cfg = parse_section(FinetuneConfig, asdict(params.finetune) | overrides, "finetune")
    return cfg, params.evaluate.iou_thresh


def _finetune(args) -> int:
    from livecellseg.finetune import expand, finetune, pair_corrections
    from livecellseg.io import write_json

    cfg, iou = finetune_settings(args)
    corrections = pair_corrections(expand(args.inputs), expand(args.labels))
    report = finetune(
        corrections,
        args.model,
        args.out,
        cfg,
        iou_thresh=iou,
        replay=args.replay_tiles,
        device=args.device,
    )
    write_json(args.out.with_suffix(".json"), report)
    b, a = report["before"], report["after"]
    print(f"{'held-out':<10} {'F1':>6} {'precision':>9} {'recall':>6}")
    for label, m in (("before", b), ("after", a)):
        print(f"{label:<10} {m['f1']:6.3f} {m['precision']:9.3f} {m['recall']:6.3f}")
    print(
        f"{report['images']} corrected image(s), {report['cells']} cells, {report['steps']} "
        f"steps in {report['seconds']:.0f} s -> {args.out} (report: "
        f"{args.out.with_suffix('.json')})"
    )
    return 0


def _print_table(rows: list[dict]) -> None:
    cols = ("output", "cells", "mean_area_px", "distance", "seconds", "status")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    widths["status"] = len("status")  # last column: not padded
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def _app(args) -> int:
    from livecellseg.app import launch

    launch(
        models_dir=args.models,
        examples_dir=args.examples,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        device=args.device,
        params=args.params,
        replay_tiles=args.replay_tiles,
    )
    return 0


def _explain(args) -> int:
    from livecellseg.explain import explain_image, save_explanation
    from livecellseg.images import load_image
    from livecellseg.predict import Predictor
    from livecellseg.runtime import pick_device

    image, notes = load_image(args.image)
    for note in notes:
        log.warning("%s: %s", args.image, note)
    device = pick_device(args.device)
    predictor, _ = Predictor.from_checkpoint(args.model, device)
    explanation = explain_image(predictor, image, top=args.top)
    files = save_explanation(explanation, image, args.out)
    print(f"{'module':<16} share of mean |activation|")
    for name, share in explanation.importance.items():
        print(f"{name:<16} {share:6.2f} %")
    print(f"{len(files)} files -> {args.out}")
    return 0


def _export(args) -> int:
    from livecellseg.checkpoint import export_weights

    before, after = export_weights(args.checkpoint, args.out)
    print(f"{args.out}: {after / 2**20:.1f} MB (from {before / 2**20:.1f} MB)")
    return 0


def _get_livecell(args) -> int:
    from livecellseg.livecell import BASE_URL, fetch_livecell

    base_url = (BASE_URL if args.base_url is None else args.base_url).rstrip("/")
    fetch_livecell(args.out, base_url=base_url, keep_zip=args.keep_zip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
