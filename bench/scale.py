"""Benchmark: the data stages (subset, split, tile, evaluate) on a LIVECell-sized data set.

Generates (seeded, in parallel, cached outside the repo) a data root in LIVECell's exact
on-disk form: images/livecell_{train_val,test}_images/<line>/<name>.tif (LZW TIFF) and
annotations/livecell_coco_{train,val,test}.json as on LIVECell's S3 bucket (`annotations` a
list, `original_filename` and `url` per image). At --scale 1: 5,239 image files, 3,253 + 570
+ 1,564 = 5,387 image entries (65 files twice in train, 31 in train and val, 52 twice in test:
3,727 train/val + 1,512 test files, as LIVECell's folders hold; each second entry
re-annotated: vertices jittered ~0.5 px, ~3 % of cells swapped), ~1.6 M polygon annotations,
a few images of ~2,000 cells. Then runs each stage's CLI in its own process and measures wall
time, CPU time and peak RSS (the largest single process of the stage's tree, see MEASURE):
- subset of everything (subset.n_images = the distinct files); split with split.mode official
  and stratified (if params.yaml has split.mode; else once, in its default mode); tile on the
  first N images (train, val, test in order) of the first split's output for several N: fits
  wall = a + b*N extrapolated to all images, likewise disk used, and RSS against the largest
  split's images (--tile-all: all images, once); evaluate on the whole test split against
  generated predictions (cached): every test cell less 8 %, jittered <= 1.5 px, scored
  U(0.3, 1), plus 4 % false positives; at predict.score_thresh 0.5 that is precision ~0.96,
  recall ~0.92 x 5/7 = 0.66, F1 ~0.78, AP50 ~0.88.
Data: --cache (default ~/.cache/livecellseg/scale/v1-scale<scale>-seed<seed>/), reused when
complete; stage outputs and logs in --work (default a temp dir beside it, removed unless --keep).
Targets (at --scale 1): subset peak RSS <= 1 GiB; evaluate wall <= 600 s and peak RSS <= 4 GiB;
tile wall linear in the images (R^2 >= 0.98). Prints one JSON object.

    PYTHONPATH=src python bench/scale.py [--scale 1.0] [--seed 0] [--workers N] [--cache DIR]
        [--work DIR] [--keep] [--tile-images 100,200,400 | --tile-all] [--generate-only]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from pycocotools import mask as mask_utils
from tqdm import tqdm

from livecellseg.coco import iter_annotations, read_header, to_rle
from livecellseg.images import write_gray
from livecellseg.livecell import ANNOTATION_FILES, image_dir
from livecellseg.sample import polygon_annotation

REPO = Path(__file__).resolve().parents[1]
LINES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")
MEAN_CELLS = dict(zip(LINES, (150, 330, 650, 170, 330, 520, 330, 180), strict=True))
W, H = 704, 520
SPLITS = ("train", "val", "test")
ENTRIES = {"train": 3253, "val": 570, "test": 1564}  # LIVECell's image entries per JSON
# LIVECell's second entries: twice in train, in train and val, twice in test (its issues #14,
# #26: 3,253 + 570 entries for 3,727 train/val files, 1,564 for 1,512 test files)
DUP_TRAIN, DUP_TRAIN_VAL, DUP_TEST, TOTAL_ANNS, DENSE = 65, 31, 52, 1_600_000, 6
S3 = "https://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021/"
LICENSE = "https://creativecommons.org/licenses/by-nc/4.0/"
CATEGORIES = [{"supercategory": "cell", "id": 1, "name": "cell"}]
CHUNK, MARKER, GiB = 8, "COMPLETE.json", 1 << 30


def file_name(line: str, code: int) -> str:
    code, crop = divmod(code, 4)
    code, t = divmod(code, 37)  # every 4 h for 6 days
    well, pos = divmod(code, 4)
    days, hours = divmod(4 * t, 24)
    well_name = f"{'ABCDEFGH'[well // 12 % 8]}{1 + well % 12}"
    return f"{line}_Phase_{well_name}_{1 + pos}_{days:02d}d{hours:02d}h00m_{1 + crop}.tif"


def plan(scale: float, seed: int) -> dict:
    """Files (line, name, cells) and image entries (split, file, variant, ids), all seeded."""
    rng = np.random.default_rng(seed)
    n_tr, n_va, n_te_entries, dup_tr, dup_tv, dup_te = (
        max(1, round(n * scale)) for n in (*ENTRIES.values(), DUP_TRAIN, DUP_TRAIN_VAL, DUP_TEST)
    )
    n_train_files, n_val_only, n_te = n_tr - dup_tr, n_va - dup_tv, n_te_entries - dup_te
    if n_train_files < dup_tr + dup_tv or n_val_only < 0 or n_te < dup_te:
        raise SystemExit(f"--scale {scale} is too small for the duplicates; use >= 0.005")
    n_files = n_train_files + n_val_only + n_te
    lines = [LINES[i] for i in rng.integers(0, len(LINES), n_files)]
    codes = {line: iter(rng.choice(4 * 37 * 4 * 96, n_files, replace=False)) for line in LINES}
    names = [file_name(line, int(next(codes[line]))) for line in lines]
    dirs = ["train"] * (n_train_files + n_val_only) + ["test"] * n_te
    tr, va = range(n_train_files), range(n_train_files, n_train_files + n_val_only)
    te = range(n_train_files + n_val_only, n_files)
    entries = {  # (file, variant): variant 1 is the second annotation of a file
        "train": [(f, 0) for f in tr] + [(f, 1) for f in tr[:dup_tr]],
        "val": [(f, 1) for f in tr[dup_tr : dup_tr + dup_tv]] + [(f, 0) for f in va],
        "test": [(f, 0) for f in te] + [(f, 1) for f in te[:dup_te]],
    }
    entries = {s: [e[i] for i in rng.permutation(len(e))] for s, e in entries.items()}
    mult = np.bincount([f for e in entries.values() for f, _ in e], minlength=n_files)
    sigma = 0.6
    mu = np.log([MEAN_CELLS[line] for line in lines]) - sigma**2 / 2
    cells = rng.lognormal(mu, sigma)
    dense = rng.choice(n_files, max(1, round(DENSE * scale)), replace=False)
    cells[dense] = rng.uniform(1950, 2000, len(dense))
    target = TOTAL_ANNS * sum(map(len, entries.values())) / sum(ENTRIES.values())
    rest = np.ones(n_files, bool)
    rest[dense] = False
    for _ in range(8):  # rescale the others to hit the total, clipped to [0, 2000]
        need = target - (cells[dense] * mult[dense]).sum()
        cells[rest] = np.clip(cells[rest] * need / (cells[rest] * mult[rest]).sum(), 0, 1990)
    cells = np.rint(cells).astype(int)
    n_entries = sum(map(len, entries.values()))
    image_ids = iter(rng.permutation(n_entries) + 1)
    by_file = defaultdict(list)  # file -> [(split, variant, image id)]
    for s in SPLITS:
        entries[s] = [(f, v, int(next(image_ids))) for f, v in entries[s]]
        for f, v, image_id in entries[s]:
            by_file[f].append((s, v, image_id))
    base, ann_base = 1, {}
    for f in range(n_files):  # annotation ids in generation order, unique over the files
        for _, _, image_id in sorted(by_file[f], key=lambda e: e[1]):
            ann_base[image_id] = base
            base += int(cells[f])
    files = [
        (f, lines[f], names[f], dirs[f], int(cells[f]), sorted(by_file[f], key=lambda e: e[1]))
        for f in range(n_files)
    ]
    return {"files": files, "entries": entries, "ann_base": ann_base}


def ellipse(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """A cell-like polygon of 12-30 vertices, clipped to the frame: (k, 2) x, y."""
    k = int(rng.integers(12, 31))
    t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi)
    a, rot = rng.uniform(1.0, 1.4), rng.uniform(0, np.pi)
    rad = r * (1 + 0.06 * rng.standard_normal(k))
    x, y = a * rad * np.cos(t), rad / a * np.sin(t)
    c, s = np.cos(rot), np.sin(rot)
    return clip(np.stack([cx + c * x - s * y, cy + s * x + c * y], 1))


def clip(poly: np.ndarray) -> np.ndarray:
    return np.clip(poly, 0, [W - 1, H - 1])


def cell_polygons(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """n cells on a jittered grid, radius from the density (~5.5 px at 2,000, <= 20 px)."""
    if n == 0:
        return []
    d = np.sqrt(W * H / n)
    cols, rows = int(np.ceil(W / d)), int(np.ceil(H / d))
    sites = rng.choice(rows * cols, n, replace=False)
    cx = (sites % cols + 0.5 + rng.uniform(-0.15, 0.15, n)) * W / cols
    cy = (sites // cols + 0.5 + rng.uniform(-0.15, 0.15, n)) * H / rows
    r = min(20.0, 0.42 * d) * rng.uniform(0.75, 1.05, n)
    return [ellipse(rng, cx[i], cy[i], r[i]) for i in range(n)]


def reannotate(rng: np.random.Generator, polys: list[np.ndarray]) -> list[np.ndarray]:
    """A second annotation of the same picture: ~3 % of cells dropped, as many added, jittered."""
    swap = round(0.03 * len(polys))
    keep = np.sort(rng.permutation(len(polys))[swap:])
    out = [clip(polys[i] + rng.normal(0, 0.5, polys[i].shape)) for i in keep]
    return out + [
        ellipse(rng, rng.uniform(0, W), rng.uniform(0, H), rng.uniform(5, 12)) for _ in range(swap)
    ]


def generate_chunk(job: tuple) -> list[tuple[int, str]]:
    """Write the TIFFs of some files; return (image id, annotations' JSON text) per entry."""
    root, seed, files, ann_base = job
    out = []
    for f, line, name, split, n_cells, entries in files:
        rng = np.random.default_rng([seed, f])
        polys = cell_polygons(rng, n_cells)
        img = rng.integers(120, 137, (H, W), dtype=np.uint8)
        if polys:
            rles = mask_utils.frPyObjects([p.ravel().tolist() for p in polys], H, W)
            mask = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
            img[mask] -= 45
        write_gray(Path(root) / image_dir(split) / line / name, img)
        for _, variant, image_id in entries:
            ring = polys if variant == 0 else reannotate(np.random.default_rng([seed, f, 1]), polys)
            anns = (
                polygon_annotation(ann_base[image_id] + k, image_id, p) for k, p in enumerate(ring)
            )
            out.append((image_id, ", ".join(json.dumps(a) for a in anns)))
    return out


def generate(root: Path, scale: float, seed: int, workers: int) -> dict:
    """Build the data root in a temporary sibling, then rename it; return its facts."""
    t0 = time.perf_counter()
    p = plan(scale, seed)
    for stale in root.parent.glob(f"{root.name}.tmp-*"):  # left by killed runs
        pid = int(stale.name.rsplit("-", 1)[1])
        if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    for split in ("train", "test"):
        for line in LINES:
            (tmp / image_dir(split) / line).mkdir(parents=True, exist_ok=True)
    (tmp / "annotations").mkdir()
    files = {f[0]: f for f in p["files"]}
    split_of = {image_id: s for s, e in p["entries"].items() for _, _, image_id in e}
    handles, first = {}, dict.fromkeys(SPLITS, True)
    for s in SPLITS:
        images = []
        for f, _, image_id in p["entries"][s]:
            _, line, name, d, _, _ = files[f]
            path = f"{image_dir(d)}/{line}/{name}"
            orig = name.rsplit("_", 1)[0] + "_orig.tif"
            images.append({"id": image_id, "width": W, "height": H, "file_name": name,
                           "original_filename": orig, "url": S3 + path})  # fmt: skip
        head = {
            "info": {"description": "LIVECell dataset (synthetic, bench/scale.py)", "year": 2021},
            "licenses": [{"id": 1, "name": "CC BY-NC 4.0", "url": LICENSE}],
            "images": images,
        }
        handles[s] = open(tmp / "annotations" / f"livecell_coco_{s}.json", "w")  # noqa: SIM115
        handles[s].write(json.dumps(head)[:-1] + ', "annotations": [')
    jobs = [
        (str(tmp), seed, p["files"][i : i + CHUNK], p["ann_base"])
        for i in range(0, len(p["files"]), CHUNK)
    ]
    with ProcessPoolExecutor(workers) as pool:
        for chunk in tqdm(pool.map(generate_chunk, jobs), total=len(jobs), desc="generate"):
            for image_id, text in chunk:
                s = split_of[image_id]
                if text:
                    handles[s].write(("" if first[s] else ", ") + text)
                    first[s] = False
    for f in handles.values():
        f.write('], "categories": ' + json.dumps(CATEGORIES) + "}")
        f.close()
    facts = describe(p, tmp)
    facts["generate_s"] = round(time.perf_counter() - t0, 1)
    facts["generate_s_per_100_images"] = round(100 * facts["generate_s"] / len(p["files"]), 2)
    (tmp / MARKER).write_text(json.dumps(facts, indent=2))
    os.rename(tmp, root)
    return facts


def describe(p: dict, root: Path) -> dict:
    cells = {f[0]: f[4] for f in p["files"]}
    names = {f[0]: f[2] for f in p["files"]}
    per = {s: [f for f, _, _ in e] for s, e in p["entries"].items()}
    densest = max(cells, key=cells.get)
    return {
        "image_entries": {s: len(e) for s, e in per.items()},
        "distinct_files": len(p["files"]),
        "duplicates_within_train": len(per["train"]) - len(set(per["train"])),
        "duplicates_train_val": len(set(per["train"]) & set(per["val"])),
        "duplicates_within_test": len(per["test"]) - len(set(per["test"])),
        "annotations": {s: sum(cells[f] for f in e) for s, e in per.items()},
        "annotations_total": sum(cells[f] for e in per.values() for f in e),
        "densest_image": {"file_name": names[densest], "cells": cells[densest]},
        "json_bytes": {n: (root / "annotations" / n).stat().st_size for n in ANNOTATION_FILES},
        "image_bytes": sum(q.stat().st_size for q in (root / "images").rglob("*.tif")),
    }


def predict_chunk(job: tuple) -> str:
    """Perturbed GT of some test images as COCO results (JSON text, without brackets)."""
    seed, items = job
    out = []
    for image_id, polys in items:
        rng = np.random.default_rng([seed, 99, image_id])
        fps = [
            ellipse(rng, rng.uniform(0, W), rng.uniform(0, H), rng.uniform(4, 10))
            for _ in range(round(0.04 * len(polys)))
        ]
        moved = [clip(q + rng.uniform(-1.5, 1.5, q.shape)) for q in polys if rng.random() >= 0.08]
        for q in moved + fps:
            rle = to_rle([q.ravel().tolist()], H, W)
            seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            result = {"image_id": image_id, "category_id": 1, "segmentation": seg}
            out.append(json.dumps(result | {"score": round(float(rng.uniform(0.3, 1)), 4)}))
    return ", ".join(out)


def predictions(cache: Path, test_polys: dict, seed: int, workers: int) -> Path:
    """The predictions for the test split's images (cached by their ids and cell counts)."""
    key = json.dumps(sorted((i, len(p)) for i, p in test_polys.items())).encode()
    path = cache / f"predictions-{hashlib.sha1(key).hexdigest()[:12]}.json"
    if path.exists():
        return path
    items = sorted(test_polys.items())
    jobs = [(seed, items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)]
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with ProcessPoolExecutor(workers) as pool, open(tmp, "w") as f:
        f.write("[")
        first = True
        for text in tqdm(pool.map(predict_chunk, jobs), total=len(jobs), desc="predictions"):
            if text:
                f.write(("" if first else ", ") + text)
                first = False
        f.write("]")
    os.replace(tmp, path)
    return path


def scan_split(split_dir: Path, first_n: int = 0, polys: bool = False) -> dict:
    """Stream a split dir: images per split, annotation count, the annotations of the first
    `first_n` images (train, val, test in order), and (polys) the test cells' polygons."""
    out = {"images": {}, "annotations": 0, "kept": {}, "test_polys": defaultdict(list)}
    budget = first_n
    for s in SPLITS:
        path = split_dir / f"{s}.json"
        images, _, form = read_header(path)
        out["images"][s] = images
        keep = {im["id"] for im in images[: max(budget, 0)]}
        budget -= len(images)
        out["kept"][s] = []
        for a in iter_annotations(path, form):
            out["annotations"] += 1
            if a["image_id"] in keep:
                out["kept"][s].append(a)
            if polys and s == "test":
                ring = np.asarray(a["segmentation"][0], np.float64).reshape(-1, 2)
                out["test_polys"][a["image_id"]].append(ring)
        if polys and s == "test":
            for im in images:
                out["test_polys"].setdefault(im["id"], [])
    return out


# Runs a stage module as __main__ and, at exit, writes its peak RSS: the high-water mark of
# its own memory (VmHWM) and the largest of its waited-for children (ProcessPoolExecutor's).
# Not os.wait4's ru_maxrss alone: Linux carries the parent's RSS high-water mark into a
# (v)forked child across exec, so every stage would read at least this script's own peak.
MEASURE = """
import atexit, json, os, resource, runpy, sys
def peak():
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ["SCALE_RSS_OUT"], "w") as f:
        json.dump({"self_kb": hwm, "children_kb": kids}, f)
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_stage(work: Path, label: str, stage: str, **options) -> dict:
    """Run stages.<stage> --<option> <value> ... from the repo root in its own process: wall
    time, CPU time and peak RSS. On failure: the tail of its log, and exit 1."""
    log, rss = work / f"{label}.log", work / f"{label}.rss.json"
    cmd = [sys.executable, "-c", MEASURE, f"stages.{stage}"]
    cmd += [str(v) for k, value in options.items() for v in (f"--{k}", value)]
    print(f"[scale] {label}: stages.{stage} {' '.join(cmd[4:])}", file=sys.stderr)
    t = time.perf_counter()
    with open(log, "w") as f:
        env = {**os.environ, "PYTHONPATH": "src", "SCALE_RSS_OUT": str(rss)}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        print(f"[scale] {label} failed (exit {proc.returncode}), {log}:\n{tail}", file=sys.stderr)
        sys.exit(1)
    peak = json.loads(rss.read_text())
    out = {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_bytes": 1024 * max(peak.values())}  # fmt: skip
    if peak["children_kb"]:  # a pool: the main process and the largest worker apart
        out |= {
            "main_rss_bytes": 1024 * peak["self_kb"],
            "worker_rss_bytes": 1024 * peak["children_kb"],
        }
    return out


def rate(r: dict, n: int) -> dict:
    return r | {"annotations": n, "annotations_per_s": round(n / max(r["wall_s"], 1e-9), 1)}


def disk_bytes(path: Path) -> int:
    return sum(q.stat().st_size for q in path.rglob("*") if q.is_file())


def fit_line(xs: list[int], ys: list[float], at: int, per: str = "image") -> dict:
    """Least squares y = a + b*x, its R^2 and y at x = `at` (None with < 2 distinct xs)."""
    if len(set(xs)) < 2:
        return {"a": None, "b": None, "r2": None, "extrapolated": None, "per": per}
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum((y - a - b * x) ** 2)) / ss_tot if ss_tot else 1.0
    y_at = a + b * at
    y_at = round(y_at, 1) if abs(y_at) < 1e4 else round(y_at)
    return {"a": float(f"{a:.4g}"), "b": float(f"{b:.4g}"), "r2": round(r2, 4),
            "extrapolated": y_at, "per": per}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="1.0 = LIVECell's size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="for generating")
    p.add_argument("--cache", type=Path, help="data root (default ~/.cache/livecellseg/scale/..)")
    p.add_argument("--work", type=Path, help="stage outputs (default: a temp dir by the cache)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--tile-images", default="100,200,400", help="tile the first N images")
    p.add_argument("--tile-all", action="store_true", help="tile every image instead")
    p.add_argument("--generate-only", action="store_true", help="build the data, print facts")
    args = p.parse_args()
    default = Path.home() / ".cache/livecellseg/scale" / f"v1-scale{args.scale:g}-seed{args.seed}"
    cache = (args.cache or default).expanduser().resolve()
    out = {"benchmark": "scale", "scale": args.scale, "seed": args.seed, "cache": str(cache)}
    out["generated_this_run"] = not (cache / MARKER).exists()
    if not out["generated_this_run"]:
        facts = json.loads((cache / MARKER).read_text())
    elif cache.exists():  # complete roots are renamed into place with their marker
        raise SystemExit(f"{cache}: not a root made by this script (no {MARKER}); move it away")
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        facts = generate(cache, args.scale, args.seed, args.workers)
    out["data"] = facts
    if args.generate_only:
        print(json.dumps(out, indent=2))
        return

    work = (args.work or Path(tempfile.mkdtemp(prefix="work-", dir=cache.parent))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out["stages"], out["notes"] = run_stages(args, cache, work, facts)
    r2 = out["stages"]["tile"]["fit"]["wall_s"]["r2"]
    subset, evaluate = out["stages"]["subset"], out["stages"]["evaluate"]
    out["targets"] = {
        "subset_peak_rss_le_1GiB": subset["peak_rss_bytes"] <= GiB,
        "evaluate_wall_le_600s": evaluate["wall_s"] <= 600,
        "evaluate_peak_rss_le_4GiB": evaluate["peak_rss_bytes"] <= 4 * GiB,
        "tile_linear_r2_ge_0.98": None if r2 is None else r2 >= 0.98,
    }
    if args.scale != 1:
        out["notes"].append("the targets are for --scale 1")
    out["work"] = str(work) if args.keep else None
    if not args.keep:
        shutil.rmtree(work)
    print(json.dumps(out, indent=2))


def run_stages(args: argparse.Namespace, cache: Path, work: Path, facts: dict) -> tuple:
    """subset, split (each mode), tile (for each N), evaluate: {stage: measures}, notes."""
    base, notes = yaml.safe_load((REPO / "params.yaml").read_text()), []
    base["workers"], base["data"]["source"] = 0, "livecell"
    base["subset"].update(
        n_images=facts["distinct_files"], cell_lines=[], annotation_files=list(ANNOTATION_FILES)
    )
    modes = ("official", "stratified") if "mode" in base["split"] else ("default",)
    if modes == ("default",):
        notes.append("params.yaml has no split.mode: split ran once, in its default mode")
    params = {}
    for mode in modes:
        cfg = copy.deepcopy(base)
        if mode != "default":
            cfg["split"]["mode"] = mode
        params[mode] = work / f"params-{mode}.yaml"
        params[mode].write_text(yaml.safe_dump(cfg, sort_keys=False))
    main_params, images, stages = params[modes[0]], work / "subset/images", {}

    r = run_stage(work, "subset", "subset", params=main_params, raw=cache, out=work / "subset",
                  report=work / "subset.json")  # fmt: skip
    report = json.loads((work / "subset.json").read_text())
    stages["subset"] = rate(r, report["annotations_read"]) | {
        k: report.get(k) for k in ("images_chosen", "annotations_kept", "skipped", "duplicates")
    }
    n_all = report["images_chosen"]
    ns = sorted({min(int(n), n_all) for n in args.tile_images.split(",")})
    ns = [n_all] if args.tile_all else ns
    for mode in modes:
        split = work / f"split-{mode}"
        r = run_stage(work, f"split-{mode}", "split", params=params[mode],
                      subset=work / "subset/annotations.json", out=split)  # fmt: skip
        main = mode == modes[0]
        scan = scan_split(split, 0 if args.tile_all else max(ns), polys=main)
        stages[f"split_{mode}"] = rate(r, scan["annotations"]) | {
            "images": {s: len(v) for s, v in scan["images"].items()}
        }
        if main:
            official, main_split = scan, split

    runs = []
    for n in ns:
        tile_split = main_split if args.tile_all else first_images(official, n, work)
        tiles = work / f"tiles-{n}"
        r = run_stage(work, f"tile-{n}", "tile", params=main_params, split=tile_split,
                      images=images, out=tiles, report=work / f"tile-{n}.json")  # fmt: skip
        report = json.loads((work / f"tile-{n}.json").read_text())
        total = report["total"]
        runs.append(rate(r, total["source_instances"]) | {
            "images": n, "s_per_image": round(r["wall_s"] / n, 4), "tiles": total["tiles"],
            "disk_bytes": disk_bytes(tiles),
            "largest_split_images": max(report[s]["images"] for s in SPLITS)})  # fmt: skip
        if not args.keep:
            shutil.rmtree(tiles)
    xs, largest = [t["images"] for t in runs], [t["largest_split_images"] for t in runs]
    n_largest = max(len(v) for v in official["images"].values())
    fit = {  # the main process holds a split's tile annotations: its RSS grows with the split
        "wall_s": fit_line(xs, [t["wall_s"] for t in runs], n_all),
        "disk_bytes": fit_line(xs, [t["disk_bytes"] for t in runs], n_all),
        "main_rss_bytes": fit_line(largest, [t.get("main_rss_bytes", 0) for t in runs], n_largest,
                                   "image of the largest split"),
    }  # fmt: skip
    stages["tile"] = {"all_images": n_all, "runs": runs, "fit": fit}

    t = time.perf_counter()
    pred = predictions(cache, official["test_polys"], args.seed, args.workers)
    stages["predictions"] = {"path": str(pred), "bytes": pred.stat().st_size,
                             "make_s": round(time.perf_counter() - t, 1)}  # fmt: skip
    r = run_stage(work, "evaluate", "evaluate", params=main_params, predictions=pred,
                  split=main_split / "test.json", images=images, metrics=work / "eval.json",
                  plots=work / "plots")  # fmt: skip
    m = json.loads((work / "eval.json").read_text())
    n_pred = pred.read_bytes().count(b'"image_id"')
    stages["evaluate"] = rate(r, m["gt"] + n_pred) | {
        "gt_cells": m["gt"], "predictions": n_pred,
        "metrics": {k: round(m[k], 4) for k in ("f1", "precision", "recall", "miou", "ap", "ap50")},
    }  # fmt: skip
    return stages, notes


def first_images(split: dict, n: int, work: Path) -> Path:
    """A split dir of the first n images (train, then val, then test) and their cells."""
    out, left = work / f"split-first{n}", n
    out.mkdir(exist_ok=True)
    for s in SPLITS:
        images = split["images"][s][: max(left, 0)]
        left -= len(split["images"][s])
        ids = {im["id"] for im in images}
        anns = [a for a in split["kept"][s] if a["image_id"] in ids]
        doc = {"images": images, "annotations": anns, "categories": CATEGORIES}
        (out / f"{s}.json").write_text(json.dumps(doc))
    return out


if __name__ == "__main__":
    main()
