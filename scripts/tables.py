"""The documentation's tables, rendered from committed JSON so that they cannot drift.

    python scripts/tables.py            # rewrite every table block in README.md and docs/*.md
    python scripts/tables.py --check    # exit 1, naming each block that differs (what CI tests)

A block is a Markdown table between two marker lines:

    <!-- table: NAME [ARG ...] -->
    | ... |
    <!-- /table -->

NAME picks a renderer below; each reads the JSON it names (`metrics/` from `dvc repro`,
`docs/**/*.json` from the benchmarks) and returns the table. Prose around a block is not
touched: a figure quoted in prose must name its command.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
MODELS = ("custom", "transfer")
LINE_NAMES = {"SKOV3": "SK-OV-3", "SHSY5Y": "SH-SY5Y"}  # as LIVECell's file names spell them
AREA_BINS = (
    ("0-100", "< 100"),
    ("100-200", "100–200"),
    ("200-400", "200–400"),
    ("400-800", "400–800"),
    ("800+", "> 800"),
    ("0-200", "< 200"),
    ("small", '< 324 (LIVECell\'s "small")'),
)


def load(rel: str) -> dict:
    path = ROOT / rel
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {rel}: not found; run the command that writes it (see scripts/tables.py)")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def f3(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def f2(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def n(x) -> str:
    return f"{x:,}"


def line_name(line: str) -> str:
    return LINE_NAMES.get(line, line)


# --- from metrics/ (dvc repro) ---------------------------------------------------------------


def results() -> str:
    rows = []
    for model in MODELS:
        m = load(f"metrics/{model}.json")
        label = model
        if model == "transfer" and not load("metrics/train_transfer/metrics.json")["pretrained"]:
            label = "transfer (no COCO weights)"
        rows.append(
            [
                label,
                f3(m["precision"]),
                f3(m["recall"]),
                f"**{f3(m['f1'])}**",
                f3(m["miou"]),
                f3(m["ap"]),
                f3(m["ap50"]),
            ]
        )
    return table(["model", "P", "R", "F1", "mIoU", "mask AP", "AP50"], rows)


def recall_by_area() -> str:
    m = {model: load(f"metrics/{model}.json") for model in MODELS}
    rows = [
        [label, n(m["custom"]["gt_by_area"][key])]
        + [f2(m[model]["recall_by_area"][key]) for model in MODELS]
        for key, label in AREA_BINS
    ]
    return table(["mask area (px)", "cells", *MODELS], rows)


def per_line() -> str:
    m = {model: load(f"metrics/{model}.json")["per_cell_line"] for model in MODELS}
    rows = []
    for line in sorted(m["custom"]):
        rows.append(
            [line_name(line), n(m["custom"][line]["gt"])]
            + [
                v
                for model in MODELS
                for v in (f3(m[model][line]["f1"]), f3(m[model][line]["recall"]))
            ]
        )
    return table(
        ["cell line", "cells", "custom F1", "custom recall", "transfer F1", "transfer recall"], rows
    )


def _doubling(w: dict) -> str:
    if w.get("doubling_h") is None:
        return "not estimable" + (
            f" ({w['reason'].removeprefix('not estimable: ')})" if w.get("reason") else ""
        )
    text = f"{w['doubling_h']:.1f} ({w['ci95_low_h']:.1f}–{w['ci95_high_h']:.1f})"
    if w.get("error_pct") is not None:
        text += f", {w['error_pct']:+.0f}%"
    return text


def growth_wells() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from livecellseg.sample import LOOKS

    g = load("metrics/growth.json")
    rows = []
    for well, truth in g["truth"]["wells"].items():
        line = well.split()[0]
        known = LOOKS[line].doubling_h if line in LOOKS else "—"
        rows.append(
            [f"{line_name(line)} {well.split()[1]}", f"{known:g}", _doubling(truth)]
            + [_doubling(g[model]["wells"].get(well, {})) for model in MODELS]
        )
    rows.append(
        ["median absolute error", "", ""]
        + [
            f"{g[model]['median_abs_error_pct']:.0f}% ({g[model]['wells_compared']} wells)"
            for model in MODELS
        ]
    )
    return table(["test well", "known (sample)", "ground truth", *MODELS], rows)


# --- from docs/ (benchmarks) -----------------------------------------------------------------


# what each bench/learn.py candidate changes, cumulatively from the design's profile (its JSON
# records the exact `--set` overrides it ran with, under "overrides"); * = tests ran beside it
CANDIDATES = {
    "custom_native_anchors": ("anchors 8–128 px", True),
    "custom_phase_norm_rois128": ("+ phase norm, 128 RoIs", False),
    "custom_rois256_mask16": ("+ 256 RoIs, mask 16", True),
    "custom_magnified": ("+ tiles at 2x, anchors ×2, 28 tiles an epoch", False),
}


def candidates(*names: str) -> str:
    rows = []
    for name in names:
        change, beside = CANDIDATES.get(name, ("`" + name + "`", False))
        c = load(f"docs/learn/{name}.json")["custom"]
        s, t = c["stitched"], c["stitched"]["test"]
        rows.append(
            [
                f"`{name}`",
                change,
                f"{c['train_s'] / 60:.1f}" + ("*" if beside else ""),
                f3(max(e["val_f1"] for e in c["epochs"])),
                f3(t["precision"]),
                f3(t["recall"]),
                f3(t["f1"]),
                f3(t["ap"]),
                f2(s["recall_by_area"]["0-100"]),
                f2(s["recall_by_area"]["100-200"]),
                f3(s["per_cell_line_f1"].get("BV2")),
                f"{s['growth']['median_abs_error_pct']:.0f}%",
            ]
        )
    return table(
        [
            "candidate (`docs/learn/`)",
            "change",
            "training min",
            "val F1",
            "test P",
            "R",
            "F1",
            "mask AP",
            "recall < 100 px",
            "100–200 px",
            "BV2 F1",
            "growth error",
        ],
        rows,
    )


def screen(rel: str = "docs/screen_custom.json") -> str:
    b = load(rel)
    base = {}
    rows = []
    for r in b["runs"]:
        speed = f"{r['images_per_s']:.3f} ({r['steady_images_per_s']:.3f})"
        if r["processes"] == 1:
            base[r["mode"]] = r["images_per_s"]
        elif r["mode"] in base:
            speed += f": {r['images_per_s'] / base[r['mode']]:.2f}x"
        rows.append(
            [
                r["mode"],
                f"{r['processes']} (torchrun)" if r["processes"] > 1 else "1",
                f"{r['wall_s']:.0f} s",
                speed,
                f"{n(r['peak_rss_tree_mb'])} / {n(r['peak_rss_main_mb'])} MB",
                f"{n(r['rss_main_at_quarter_mb'])} → {n(r['rss_main_at_end_mb'])} MB"
                + ("¹" if r["processes"] > 1 else ""),
                f"{r['unlike_training']} of {r['images']}",
            ]
        )
    return table(
        [
            "mode",
            "processes",
            f"wall, {b['images']} images",
            "images/s (steady)",
            "peak RSS: all processes / largest",
            "largest at ¼ of the images → end",
            "flagged",
        ],
        rows,
    )


NOVELTY_SETS = ("test", "magnified_2x", "shrunk_2x", "inverted", "blurred", "reference")
NOVELTY_CANDIDATES = {  # bench/novelty.py's names; "checkpoint" repeats the default's row
    "fpn_all": "**all five FPN levels (the default)**",
    "fpn0": "FPN level 0 (stride 4)",
    "fpn1": "level 1",
    "fpn2": "level 2",
    "fpn3": "level 3",
    "fpn_pool": "level pool",
    "image_stats": "grey level and contrast only",
}


def novelty(*models: str) -> str:
    runs = {model: load(f"docs/novelty_{model}.json") for model in models}
    rows = []
    for cand, label in NOVELTY_CANDIDATES.items():
        for model, b in runs.items():
            res = b["candidates"][cand]
            cells = []
            for key in NOVELTY_SETS:
                total = b["reference_frames"] if key == "reference" else b["test_images"]
                cells.append(f"{round(res[key]['flagged'] * total)}/{total}" if key in res else "—")
            rows.append([label, model, f"{res['threshold']:.2f}", *cells])
    return table(
        [
            "distance",
            "model",
            "threshold",
            "test",
            "magnified 2x",
            "shrunk 2x",
            "inverted",
            "blurred",
            "real SH-SY5Y frames",
        ],
        rows,
    )


PREDICT_CONFIGS = {
    "before": "stitched, ownership filter off",
    "stitched": "**stitched, ownership filter on** (the default)",
    "whole": "whole image, one pass",
    "bf16": "stitched, bfloat16 autocast on the CPU",
    "sahi_greedynmm_ios": "SAHI, GREEDYNMM IOS 0.5 (its default merge)",
    "sahi_greedynmm_iou": "SAHI, GREEDYNMM IOU 0.5",
    "sahi_nmm_ios": "SAHI, NMM IOS 0.5",
    "sahi_nmm_iou": "SAHI, NMM IOU 0.5",
    "sahi_nms_ios": "SAHI, NMS IOS 0.5",
    "sahi_nms_iou": "SAHI, NMS IOU 0.5",
}


def predict(*models: str) -> str:
    rows = []
    for model in models:
        b = load(f"docs/predict_{model}.json")
        runs = {r["config"]: r for r in b["runs"]}
        stitched = runs.get("stitched")
        same = b.get("stitched_vs_before", {}).get("same_cells")
        for config, r in runs.items():
            speed = f"{r['s_per_image'] / stitched['s_per_image']:.2f}x" if stitched else "—"
            cells = n(r["cells"])
            if config == "stitched" and same:
                cells += f" ({n(same['identical'])} identical to filter off)"
            rows.append(
                [
                    f"{model} ({b['images']} images, {n(b['cells_in_truth'])} cells)",
                    PREDICT_CONFIGS.get(config, f"`{config}`"),
                    f"{r['s_per_image']:.1f}",
                    speed,
                    f3(r["f1"]),
                    f3(r["ap"]),
                    cells,
                    n(r["peak_memory_mb"]),
                ]
            )
    return table(
        [
            "model",
            "configuration",
            "s / image",
            "time vs the default",
            "F1",
            "mask AP",
            "cells",
            "peak RSS MB",
        ],
        rows,
    )


def mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MB"


def scale() -> str:
    b = load("docs/scale.json")
    s, t, e, ok = b["stages"], b["stages"]["tile"], b["stages"]["evaluate"], b["targets"]
    met = {True: "met", False: "**missed**"}
    sub = s["subset"]
    rows = [
        [
            f"`subset`, all {n(sub['images_chosen'])} pictures",
            f"{n(sub['annotations'])} read, {n(sub['annotations_kept'])} kept "
            f"({n(sub['duplicates']['entries_dropped'])} second entries and their "
            f"{n(sub['duplicates']['annotations_dropped'])} annotations dropped)",
            f"{sub['wall_s']:.0f} s",
            mb(sub["peak_rss_bytes"]),
            f"≤ 1 GiB: {met[ok['subset_peak_rss_le_1GiB']]}",
        ],
    ]
    for mode in ("official", "stratified"):
        sp = s[f"split_{mode}"]
        rows.append(
            [
                f"`split`, {mode}",
                " / ".join(n(v) for v in sp["images"].values()) + " pictures",
                f"{sp['wall_s']:.0f} s",
                mb(sp["peak_rss_bytes"]),
                "—",
            ]
        )
    for run in t["runs"]:
        rows.append(
            [
                f"`tile`, first {run['images']} pictures",
                f"{n(run['annotations'])} cells, "
                f"{n(run['tiles'])} tiles, "
                f"{run['disk_bytes'] / run['images'] / 1e6:.2f} MB per picture",
                f"{run['wall_s']:.1f} s",
                f"{mb(run['main_rss_bytes'])} (largest worker {mb(run['worker_rss_bytes'])})",
                "",
            ]
        )
    fit = t["fit"]["wall_s"]
    rows[-1][-1] = (
        f"linear (wall = {fit['a']:.1f} + {fit['b']:.3f} s × pictures, R² "
        f"{fit['r2']:.3f}): {met[ok['tile_linear_r2_ge_0.98']]}"
    )
    rows.append(
        [
            "`evaluate`, the official test split",
            f"{n(e['gt_cells'])} cells, {n(e['predictions'])} predictions",
            f"{e['wall_s']:.0f} s",
            mb(e["peak_rss_bytes"]),
            f"≤ 10 min: {met[ok['evaluate_wall_le_600s']]}; "
            f"≤ 4 GiB: {met[ok['evaluate_peak_rss_le_4GiB']]}",
        ]
    )
    return table(["stage", "data", "wall", "peak RSS", "target"], rows)


def realism() -> str:
    b = load("docs/bench/realism.json")
    acc, st = b["realism_accuracy"], b["stats"]

    def a(key: str, bold: bool = False) -> str:
        text = f"{acc[key]['accuracy']:.3f}"
        text = f"**{text}**" if bold else text
        return text + (f" (± {acc[key]['accuracy_sd']:.3f})" if acc[key]["accuracy_sd"] else "")

    def stats(key: str, also: str | None = None) -> list[str]:
        cells = []
        for stat, fmt in (("std", ".2f"), ("gradient", ".2f"), ("spectral_slope", "+.2f")):
            text = format(st[key][stat], fmt).replace("-", "−")
            if also:
                text += f" (SH-SY5Y {format(st[also][stat], fmt).replace('-', '−')})"
            cells.append(text)
        return cells

    per_image = b["seconds_per_image"]
    rows = [
        [f"real frames ({b['reference_frames']})", "—", "—", *stats("reference"), "—"],
        [
            "simple generator (`bench/sample_v1.py`)",
            a("old"),
            a("old_shsy5y"),
            *stats("old"),
            f"{per_image['old']:.2f} s",
        ],
        [
            "the sample (`sample.py`)",
            a("new", True),
            a("new_shsy5y", True),
            *stats("new", "new_shsy5y"),
            f"{per_image['new']:.2f} s",
        ],
    ]
    return table(
        [
            "images",
            "classifier accuracy, all 8 lines",
            "SH-SY5Y only",
            "grey std",
            "gradient",
            "spectral slope",
            "rendering, per image",
        ],
        rows,
    )


def look() -> str:
    """What makes a cell visible (bench/look.py), real frames against the sample."""
    lk = load("docs/bench/realism.json")["look"]
    cols = ("reference", "sample_shsy5y", "sample")

    def num(v: float, fmt: str = ".1f") -> str:
        return format(v, fmt).replace("-", "−")

    rows = []
    for label, get, fmt in (
        ("bright line: contrast (grey)", lambda m: m["bright_line"]["contrast"], ".1f"),
        ("bright line: width at half contrast (px)", lambda m: m["bright_line"]["width_px"], ".2f"),
        ("bright line: flank, 1-3 px away (grey)", lambda m: m["bright_line"]["flank"], ".1f"),
        ("dark line: contrast (grey)", lambda m: m["dark_line"]["contrast"], ".1f"),
        ("bright line px per 1,000 px of cell", lambda m: m["bright_line_px_per_1000px"], ".1f"),
        ("dark line px per 1,000 px of cell", lambda m: m["dark_line_px_per_1000px"], ".1f"),
        ("cells' share of the frame", lambda m: m["cell_cover"], ".2f"),
        ("cell level against the medium (grey)", lambda m: m["cell_level"], "+.2f"),
        ("cell texture, std of the 2-px high pass", lambda m: m["cell_texture_std"], ".1f"),
        ("dark granules per 1,000 px of cell", lambda m: m["dark_spots_per_1000px"], ".1f"),
        ("bright granules per 1,000 px of cell", lambda m: m["bright_spots_per_1000px"], ".1f"),
        ("background noise std (grey)", lambda m: m["background_std"], ".2f"),
    ):
        rows.append([label, *(num(get(lk[c]), fmt) for c in cols)])
    return table(
        ["measured (bench/look.py)", "real frames", "sample, SH-SY5Y", "sample, 8 lines"], rows
    )


def app_load() -> str:
    rows = []
    for mode in ("whole", "stitched"):
        b = load(f"docs/bench/app_load_{mode}.json")
        wall, lat, rss = b["round_wall_s"], b["latency_s"], b["rss_mb"]
        rows.append(
            [
                mode,
                len(b["errors"]),
                f"{b['predictions_made']} for {2 * b['requests_per_round']} requests",
                "yes" if b["same_count_per_image"] else "**no**",
                f"{wall[0]:.1f} s",
                f"{wall[1]:.1f} s (median request {lat[1]['median']:.1f} s)",
                f"{n(rss['idle_before'])} / {n(rss['after_round_1'])} / "
                f"{n(rss['after_round_2'])} / **{n(rss['peak'])} MB**",
                f"{b['growth_round_2_mb']:+} MB",
            ]
        )
    return table(
        [
            "mode",
            "errors",
            "predictions made",
            "same count per image",
            "round 1 wall (model runs)",
            "round 2 wall (cached)",
            "server RSS: idle / after round 1 / after round 2 / peak",
            "RSS, round 2 − round 1",
        ],
        rows,
    )


def finetune(rel: str = "docs/bench/finetune.json") -> str:
    """The human-in-the-loop loop on a line the model never saw (bench/finetune.py)."""
    b = load(rel)
    rows = []
    for r in b["rows"]:
        t, o, ft = r["test"], r["other_lines"], r.get("finetune")
        rows.append(
            [
                r["corrected_images"] or "none (trained without it)",
                f"**{f3(t['f1'])}**",
                f3(t["precision"]),
                f3(t["recall"]),
                f2(t["recall_by_area"]["small"]),
                f"{n(t['pred'])} / {n(t['gt'])}",
                f3(o["f1"]),
                f"{f3(ft['before']['f1'])} → {f3(ft['after']['f1'])}" if ft else "—",
                f"{ft['seconds']:.0f} s ({ft['steps']} steps)" if ft else "—",
            ]
        )
    line = line_name(b["line"])
    return table(
        [
            f"{line} images corrected",
            f"{line} test F1",
            "precision",
            "recall",
            'recall, < 324 px ("small")',
            "cells found / true",
            "other lines' F1",
            "held-out F1 before → after",
            "fine-tune time",
        ],
        rows,
    )


def benchmarks() -> str:
    rows = []
    sub = load("docs/bench/subset_stream.json")
    rows.append(
        [
            "`python bench/subset_stream.py`",
            f"`subset` on a {sub['json_bytes'] / 1e6:.0f} MB LIVECell-format JSON "
            f"({n(sub['annotations'])} annotations, {n(sub['images'])} images) against `json.load`",
            f"peak RSS {mb(sub['stream']['peak_rss_bytes'])} vs "
            f"{mb(sub['json_load_baseline']['peak_rss_bytes'])} (**{sub['peak_rss_ratio']:.1%}**); "
            f"wall {sub['stream']['wall_s']:.1f} vs {sub['json_load_baseline']['wall_s']:.1f} s "
            f"({sub['wall_ratio']:.2f}x)",
            f"RSS ≤ {sub['targets']['peak_rss_ratio_max']:.0%}, wall ≤ "
            f"{sub['targets']['wall_ratio_max']:g}x",
        ]
    )
    tr = load("docs/bench/train.json")
    for model in MODELS:
        ours, naive = tr[model]["ours"], tr[model]["naive"]
        rows.append(
            [
                f"`python bench/train.py --steps {tr['steps']}`",
                f"a {model} training step, batch {ours['batch_size']}, at our settings "
                f"({ours['min_size']} px input, {ours['rois_per_image']} RoIs, "
                f"{ours['mask_rois_per_image']} for masks) vs torchvision's defaults "
                f"({naive['min_size']} px, {naive['rois_per_image']} RoIs)",
                f"{ours['images_per_s']:.3f} vs {naive['images_per_s']:.3f} images/s: "
                f"**{tr[model]['speedup']:.1f}x**; peak RSS {n(round(ours['peak_memory_mb']))} vs "
                f"{n(round(naive['peak_memory_mb']))} MB; data loading "
                f"{ours['data_load_s_per_batch']:.3f} s of a {ours['step_s']:.1f} s step "
                f"({ours['data_load_s_per_batch'] / ours['step_s']:.1%})",
                f"≥ {tr['target_speedup_min']:g}x; data loading ≤ 10% of a step",
            ]
        )
    st = load("docs/bench/stitch.json")
    rows.append(
        [
            "`python bench/stitch.py`",
            "stitching dense 704x520 images (no model): "
            + " / ".join(str(r["cells"]) for r in st["rows"])
            + " cells",
            " / ".join(f"{r['stitch_s']:.3f}" for r in st["rows"])
            + f" s; log-log slope **{st['loglog_slope']:.2f}**; every cell exactly once: "
            + ("yes" if st["each_cell_once"] else "**no**"),
            "≤ linear: " + ("met" if st["linear_target_met"] else "**missed**"),
        ]
    )
    ti = load("docs/bench/tile.json")
    w1, w2 = ti["workers_1"], ti["workers_2"]
    rows.append(
        [
            "`python bench/tile.py`",
            f"`tile` on {ti['images']} sample images ({n(ti['counts']['source_instances'])} cells)",
            f"1 process: {w1['tiles_per_s']:.0f} tiles/s, {w1['s_per_image']:.3f} s per image; "
            f"2: {w2['tiles_per_s']:.0f} tiles/s ({w1['wall_s'] / w2['wall_s']:.2f}x)",
            "—",
        ]
    )
    ev = load("docs/bench/evaluate.json")
    rows.append(
        [
            "`python bench/evaluate.py`",
            f"evaluation of {ev['images']} images x {ev['cells_per_image']} cells "
            f"({n(ev['predictions'])} predictions), mask AP overall and per cell line",
            f"faster-coco-eval {ev['faster_coco_eval_ap_s']:.2f} s vs pycocotools "
            f"{ev['pycocotools_ap_s']:.1f} s: **{ev['speedup_ap']:.0f}x**, largest AP difference "
            f"{ev['max_abs_diff_ap']}; our matching {ev['matching_s']:.2f} s "
            f"({ev['ratio_matching_vs_pycocotools']}x pycocotools' `evaluate()`); the whole "
            f"`evaluate` {ev['evaluate_all_s']:.2f} s",
            "matching ≤ 2x; APs equal: " + ("met" if ev["target_met"] else "**missed**"),
        ]
    )
    app = load("docs/bench/app.json")
    for mode in ("stitched", "whole"):
        m = app[mode]
        rows.append(
            [
                f"`python bench/app.py --model {app['model']}`",
                f"the app, {mode}: load a checkpoint, first prediction of 3 test images, the same "
                "request again, a slider move (server side)",
                f"load {app['load_s']:.2f} s; first "
                + " / ".join(f"{t:.1f}" for t in m["first_prediction_s"])
                + f" s; again {m['repeat_request_s']:.3f} s; slider median "
                f"{m['slider_change_s_median']:.3f} s, max {m['slider_change_s_max']:.3f} s",
                "slider ≤ 0.3 s: " + ("met" if m["slider_target_met"] else "**missed**"),
            ]
        )
    return table(["command", "what", "figure", "target"], rows)


RENDERERS: dict[str, Callable[..., str]] = {
    f.__name__: f
    for f in (
        results,
        recall_by_area,
        per_line,
        growth_wells,
        candidates,
        screen,
        novelty,
        predict,
        scale,
        realism,
        look,
        app_load,
        finetune,
        benchmarks,
    )
}


def render(text: str, where: str) -> tuple[str, list[str]]:
    """`text` with every block re-rendered, and the names of the blocks that changed."""
    changed = []

    def one(match: re.Match) -> str:
        name, *args = match["spec"].split()
        if name not in RENDERERS:
            sys.exit(f"error: {where}: unknown table '{name}'; known: {', '.join(RENDERERS)}")
        body = RENDERERS[name](*args)
        if body != match["body"]:
            changed.append(f"{where}: table {match['spec']}")
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(one, text), changed


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = p.parse_args()
    stale = []
    for path in documents():
        text = path.read_text()
        new, changed = render(text, str(path.relative_to(ROOT)))
        stale += changed
        if changed and not args.check:
            path.write_text(new)
    for line in stale:
        print(("out of date: " if args.check else "rewrote: ") + line)
    if args.check and stale:
        print("run: python scripts/tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
