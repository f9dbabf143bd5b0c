"""Benchmark: `livecellseg predict` on a plate of images, as a screen runs it.

Makes a plate of --images images (the sample's test split repeated, hard links in well
folders), then for each mode (stitched, whole) and process count (1, or N under torchrun on
one node) runs the real command in a fresh process tree and measures: wall time, images/s
(overall, and steady: between the first and last image written), the peak memory of the
process tree (every rank and DataLoader worker) and of the main process at a quarter of the
images and at the end (flat memory: the two agree), and the share flagged as unlike the
training data. With --kill it SIGKILLs the first configuration's main process halfway, as
an out-of-memory killer would, reruns the same command, and reports how many images were
done at the kill, how many the rerun skipped, and whether the outputs equal the
uninterrupted run's. Prints JSON.

    python bench/screen.py --model models/custom.pt [--images 1000] [--procs 1 2]
        [--modes stitched whole] [--kill] [--out docs/screen.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from livecellseg.screen import equal_outputs

ROOT = Path(__file__).resolve().parents[1]


def make_plate(split: Path, images: Path, n: int, plate: Path) -> int:
    """n images in 96-well-like folders, hard links (copies across file systems)."""
    files = [images / im["file_name"] for im in json.loads(split.read_text())["images"]]
    for i in range(n):
        src = files[i % len(files)]
        dst = plate / f"W{i % 24:02d}" / f"{src.stem}_t{i:05d}{src.suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy(src, dst)
    return n


def command(plate: Path, out: Path, model: Path, mode: str, procs: int, workers: int) -> list:
    args = ["predict", str(plate), "--model", str(model), "--out", str(out), "--mode", mode]
    args += ["--workers", str(workers)]
    if procs == 1:
        return [sys.executable, "-m", "livecellseg", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(procs),
        "-m",
        "livecellseg",
        *args,
    ]


class Watch(threading.Thread):
    """Samples the process tree's memory and the images written, every 0.2 s."""

    def __init__(self, proc: subprocess.Popen, out: Path, n: int):
        super().__init__(daemon=True)
        self.proc, self.out, self.n = psutil.Process(proc.pid), out, n
        self.peak_tree = self.peak_main = 0
        self.main_at_quarter = None
        self.first = self.last = None
        self.done = 0

    def run(self) -> None:
        while True:
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = {p.pid: p.memory_info().rss for p in procs}
            except psutil.Error:
                break
            # the main process: the one that loads the model (a rank under torchrun)
            main = max(rss.values())
            self.peak_tree = max(self.peak_tree, sum(rss.values()))
            self.peak_main = max(self.peak_main, main)
            done = len(list(self.out.rglob("*_coco.json"))) if self.out.exists() else 0
            now = time.perf_counter()
            if done and self.first is None:
                self.first = now
            if done > self.done:
                self.last, self.done = now, done
            if self.main_at_quarter is None and done >= self.n // 4:
                self.main_at_quarter = main
            self.main_end = main
            time.sleep(0.2)


def run_once(cmd: list, out: Path, n: int, env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    watch = Watch(proc, out, n)
    watch.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    watch.join(timeout=2)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    ok = [r for r in rows if r["status"].startswith("ok")]
    steady = (watch.done - 1) / (watch.last - watch.first) if watch.done > 1 else None
    return {
        "images": len(rows),
        "segmented": len(ok),
        "wall_s": round(wall, 1),
        "images_per_s": round(len(ok) / wall, 3),
        "steady_images_per_s": round(steady, 3) if steady else None,
        "peak_rss_tree_mb": round(watch.peak_tree / 2**20),
        "peak_rss_main_mb": round(watch.peak_main / 2**20),
        "rss_main_at_quarter_mb": round((watch.main_at_quarter or 0) / 2**20),
        "rss_main_at_end_mb": round(getattr(watch, "main_end", 0) / 2**20),
        "unlike_training": sum(r["unlike_training"] == "yes" for r in ok),
        "median_distance": _median([float(r["distance"]) for r in ok if r["distance"]]),
    }


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return round(xs[len(xs) // 2], 2) if xs else None


def kill_and_resume(cmd: list, out: Path, n: int, env: dict, reference: Path) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while len(list(out.rglob("*_coco.json"))) < n // 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(list(out.rglob("*_coco.json")))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    skipped = next(
        int(line.split(" done before")[0].rsplit(" ", 1)[-1])
        for line in r.stderr.splitlines()
        if "done before (skipped)" in line
    )
    return {
        "killed_after_images": at_kill,
        "rerun_skipped": skipped,
        "rerun_segmented": n - skipped,
        "images_lost": at_kill - skipped,  # written before the kill but redone
        "outputs_equal_uninterrupted": equal_outputs(reference, out) == [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models/custom.pt")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--modes", nargs="+", default=["stitched", "whole"])
    ap.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill", action="store_true")
    ap.add_argument("--kill-mode", default="whole", help="mode of the kill run (1 process)")
    ap.add_argument("--split", type=Path, default=ROOT / "data/split/test.json")
    ap.add_argument("--source", type=Path, default=ROOT / "data/subset/images")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    env = os.environ | {"PYTHONHASHSEED": "0"}
    if args.kill and (args.kill_mode, 1) not in {(m, p) for m in args.modes for p in args.procs}:
        raise SystemExit(
            "--kill compares with the uninterrupted run: include it in --modes/--procs"
        )
    with tempfile.TemporaryDirectory(prefix="bench-screen-") as tmp:
        tmp = Path(tmp)
        n = make_plate(args.split, args.source, args.images, tmp / "plate")
        runs, outs = [], {}
        for mode in args.modes:
            for procs in args.procs:
                out = tmp / f"{mode}-{procs}"
                cmd = command(tmp / "plate", out, args.model, mode, procs, args.workers)
                result = {"mode": mode, "processes": procs} | run_once(cmd, out, n, env)
                print(json.dumps(result), file=sys.stderr)
                runs.append(result)
                outs[mode, procs] = out
        kill = None
        if args.kill:
            mode = args.kill_mode
            killed = tmp / "killed"
            cmd = command(tmp / "plate", killed, args.model, mode, 1, args.workers)
            kill = {"mode": mode, "processes": 1} | kill_and_resume(
                cmd, killed, n, env, outs[mode, 1]
            )
    result = {
        "bench": "screen",
        "model": str(args.model),
        "images": n,
        "workers": args.workers,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "runs": runs,
        "kill": kill,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
