"""Benchmark: the app's response times, server side (what one Gradio event runs).

For each test image: the first prediction (model already loaded), a repeated request (cache
hit) and slider moves (re-selecting cells at new thresholds, overlay, histogram, downloads).
Targets: slider change <= 0.3 s; the first prediction on a 704x520 image on CPU is reported.
Prints JSON.

    python bench/app.py [--model models/custom.pt] [--images N] [--modes stitched whole]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/custom.pt"))
    p.add_argument("--split", type=Path, default=Path("data/split/test.json"))
    p.add_argument("--image-dir", type=Path, default=Path("data/subset/images"))
    p.add_argument("--images", type=int, default=3, help="test images to use")
    p.add_argument("--modes", nargs="+", default=["stitched", "whole"])
    p.add_argument("--slider", type=int, default=10, help="slider moves per image")
    args = p.parse_args()

    import numpy as np
    from PIL import Image

    from livecellseg.app import Segmenter, area_histogram, respond
    from livecellseg.runtime import peak_memory_bytes

    images = json.loads(args.split.read_text())["images"]
    # the densest images first: the slider's cost grows with the cells on the image
    per_image = {}
    for a in json.loads(args.split.read_text())["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    images.sort(key=lambda im: -per_image.get(im["id"], 0))
    paths = [args.image_dir / im["file_name"] for im in images[: args.images]]

    seg = Segmenter("auto")
    area_histogram(np.ones(3))  # as build_app does at start (imports pandas)
    t0 = time.perf_counter()
    seg.predictor(args.model)
    load_s = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="bench-app-"))
    rng = np.random.default_rng(0)
    result = {"model": str(args.model), "device": str(seg.device), "load_s": round(load_s, 2)}
    for mode in args.modes:
        first, repeat, slider, cells = [], [], [], []
        for path in paths:
            t0 = time.perf_counter()
            respond(seg, path, args.model, mode, 0.4, out)
            first.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            respond(seg, path, args.model, mode, 0.4, out)
            repeat.append(time.perf_counter() - t0)
            for score in rng.uniform(0.05, 0.95, args.slider):
                t0 = time.perf_counter()
                _, view, _, _ = respond(seg, path, args.model, mode, float(score), out)
                # what Gradio then does with them: the histogram table as JSON, the overlay PNG
                area_histogram(view.areas).to_json(orient="split")
                Image.fromarray(view.overlay).save(io.BytesIO(), format="png")
                slider.append(time.perf_counter() - t0)
            _, view, _, _ = respond(seg, path, args.model, mode, 0.4, out)
            cells.append(view.count)
        result[mode] = {
            "first_prediction_s": [round(t, 2) for t in first],
            "repeat_request_s": round(statistics.median(repeat), 3),
            "slider_change_s_median": round(statistics.median(slider), 3),
            "slider_change_s_max": round(max(slider), 3),
            "cells_at_0.4": cells,
            "slider_target_met": max(slider) <= 0.3,
        }
    result["peak_memory_mb"] = round(peak_memory_bytes(seg.device) / 2**20)  # RSS on CPU
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
