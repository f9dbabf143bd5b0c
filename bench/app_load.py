"""Benchmark: the app under load. `livecellseg app` runs as its own process on 127.0.0.1; a
bounded local client (a pool of `--clients` threads, one Gradio session each, as browsers
have) sends `--requests` uploads at once, each followed by a segmentation, in two rounds.

Checks: every request completes without an error, requests for the same image get the same
cell count, the same image requested at once is predicted once (the app waits on the first),
and the server's memory after round 2 is that after round 1 (no growth beyond the caches).
Reports the server's peak RSS (sampled every 50 ms, with its children) and latencies. Prints
JSON.

    python bench/app_load.py [--models models] [--images 5] [--requests 20] [--mode whole]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(models: Path, examples: Path, port: int, log_path: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("livecellseg")
    log = log_path.open("w")
    env = os.environ | {"GRADIO_TEMP_DIR": tempfile.mkdtemp(prefix="bench-load-gradio-")}
    proc = subprocess.Popen(
        [exe, "app", "--models", models, "--examples", examples, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(
                    f"the app did not start:\n{log_path.read_text()[-3000:]}"
                ) from None
            time.sleep(0.5)


class RssSampler(threading.Thread):
    """Peak resident memory of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.05)


def one_request(url: str, image: Path, checkpoint: str, mode: str, score: float) -> dict:
    from gradio_client import Client, handle_file

    t0 = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(image)), api_name="/upload")
        out = client.predict(checkpoint, mode, score, api_name="/segment")
        return {"image": image.name, "cells": int(out[1]), "s": time.perf_counter() - t0}
    except Exception as e:  # reported, not raised: the round goes on
        return {"image": image.name, "error": f"{type(e).__name__}: {e}"}


def run_round(url, images, n, clients, checkpoint, mode, score) -> list[dict]:
    jobs = [images[i % len(images)] for i in range(n)]
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda im: one_request(url, im, checkpoint, mode, score), jobs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--checkpoint", default=None, help="dropdown label (default: the first)")
    p.add_argument("--split", type=Path, default=Path("data/split/test.json"))
    p.add_argument("--image-dir", type=Path, default=Path("data/subset/images"))
    p.add_argument("--images", type=int, default=5, help="distinct test images")
    p.add_argument("--requests", type=int, default=20, help="requests per round, sent at once")
    p.add_argument("--clients", type=int, default=20, help="client threads (the bound)")
    p.add_argument("--mode", default="whole", choices=["stitched", "whole"])
    p.add_argument("--score", type=float, default=0.4)
    args = p.parse_args()

    from livecellseg.app import find_checkpoints

    checkpoint = args.checkpoint or next(iter(find_checkpoints(args.models)))
    names = [im["file_name"] for im in json.loads(args.split.read_text())["images"]]
    images = [args.image_dir / n for n in names[: args.images]]
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_app(args.models, args.image_dir, port, work / "app.log")
    sampler = RssSampler(proc.pid)
    try:
        idle = sampler.rss()
        sampler.start()
        rounds, after = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            results = run_round(
                url, images, args.requests, args.clients, checkpoint, args.mode, args.score
            )
            rounds.append((time.perf_counter() - t0, results))
            time.sleep(1)
            after.append(sampler.rss())
    finally:
        sampler.stop.set()
        proc.terminate()
        proc.wait(timeout=30)
    log = (work / "app.log").read_text()
    errors = [r for _, rs in rounds for r in rs if "error" in r]
    counts: dict[str, set] = {}
    for _, rs in rounds:
        for r in rs:
            if "cells" in r:
                counts.setdefault(r["image"], set()).add(r["cells"])
    result = {
        "url": url,
        "checkpoint": checkpoint,
        "mode": args.mode,
        "requests_per_round": args.requests,
        "clients": args.clients,
        "distinct_images": len(images),
        "errors": errors,
        "same_count_per_image": all(len(c) == 1 for c in counts.values()),
        "cells": {k: sorted(v) for k, v in counts.items()},
        "predictions_made": log.count("predicted "),
        "round_wall_s": [round(w, 1) for w, _ in rounds],
        "latency_s": [
            {
                "median": round(statistics.median(r["s"] for r in rs if "s" in r), 2),
                "max": round(max(r["s"] for r in rs if "s" in r), 2),
            }
            for _, rs in rounds
            if any("s" in r for r in rs)
        ],
        "rss_mb": {
            "idle_before": round(idle / 2**20),
            "after_round_1": round(after[0] / 2**20),
            "after_round_2": round(after[1] / 2**20),
            "peak": round(sampler.peak / 2**20),
        },
        "growth_round_2_mb": round((after[1] - after[0]) / 2**20),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
